"""`spx export` and `spx serve` (issue 17): every backend's tiny conformer_ctc run (the shared `trained_run`) exported
to ONNX fp32 and int8 through the real CLI, parity-checked against the toolkit; an export served by a real uvicorn
process and called over HTTP (transcripts, bad inputs, 32 concurrent clients, /metrics)."""
from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, export_once, read_jsonl, run_spx
from shared_artifacts import shared_dir

BACKENDS = ("nemo", "espnet", "speechbrain")
PARITY_UTTERANCES = "12"  # the check's wiring on CI; `spx export` checks the whole test set by default


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory):
    """exported(backend, "onnx" | "onnx-int8" | "torchscript") -> the export dir (made once per test run)."""
    root = shared_dir(tmp_path_factory, "exports")

    return lambda backend, kind: export_once(trained_run(backend), root / f"{backend}-{kind}", kind, PARITY_UTTERANCES)


# ---------------------------------------------------------------- fast: refusals before any work
def test_export_refuses_a_folder_that_is_not_a_run(tmp_path):
    proc = run_spx("export", tmp_path)
    assert proc.returncode == 2 and "not an spx run dir" in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_serve_refuses_a_folder_that_is_neither_run_nor_export(tmp_path):
    proc = run_spx("serve", tmp_path, "--port", "1")
    assert proc.returncode == 2 and "not an spx run dir" in proc.stderr + proc.stdout


# ---------------------------------------------------------------- slow: export each backend, check parity
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_export_onnx_fp32_and_int8_pass_parity(backend, exported):
    fp32, int8 = exported(backend, "onnx"), exported(backend, "onnx-int8")
    for d in (fp32, int8):
        info = json.loads((d / "export.json").read_text())
        assert info["backend"] == backend and info["format"] == "onnx" and info["family"] == "conformer_ctc"
        assert {p.name for p in d.iterdir()} >= {"model.onnx", "export.json", "tokens.json", "frontend.json",
                                                 "frontend.npz"}
        assert not any(p.name.endswith((".tmp", ".fp32.onnx")) for p in d.iterdir())
        assert info["parity"]["passed"] and info["parity"]["utterances"] == int(PARITY_UTTERANCES)
        assert info["speed"]["export_rtfx"] > 0 and info["sizes"]["artefact_bytes"] > 0
    p32 = json.loads((fp32 / "export.json").read_text())
    assert p32["parity"]["max_abs_logprob_diff"] <= 2e-3 and p32["parity"]["hypothesis_agreement"] == 1.0
    assert p32["quantize"] is None
    p8 = json.loads((int8 / "export.json").read_text())
    assert p8["quantize"] == "int8" and p8["sizes"]["int8_model_bytes"] < p8["sizes"]["fp32_model_bytes"]
    assert p8["parity"]["wer_delta"] <= 0.10


@pytest.mark.slow
def test_export_torchscript(exported):
    """TorchScript (torch.jit.trace) through the same parity check; served by the same engine."""
    from spx.deploy.engine import ExportEngine

    d = exported("speechbrain", "torchscript")
    info = json.loads((d / "export.json").read_text())
    assert info["format"] == "torchscript" and info["parity"]["passed"] and (d / "model.ts").is_file()
    wav, _ = sf.read(REPO / "spx" / "demo" / "corpus" / "audio" / "test_0000.flac", dtype="float32")
    assert ExportEngine(d).transcribe([wav])[0].strip()


