"""`spx export` / `spx serve` of an ESPnet FastSpeech2 run (issue 17, TTS): the session's FastSpeech2 (trained once
from the session's Tacotron2 teacher, tests/test_espnet_fastspeech2.py's `trained_fastspeech2`; no new training)
exported to ONNX (fp32; the TTS int8 path is the shared one, tested on NeMo and SpeechBrain) through spx.adapters.espnet.steps.tts_export, parity-checked against
Text2Speech's own mel (feat_gen_denorm) on the test sentences, and the fp32 export served by a real uvicorn process
on POST /v1/synthesize."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import export_once
from shared_artifacts import shared_dir
from test_deploy import assert_served_synthesizes
from test_espnet_fastspeech2 import trained_fastspeech2


@pytest.fixture(scope="session")
def fastspeech2_run(trained_tts, tts_corpus, tmp_path_factory):
    return trained_fastspeech2(trained_tts, tts_corpus, tmp_path_factory)  # the one training, shared


@pytest.fixture(scope="session")
def fs2_exported(fastspeech2_run, tmp_path_factory):
    """fs2_exported("onnx") -> the export dir of the shared FastSpeech2 run (made once per test run)."""
    root = shared_dir(tmp_path_factory, "espnet_tts_exports")

    return lambda kind: export_once(fastspeech2_run.path, root / kind, kind)


@pytest.mark.slow
def test_fastspeech2_onnx_export_passes_parity(fs2_exported, fastspeech2_run):
    """fp32: Text2Speech's own ids and mel on every test sentence (one traced example sentence, so every other
    length, tokens and frames, runs through the graph's dynamic axes and its data-dependent length regulator)."""
    d = fs2_exported("onnx")
    info = json.loads((d / "export.json").read_text())
    assert (info["backend"], info["task"], info["family"], info["format"]) == ("espnet", "tts", "fastspeech2", "onnx")
    assert {p.name for p in d.iterdir()} == {"model.onnx", "export.json", "text.json", "vocoder.json", "vocoder.npz"}
    assert info["inputs"] == {"ids": "ids"} and info["outputs"] == {"mel": "mel"} and info["speakers"] == {}
    p = info["parity"]
    assert p["passed"] and p["utterances"] == 8 and not p["id_mismatch"] and not p["frames_differ"], p["summary"]
    assert p["max_abs_mel_diff"] <= 1e-4, p["summary"]  # float rounding (~5e-6 measured)
    assert len(set(p["toolkit_frames"].values())) > 1  # sentences of other lengths than the traced one
    assert p["waveform"]["rms"] > 1e-3 and info["sample_rate"] == 16000
    # the Griffin-Lim the run synthesized with (native/conf/griffin_lim.yaml) on the model's log10 |STFT| mel
    vocoder = json.loads((d / "vocoder.json").read_text())
    assert vocoder == {"kind": "griffin_lim", "sample_rate": 16000, "n_fft": 1024, "win_length": 1024,
                       "hop_length": 256, "power": 1.0, "log": {"base": "10", "floor": 1e-10}, "n_iter": 32}
    assert np.load(d / "vocoder.npz")["mel_basis"].shape == (80, 513)
    text = json.loads((d / "text.json").read_text())
    tokens = (fastspeech2_run / "native/tts_tokens.txt").read_text().split()
    assert text["symbols"] == tokens and text["space"] == "<space>" and text["unknown"] == "<unk>"
    assert text["suffix"] == []  # <sos/eos> is appended inside the graph, as FastSpeech2.inference does
    assert info["speed"]["torch_rtfx"] > 0 and info["speed"]["export_rtfx"] > 0


@pytest.mark.slow
def test_served_fastspeech2_export_synthesizes(fs2_exported, fastspeech2_run, tmp_path):
    """The fp32 export over HTTP (no toolkit in the server): the longest test sentence -> a WAV at the run's rate,
    not silent, exactly as long as the run's own Griffin-Lim synthesis of it (the same frames, one hop each)."""
    d = fs2_exported("onnx")
    row, seconds = assert_served_synthesizes(d, fastspeech2_run.path, tmp_path / "server.log", same_length=True)
    frames = json.loads((d / "export.json").read_text())["parity"]["toolkit_frames"][row["id"]]
    assert seconds == pytest.approx((frames - 1) * 256 / 16000)  # one hop per frame the toolkit predicts


@pytest.mark.slow  # imports espnet2 (no training)
def test_multi_speaker_fastspeech2_graph_takes_the_speaker_id(tmp_path):
    """The speaker branch the shared single-voice run does not reach: an ESPnet FastSpeech2 with 3 speaker ids
    (untrained; its duration bias raised so sentences span frames) traced with one sentence, run on others of other
    lengths and speakers, against FastSpeech2.inference(sids=...)."""
    import types

    import onnxruntime as ort
    import torch
    from espnet2.tts.fastspeech2 import FastSpeech2

    from spx.adapters.espnet.steps.tts_export import fastspeech2_mel_module, write_mel_graph

    torch.manual_seed(0)
    fs2 = FastSpeech2(idim=41, odim=80, adim=32, aheads=2, elayers=1, eunits=64, dlayers=1, dunits=64, spks=3,
                      postnet_layers=2, postnet_chans=32).eval()
    with torch.no_grad():
        fs2.duration_predictor.linear.bias.fill_(1.5)
    net = fastspeech2_mel_module(types.SimpleNamespace(tts=fs2, normalize=None), speakers=True)
    io_info = write_mel_graph(net, tmp_path / "model.onnx", "onnx", 17, False, [5, 6, 7, 2, 9], speakers=True)
    assert io_info["inputs"] == {"ids": "ids", "speaker": "speaker"} and io_info["input_order"] == ["ids", "speaker"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    frames = set()
    for n, sid in ((12, 0), (30, 2), (4, 1)):
        ids = torch.randint(2, 40, (n,))
        with torch.no_grad():
            ref = fs2.inference(ids, sids=torch.tensor([sid]))["feat_gen"].numpy()
        got = session.run(None, {"ids": ids[None].numpy(), "speaker": np.array([sid])})[0][0]
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4, (n, sid)
        frames.add(len(ref))
    assert len(frames) == 3
    with pytest.raises(SystemExit, match="speaker ids"):
        fastspeech2_mel_module(types.SimpleNamespace(tts=fs2, normalize=None), speakers=False)
