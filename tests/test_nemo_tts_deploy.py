"""NeMo FastPitch deployed (issue 17): the shared FastPitch run of tests/test_nemo_tts.py (`nemo_fastpitch_run`, no new
training) served on POST /v1/synthesize through its family's load_synthesizer, a real uvicorn process called with a
real HTTP client."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from conftest import read_jsonl
import test_nemo_tts
from test_deploy import Server

nemo_fastpitch_run = test_nemo_tts.nemo_fastpitch_run  # session fixture: the shared trained FastPitch run
SHARED_RUN_GROUP = test_nemo_tts.SHARED_RUN_GROUP


@pytest.mark.slow
@SHARED_RUN_GROUP
def test_served_fastpitch_run_synthesizes(nemo_fastpitch_run, tmp_path):
    """One test sentence -> a WAV at the spec's rate, not silent, exactly as long as the run's own synthesis of it
    (FastPitch's durations are predicted, deterministic in eval mode); bad requests are 4xx JSON."""
    import httpx

    rd = nemo_fastpitch_run
    row = max(read_jsonl(rd / "hyps.jsonl"), key=lambda r: len(r["text"]))
    server = Server(rd, tmp_path / "server.log", "--max-chars", "200", "--threads", "1")
    try:
        server.wait_ready(timeout=300)
        url = server.url + "/v1/synthesize"
        with httpx.Client(timeout=300) as client:
            r = client.post(url, json={"text": row["text"].upper() + "!"})  # cleaned as the test sentences were
            assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text
            wav, rate = sf.read(io.BytesIO(r.content))
            assert rate == 16000 and wav.ndim == 1
            duration = len(wav) / rate
            assert float(r.headers["x-audio-duration"]) == pytest.approx(duration, abs=1e-3)
            assert np.sqrt(np.mean(wav ** 2)) > 1e-3, "silent output"
            assert duration == pytest.approx(row["duration"], abs=1e-3), (duration, row)
            for body, status, kind in (({"text": "   "}, 422, "empty_text"), ({"text": "a" * 201}, 413, "too_long"),
                                       ({"text": "hello", "speaker": "nobody"}, 422, "unknown_speaker")):
                bad = client.post(url, json=body)
                assert bad.status_code == status and bad.json()["error"] == kind, (body, bad.text)
        assert server.proc.poll() is None
    finally:
        server.stop()