# ---------------------------------------------------------------- slow: serve an export over HTTP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, target: Path, log: Path, *args: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "spx", "serve", str(target), "--port", str(self.port),
                                      *args], cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        end = time.time() + timeout
        while time.time() < end:
            assert self.proc.poll() is None, f"server exited:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"server not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def assert_served_synthesizes(target: Path, run_dir: Path, log: Path, same_length: bool,
                              rate: int = 16000, min_symbols: int = 1) -> tuple[dict, float]:
    """`spx serve TARGET` (a TTS run dir: the family's load_synthesizer; an export dir: its TtsEngine): the run's
    longest test sentence (upper-cased, with punctuation: cleaned as the test sentences are) -> a WAV at `rate`, not
    silent, as long as the run's own synthesis of it (same_length: a deterministic model and the same frames; else
    within 2x); bad requests are 4xx JSON and the server stays up, a one-letter text too (a WAV, or a 422 when the
    model takes at least `min_symbols` > 1). Returns (the sentence's row, served seconds)."""
    import httpx

    row = max(read_jsonl(run_dir / "hyps.jsonl"), key=lambda r: len(r["text"]))
    server = Server(target, log, "--max-chars", "200", "--threads", "1")
    try:
        server.wait_ready(timeout=300)
        url = server.url + "/v1/synthesize"
        with httpx.Client(timeout=300) as client:
            r = client.post(url, json={"text": row["text"].upper() + "!"})
            assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text
            wav, got_rate = sf.read(io.BytesIO(r.content))
            assert got_rate == rate and wav.ndim == 1
            duration = len(wav) / got_rate
            assert float(r.headers["x-audio-duration"]) == pytest.approx(duration, abs=1e-3)
            assert np.sqrt(np.mean(wav ** 2)) > 1e-3, "silent output"
            if same_length:
                assert duration == pytest.approx(row["duration"], abs=1e-3), (duration, row)
            else:  # e.g. Tacotron2: its prenet dropout stays on at inference, the length moves between runs
                assert 0.5 * row["duration"] <= duration <= 2.0 * row["duration"], (duration, row)
            for body, status, kind in (({"text": "   "}, 422, "empty_text"), ({"text": "a" * 201}, 413, "too_long"),
                                       ({"speaker": "x"}, 422, "bad_request"), ({"text": "?!"}, 422,
                                                                                 "no_speakable_text"),
                                       ({"text": "hello", "speaker": "nobody"}, 422, "unknown_speaker")):
                bad = client.post(url, json=body)
                assert bad.status_code == status and bad.json()["error"] == kind, (body, bad.text)
            short = client.post(url, json={"text": "a"})
            if min_symbols > 1:
                assert short.status_code == 422 and short.json()["error"] == "unspeakable_text", short.text
                assert f"at least {min_symbols}" in short.json()["detail"], short.text
            else:
                assert short.status_code == 200 and len(short.content) > 44, short.text
        assert server.proc.poll() is None
    finally:
        server.stop()
    return row, duration


def _test_rows(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "hyps.jsonl")


def _audio_of(run_dir: Path) -> dict[str, str]:
    return {r["id"]: r["audio"] for r in read_jsonl(run_dir / "manifests" / "test.jsonl")[1:]}


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_served_export_transcribes_like_the_run(backend, exported, trained_run, tmp_path):
    """Every test utterance sent one at a time: the server's text is the toolkit's own hypothesis for it alone (the
    parity check's reference, batch 1), and the run's hyps.jsonl (decoded in padded batches of 8, which moves a few
    ESPnet/SpeechBrain hypotheses: reflect padding and convolutions see the batch's padding) for nearly all."""
    import httpx

    rd = trained_run(backend)
    export_dir = exported(backend, "onnx")
    toolkit = json.loads((export_dir / "export.json").read_text())["parity"]["toolkit_hyps"]
    server = Server(export_dir, tmp_path / "server.log", "--max-wait-ms", "0")
    try:
        server.wait_ready()
        audio = _audio_of(rd)
        mismatch, rows = [], _test_rows(rd)
        with httpx.Client(timeout=60) as client:
            for row in rows:
                r = client.post(server.url + "/v1/transcribe", files={"file": ("a.flac", Path(audio[row["id"]]).read_bytes())})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["duration"] == pytest.approx(row["duration"], abs=0.01)
                if row["id"] in toolkit:
                    assert body["text"] == toolkit[row["id"]], row["id"]
                if body["text"] != row["hyp"]:
                    mismatch.append((row["id"], row["hyp"], body["text"]))
        assert len(mismatch) <= 0.1 * len(rows), f"server vs the run's batched hypotheses: {mismatch}"
        if backend == "nemo":  # NeMo masks the padding: its batched hypotheses are the batch-1 ones
            assert not mismatch
    finally:
        server.stop()


