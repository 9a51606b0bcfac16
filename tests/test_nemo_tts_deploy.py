"""NeMo FastPitch deployed (issue 17): the shared FastPitch run of tests/test_nemo_tts.py (`nemo_fastpitch_run`, no new
training) served on POST /v1/synthesize through its family's load_synthesizer, exported by `spx export` (ONNX through
NeMo's Exportable.export, and int8) with its parity check, and the ONNX export served; real uvicorn processes called
with a real HTTP client."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import export_once
from shared_artifacts import shared_dir
import test_nemo_tts
from test_deploy import assert_served_synthesizes

nemo_fastpitch_run = test_nemo_tts.nemo_fastpitch_run  # session fixture: the shared trained FastPitch run
SHARED_RUN_GROUP = test_nemo_tts.SHARED_RUN_GROUP
HOP, RATE = 256, 16000


@pytest.fixture(scope="session")
def fastpitch_exported(nemo_fastpitch_run, tmp_path_factory):
    """fastpitch_exported("onnx" | "onnx-int8") -> the export dir of the shared FastPitch run (made once per test run;
    the parity check runs on all 8 test sentences)."""
    root = shared_dir(tmp_path_factory, "nemo_fastpitch_exports")

    return lambda kind: export_once(nemo_fastpitch_run, root / kind, kind)


@pytest.mark.slow
@SHARED_RUN_GROUP
def test_served_fastpitch_run_synthesizes(nemo_fastpitch_run, tmp_path):
    """One test sentence -> a WAV at the spec's rate, not silent, exactly as long as the run's own synthesis of it
    (FastPitch's durations are predicted, deterministic in eval mode); bad requests are 4xx JSON."""
    assert_served_synthesizes(nemo_fastpitch_run, nemo_fastpitch_run, tmp_path / "server.log", same_length=True,
                              rate=RATE)


@pytest.mark.slow
@SHARED_RUN_GROUP
def test_fastpitch_onnx_export_passes_parity(fastpitch_exported):
    d = fastpitch_exported("onnx")
    info = json.loads((d / "export.json").read_text())
    assert (info["backend"], info["task"], info["family"], info["format"]) == ("nemo", "tts", "fastspeech2", "onnx")
    assert info["route"].startswith("NeMo Exportable.export")
    assert {p.name for p in d.iterdir()} == {"model.onnx", "export.json", "text.json", "vocoder.json", "vocoder.npz"}
    assert info["inputs"] == {"ids": "text"} and set(info["extra_inputs"]) == {"pitch", "pace"}
    assert info["outputs"] == {"mel": "spect", "frames": "num_frames"} and info["mel_layout"] == "BDT"
    p = info["parity"]
    print("nemo fastpitch onnx:", p["summary"], {k: v for k, v in info["speed"].items() if k.endswith("rtfx")})
    assert p["passed"] and p["utterances"] == 8, p["summary"]
    # the same graph as the toolkit's: token ids, frame counts (predicted durations) and log-mels all agree
    assert not p["id_mismatch"] and p["worst_frame_change"] == 0.0 and p["max_abs_mel_diff"] < 1e-4
    assert p["waveform"]["rms"] > 1e-3 and p["waveform"]["seconds"] == pytest.approx(
        (p["waveform"]["frames"] - 1) * HOP / RATE)
    text = json.loads((d / "text.json").read_text())
    assert text["symbols"][text["prefix"][0]] == text["space"] == " " and text["unknown"] is None
    vocoder = json.loads((d / "vocoder.json").read_text())
    assert vocoder["kind"] == "griffin_lim" and vocoder["log"] == {"base": "e", "guard": 1e-5}
    assert (vocoder["n_fft"], vocoder["hop_length"], vocoder["power"]) == (1024, HOP, 1.0)
    assert np.load(d / "vocoder.npz")["mel_basis"].shape == (80, 513)  # NeMo's own slaney filterbank
    assert info["speed"]["torch_rtfx"] > 0 and info["speed"]["export_rtfx"] > 0


@pytest.mark.slow
@SHARED_RUN_GROUP
def test_fastpitch_int8_export_passes_its_rule(fastpitch_exported):
    d = fastpitch_exported("onnx-int8")
    info = json.loads((d / "export.json").read_text())
    p = info["parity"]
    print("nemo fastpitch onnx-int8:", p["summary"], {k: v for k, v in info["speed"].items() if k.endswith("rtfx")})
    assert info["quantize"] == "int8" and p["passed"] and p["utterances"] == 8, p["summary"]
    assert p["rule"].startswith("int8") and p["worst_frame_change"] <= 0.10 and p["mean_abs_mel_diff"] <= 0.5
    assert info["sizes"]["int8_model_bytes"] < info["sizes"]["fp32_model_bytes"]
    assert info["speed"]["fp32_export_rtfx"] > 0 and not (d / "model.fp32.onnx").exists()


@pytest.mark.slow
@SHARED_RUN_GROUP
def test_served_fastpitch_export_synthesizes(fastpitch_exported, nemo_fastpitch_run, tmp_path):
    """The ONNX export served (onnxruntime + Griffin-Lim in numpy, no NeMo import): a test sentence -> a WAV one hop per
    frame the toolkit predicts for it, exactly as long as the run's own synthesis of it."""
    d = fastpitch_exported("onnx")
    row, seconds = assert_served_synthesizes(d, nemo_fastpitch_run, tmp_path / "server.log", same_length=True,
                                             rate=RATE)
    frames = json.loads((d / "export.json").read_text())["parity"]["toolkit_frames"]
    assert seconds == pytest.approx((frames[row["id"]] - 1) * HOP / RATE)