@pytest.mark.slow
def test_server_bad_inputs_concurrency_and_metrics(exported, trained_run, tmp_path):
    import httpx

    rd = trained_run("nemo")
    wav_path = Path(_audio_of(rd)[_test_rows(rd)[0]["id"]])
    flac = wav_path.read_bytes()
    wav, rate = sf.read(wav_path, dtype="float32")
    short_wav = io.BytesIO()
    sf.write(short_wav, wav[: rate // 100], rate, format="WAV")  # 10 ms
    long_wav = io.BytesIO()
    sf.write(long_wav, np.tile(wav, int(4 / (len(wav) / rate)) + 1), rate, format="WAV")  # > 4 s
    server = Server(exported("nemo", "onnx"), tmp_path / "server.log", "--max-seconds", "4",
                    "--max-bytes", "400000", "--max-batch", "8", "--max-wait-ms", "20")
    try:
        server.wait_ready()
        url = server.url + "/v1/transcribe"
        with httpx.Client(timeout=60) as client:
            assert client.get(server.url + "/healthz").json() == {"status": "ok"}
            bad = {
                "not_audio": (client.post(url, content=b"hello, this is not audio" * 50,
                                          headers={"content-type": "audio/wav"}), 422),
                "empty": (client.post(url, content=b"", headers={"content-type": "audio/flac"}), 400),
                "truncated": (client.post(url, content=flac[:64], headers={"content-type": "audio/flac"}), 422),
                "too_short": (client.post(url, content=short_wav.getvalue(), headers={"content-type": "audio/wav"}),
                              422),
                "too_long": (client.post(url, content=long_wav.getvalue(), headers={"content-type": "audio/wav"}), 413),
                "too_large": (client.post(url, content=b"\0" * 500_000, headers={"content-type": "audio/wav"}), 413),
                "content_type": (client.post(url, content=flac, headers={"content-type": "text/plain"}), 415),
                "no_file": (client.post(url, files={"other": ("a.flac", flac)}), 400),
            }
            for name, (resp, status) in bad.items():
                assert resp.status_code == status, (name, resp.status_code, resp.text)
                assert resp.json()["error"] and resp.json()["request_id"], name
            raw = client.post(url, content=flac, headers={"content-type": "audio/flac"})  # raw body: still serving
            assert raw.status_code == 200 and raw.json()["text"].strip()
            assert client.get(server.url + "/openapi.json").json()["paths"]["/v1/transcribe"]

        barrier = threading.Barrier(32)

        def one(_):
            with httpx.Client(timeout=120) as c:
                barrier.wait()
                return c.post(url, files={"file": ("a.flac", flac)})

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(one, range(32)))
        assert [a.status_code for a in answers] == [200] * 32
        assert len({a.json()["text"] for a in answers}) >= 1 and all(a.json()["text"].strip() for a in answers)
        assert max(a.json()["timing"]["batch_size"] for a in answers) > 1  # concurrent requests were batched

        metrics = httpx.get(server.url + "/metrics").text
        ok = _metric(metrics, 'spx_requests_total{endpoint="transcribe",status="200"}')
        assert ok == 33  # the raw-body request + the 32 concurrent ones
        assert _metric(metrics, 'spx_request_latency_seconds_count{endpoint="transcribe"}') == 33 + len(bad)
        assert _metric(metrics, "spx_audio_seconds_total") == pytest.approx(33 * len(wav) / rate, rel=0.01)
        errors = {k: _metric(metrics, f'spx_errors_total{{kind="{k}"}}')
                  for k in ("not_audio", "empty", "too_short", "too_long", "too_large", "content_type", "no_file")}
        assert errors == {"not_audio": 2, "empty": 1, "too_short": 1, "too_long": 1, "too_large": 1,
                          "content_type": 1, "no_file": 1}
        assert server.proc.poll() is None
    finally:
        server.stop()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text[:2000]}")


@pytest.mark.slow
def test_serve_a_run_dir_with_its_toolkit(exported, trained_run, tmp_path):
    """A run dir is served by the family's inference loader (the toolkit, in the server process)."""
    import httpx

    rd = trained_run("speechbrain")
    toolkit = json.loads((exported("speechbrain", "onnx") / "export.json").read_text())["parity"]["toolkit_hyps"]
    server = Server(rd, tmp_path / "server.log", "--threads", "1")
    try:
        server.wait_ready()
        assert httpx.get(server.url + "/readyz").json()["model"]["kind"] == "run"
        audio = _audio_of(rd)
        with httpx.Client(timeout=60) as client:
            for uid in list(toolkit)[:4]:
                r = client.post(server.url + "/v1/transcribe", files={"file": ("a.flac", Path(audio[uid]).read_bytes())})
                assert r.status_code == 200 and r.json()["text"] == toolkit[uid], (uid, r.text)
    finally:
        server.stop()


@pytest.mark.slow
def test_a_model_error_is_a_500_with_its_request_id_in_the_log(exported, tmp_path):
    """An export whose vocabulary is shorter than its graph's output fails inside the engine: the request gets a 500
    naming its request id, the log has the traceback under that id, and the server keeps serving."""
    import shutil

    import httpx

    broken = tmp_path / "broken-export"
    shutil.copytree(exported("nemo", "onnx"), broken)
    tokens = json.loads((broken / "tokens.json").read_text())
    (broken / "tokens.json").write_text(json.dumps({**tokens, "tokens": tokens["tokens"][:1]}))
    flac = (REPO / "spx" / "demo" / "corpus" / "audio" / "test_0000.flac").read_bytes()
    server = Server(broken, tmp_path / "server.log")
    try:
        server.wait_ready()
        r = httpx.post(server.url + "/v1/transcribe", content=flac, headers={"content-type": "audio/flac"}, timeout=60)
        assert r.status_code == 500 and r.json()["error"] == "model_error"
        rid = r.json()["request_id"]
        assert httpx.get(server.url + "/healthz").status_code == 200
        time.sleep(0.5)
        log = server.log.read_text()
        assert f"request {rid}: the model failed" in log and "IndexError" in log
    finally:
        server.stop()
