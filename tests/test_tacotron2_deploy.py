"""`spx export` / `spx serve` of Tacotron2 runs (issue 17, autoregressive TTS): the session's shared Tacotron2 runs
(`trained_tts`, no new training) exported as encoder / decoder-step / postnet ONNX graphs that spx.deploy.autoregressive
loops; the export's parity check runs the toolkit's own inference with the prenet's dropout replaying the engine's
masks. Fast: the numpy loop's stop rules and the mask replay, on stand-in graphs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import export_once
from shared_artifacts import shared_dir
from test_deploy import assert_served_synthesizes

from spx.deploy.autoregressive import AutoregressiveAcoustic, dropout_mask

N_MELS = 3
UNITS = [4, 2]


class _Encoder:
    def run_named(self, feeds):
        n = feeds["ids"].shape[1]
        return {"memory": np.ones((1, n, 2), np.float32), "processed_memory": np.zeros((1, n, 2), np.float32)}


class _Step:
    """Step k (1-based) emits frames filled with k and the stop probability probs[k - 1] (the last one after)."""

    def __init__(self, probs, frames_per_step=1):
        self.probs, self.r, self.masks = probs, frames_per_step, []

    def run_named(self, feeds):
        k = int(feeds["count"][0, 0]) + 1
        self.masks.append([feeds[f"prenet_mask_{i}"] for i in range(len(UNITS))])
        assert feeds["memory"].shape[1] == feeds["ids_seen"].shape[1]
        prob = self.probs[min(k, len(self.probs)) - 1]
        return {"mel": np.full((self.r, N_MELS), k, np.float32), "stop_prob": np.full(self.r, prob, np.float32),
                "next_count": np.full((1, 1), k, np.float32), "next_ids_seen": feeds["ids_seen"]}


class _Postnet:
    def __init__(self):
        self.lengths = []

    def run_named(self, feeds):
        self.lengths.append(feeds["decoded"].shape[2])
        return {"mel": feeds["decoded"] + 0.5}


def _acoustic(probs, rule: str, r: int = 1, **limits):
    settings = {"n_mels": N_MELS, "threshold": 0.5, "memory": ["memory", "processed_memory"],
                "states": {"count": {"shape": [1, 1], "fill": 0.0},
                           "ids_seen": {"shape": [1, "tokens"], "fill": "uniform"}},
                "prenet": {"rate": 0.5, "units": UNITS, "seed": 0}, "max_steps": None, "max_length_ratio": None,
                "min_length_ratio": 0.0}
    if rule == "speechbrain":  # Decoder.infer: sigmoid(gate) > threshold, the stop frame dropped
        settings.update(compare=">", stop_frame="dropped")
    else:  # ESPnet Decoder.inference: prob >= threshold, every frame kept
        settings.update(compare=">=", stop_frame="kept")
    settings.update(limits)
    step, post = _Step(probs, r), _Postnet()
    return AutoregressiveAcoustic({"encoder": _Encoder(), "decoder_step": step, "postnet": post}, settings), step, post


def test_autoregressive_loop_stops_as_the_toolkits_do():
    # SpeechBrain: 0.5 is not > 0.5; step 3 stops, its frame goes after the postnet saw all three
    ac, step, post = _acoustic([0.1, 0.5, 0.7], "speechbrain", max_steps=50)
    mel = ac.mel_of_ids([1, 2, 3])
    assert mel[:, 0].tolist() == [1.5, 2.5] and post.lengths == [3] and len(step.masks) == 3
    # ESPnet: 0.5 >= 0.5 stops at step 2 and keeps it
    ac, _, post = _acoustic([0.1, 0.5, 0.7], "espnet", max_length_ratio=10.0)
    assert ac.mel_of_ids([1, 2, 3])[:, 0].tolist() == [1.5, 2.5] and post.lengths == [2]
    # never stopping: SpeechBrain's max_decoder_steps (all kept), ESPnet's int(tokens * maxlenratio) frames
    ac, _, _ = _acoustic([0.0], "speechbrain", max_steps=5)
    assert len(ac.mel_of_ids([1, 2, 3])) == 5
    ac, _, _ = _acoustic([0.0], "espnet", max_length_ratio=2.5)
    assert len(ac.mel_of_ids([1, 2, 3])) == 7  # int(3 * 2.5)
    # ESPnet's minlenratio: a stop before int(tokens * minlenratio) frames decodes on
    ac, _, _ = _acoustic([0.9], "espnet", max_length_ratio=10.0, min_length_ratio=2.0)
    assert len(ac.mel_of_ids([1, 2, 3])) == 6
    # reduction factor 2: limits count frames, the stop step's two frames kept
    ac, _, _ = _acoustic([0.0, 0.0, 0.6], "espnet", r=2, max_length_ratio=10.0)
    assert ac.mel_of_ids([1, 2, 3])[:, 0].tolist() == [1.5, 1.5, 2.5, 2.5, 3.5, 3.5]
    ac, _, _ = _acoustic([0.0], "espnet", r=2, max_length_ratio=1.0)
    assert len(ac.mel_of_ids([1, 2, 3])) == 4  # steps until 3 frames are reached


def test_prenet_masks_are_seeded_per_request_and_replayed_in_torch():
    """The engine's masks: per step and prenet layer, 0 or 1/(1-rate), one seeded Generator per request (the same
    text gives the same mel); replay_prenet_dropout makes torch's F.dropout(training=True) draw the same ones."""
    import torch
    import torch.nn.functional as F

    from spx.adapters.common.autoregressive_export import replay_prenet_dropout

    ac, step, _ = _acoustic([0.0], "speechbrain", max_steps=4)
    ac.mel_of_ids([1, 2])
    first = [m.copy() for masks in step.masks for m in masks]
    step.masks.clear()
    ac.mel_of_ids([1, 2])
    assert all(np.array_equal(a, b) for a, b in zip(first, [m for masks in step.masks for m in masks]))
    assert [m.shape for m in first[:2]] == [(1, 4), (1, 2)] and set(np.concatenate(first, 1).ravel()) == {0.0, 2.0}
    step.masks.clear()
    ac.mel_of_ids([1, 2], seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(first, [m for masks in step.masks for m in masks]))
    rng = np.random.default_rng(0)
    expected = [dropout_mask(rng, u, 0.5) for _ in range(4) for u in UNITS]
    assert all(np.array_equal(a, b) for a, b in zip(first, expected))
    with replay_prenet_dropout(0.5) as drawn:
        got = [F.dropout(torch.ones(1, u), 0.5, True).numpy() for _ in range(4) for u in UNITS]
        assert torch.equal(F.dropout(torch.ones(1, 3), 0.1, False), torch.ones(1, 3))  # off stays off, not drawn
        with pytest.raises(RuntimeError, match="other than the prenet's"):
            F.dropout(torch.ones(1, 3), 0.1, True)
    assert drawn["masks"] == 8 and all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert F.dropout is torch.nn.functional.dropout and F.dropout.__module__ == "torch.nn.functional"  # restored


# ---------------------------------------------------------------- the shared runs, exported
@pytest.fixture(scope="session")
def tacotron2_exported(trained_tts, tmp_path_factory):
    """tacotron2_exported("speechbrain", "onnx-int8") -> the export dir of the shared Tacotron2 run (once per run)."""
    root = shared_dir(tmp_path_factory, "tacotron2_exports")

    return lambda backend, kind: export_once(trained_tts(backend).path, root / f"{backend}-{kind}", kind)


def _check_fp32(d: Path, backend: str) -> dict:
    info = json.loads((d / "export.json").read_text())
    assert (info["backend"], info["family"], info["acoustic"]) == (backend, "tacotron2", "autoregressive")
    assert {p.name for p in d.iterdir()} == {"encoder.onnx", "decoder_step.onnx", "postnet.onnx", "export.json",
                                             "text.json", "vocoder.json", "vocoder.npz"}
    assert {r: g["model_file"] for r, g in info["graphs"].items()} == {
        "encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx", "postnet": "postnet.onnx"}
    p = info["parity"]
    # the toolkit's own loop, the same prenet masks: the same frame counts and mel to float rounding
    assert p["passed"] and p["utterances"] == 8 and not p["id_mismatch"] and not p["frames_differ"], p["summary"]
    assert p["max_abs_mel_diff"] <= 1e-3, p["summary"]
    assert p["waveform"]["rms"] > 1e-3 and info["sample_rate"] == 16000
    ar = info["autoregressive"]
    assert ar["prenet"]["rate"] == 0.5 and ar["prenet"]["units"] == [64, 64] and ar["threshold"] == 0.5
    return info


@pytest.mark.slow
def test_speechbrain_tacotron2_onnx_export_passes_parity(tacotron2_exported, trained_tts):
    info = _check_fp32(tacotron2_exported("speechbrain", "onnx"), "speechbrain")
    ar = info["autoregressive"]
    hp = (trained_tts("speechbrain").path / "native/tts_hparams.yaml").read_text()
    assert (ar["compare"], ar["stop_frame"]) == (">", "dropped") and f"max_decoder_steps: {ar['max_steps']}\n" in hp
    assert max(info["parity"]["toolkit_frames"].values()) <= ar["max_steps"]


@pytest.mark.slow
def test_espnet_tacotron2_onnx_export_passes_parity(tacotron2_exported):
    info = _check_fp32(tacotron2_exported("espnet", "onnx"), "espnet")
    ar = info["autoregressive"]  # Text2Speech's defaults, as the run's synthesis used them
    assert (ar["compare"], ar["stop_frame"], ar["max_length_ratio"], ar["min_length_ratio"]) == (">=", "kept", 10.0, 0.0)
    assert len(set(info["parity"]["toolkit_frames"].values())) > 1  # sentences of other lengths than the traced one


@pytest.mark.slow
def test_speechbrain_tacotron2_int8_export_keeps_to_the_int8_rule(tacotron2_exported):
    from spx.deploy.parity import INT8_MAX_FRAME_CHANGE, INT8_MAX_MEL_MAE

    d = tacotron2_exported("speechbrain", "onnx-int8")
    info = json.loads((d / "export.json").read_text())
    assert {g["model_file"] for g in info["graphs"].values()} == {"encoder.onnx", "decoder_step.onnx", "postnet.onnx"}
    assert not list(d.glob("*.fp32.onnx"))  # the fp32 graphs are gone, their size and speed stay
    p = info["parity"]
    assert p["passed"] and p["worst_frame_change"] <= INT8_MAX_FRAME_CHANGE, p["summary"]
    assert p["mean_abs_mel_diff"] <= INT8_MAX_MEL_MAE and p["waveform"]["rms"] > 1e-3, p["summary"]
    assert info["quantize"] == "int8" and info["sizes"]["int8_model_bytes"] < info["sizes"]["fp32_model_bytes"]
    assert info["speed"]["fp32_export_rtfx"] > 0


@pytest.mark.slow
def test_served_tacotron2_export_synthesizes(tacotron2_exported, trained_tts, tmp_path):
    """The SpeechBrain fp32 export over HTTP (numpy loop, no toolkit in the server): a WAV at the run's rate, not
    silent, about as long as the run's own synthesis (its prenet masks were torch's, the engine's are seeded)."""
    assert_served_synthesizes(tacotron2_exported("speechbrain", "onnx"), trained_tts("speechbrain").path,
                              tmp_path / "server.log", same_length=False)


@pytest.mark.slow  # imports speechbrain (no training)
def test_speaker_tacotron2_graphs_stop_mid_sentence_as_speechbrain_does(tmp_path):
    """The branches the shared single-voice runs do not reach (their gates never fire within the step limit): an
    untrained SpeakerTacotron2 with 2 speakers, its gate threshold set between two of its stop probabilities so the
    decoder stops mid-sentence; the engine's loop on the written graphs against Tacotron2.infer with the same masks:
    the same frame count (the stop frame dropped after the postnet ran over it) and mel, per speaker."""
    import torch

    from spx.adapters.common.autoregressive_export import replay_prenet_dropout
    from spx.adapters.speechbrain.steps.tacotron2_export import write_graphs
    from spx.adapters.speechbrain.steps.tts_model import SpeakerTacotron2
    from spx.deploy.graph import Graph

    torch.manual_seed(0)
    model = SpeakerTacotron2(
        n_speakers=2, mask_padding=True, n_mel_channels=20, n_symbols=30, symbols_embedding_dim=32,
        encoder_kernel_size=5, encoder_n_convolutions=2, encoder_embedding_dim=32, attention_rnn_dim=64,
        attention_dim=32, attention_location_n_filters=8, attention_location_kernel_size=15, n_frames_per_step=1,
        decoder_rnn_dim=64, prenet_dim=32, max_decoder_steps=40, gate_threshold=0.5, p_attention_dropout=0.1,
        p_decoder_dropout=0.1, postnet_embedding_dim=32, postnet_kernel_size=5, postnet_n_convolutions=3,
        decoder_no_early_stopping=False).eval()
    io = write_graphs(model, True, [3, 4, 5, 6, 7], tmp_path / "model.onnx", "onnx", 17, False)
    assert io["autoregressive"]["speaker_input"] and io["inputs"]["speaker"] == "speaker"
    engine = AutoregressiveAcoustic({r: Graph(tmp_path, {"format": "onnx", **g}, 1) for r, g in io["graphs"].items()},
                                    io["autoregressive"])
    probs = []
    step = engine.step.run_named
    engine.step.run_named = lambda feeds: (out := step(feeds), probs.append(float(out["stop_prob"][0])))[0]
    ids = [5, 9, 2, 11, 17, 3, 8, 21, 4, 12, 6]
    engine.s["threshold"] = 1.0  # no stop: the probabilities of every step up to max_decoder_steps
    engine.mel_of_ids(ids, speaker=1)
    engine.step.run_named = step
    k = next(k for k in range(2, len(probs)) if probs[k] > max(probs[:k]))  # the first new maximum after step 2
    threshold = (probs[k] + max(probs[:k])) / 2
    engine.s["threshold"] = model.decoder.gate_threshold = threshold
    for speaker in (0, 1):
        got = engine.mel_of_ids(ids, speaker=speaker)
        with torch.no_grad(), replay_prenet_dropout(0.5):
            out, lengths, _ = model.infer(torch.tensor([ids]), torch.tensor([len(ids)]), torch.tensor([speaker]))
        ref = out[0, :, : int(lengths[0])].T.numpy()
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4, (speaker, got.shape, ref.shape)
        if speaker == 1:
            assert len(got) == k < 40  # stopped at step k + 1, its frame dropped


@pytest.mark.slow  # imports espnet2 (no training)
def test_espnet_tacotron2_graphs_stop_mid_sentence_as_espnet_does(tmp_path):
    """The ESPnet twin: an untrained Tacotron2 with 2 speaker ids and reduction_factor 2, its threshold set between
    two of its stop probabilities; the engine's loop against Tacotron2.inference with the same masks (prob >=
    threshold stops, the stop step's frames kept, limits counted in frames)."""
    import torch
    from espnet2.tts.tacotron2 import Tacotron2

    from spx.adapters.common.autoregressive_export import replay_prenet_dropout
    from spx.adapters.espnet.steps.tacotron2_export import write_graphs
    from spx.deploy.graph import Graph

    torch.manual_seed(0)
    t2 = Tacotron2(idim=30, odim=20, embed_dim=32, elayers=1, eunits=32, econv_layers=2, econv_chans=32, adim=32,
                   aconv_chans=8, dlayers=2, dunits=64, prenet_layers=2, prenet_units=32, postnet_layers=2,
                   postnet_chans=32, spks=2, reduction_factor=2).eval()
    conf = {"threshold": 1.01, "minlenratio": 0.0, "maxlenratio": 6.0}
    io = write_graphs(t2, None, True, conf, [3, 4, 5, 6, 7], tmp_path / "model.onnx", "onnx", 17, False)
    engine = AutoregressiveAcoustic({r: Graph(tmp_path, {"format": "onnx", **g}, 1) for r, g in io["graphs"].items()},
                                    io["autoregressive"])
    probs = []
    step = engine.step.run_named
    engine.step.run_named = lambda feeds: (out := step(feeds), probs.append(float(out["stop_prob"].max())))[0]
    ids = [5, 9, 2, 11, 17, 3, 8, 21, 4, 12, 6]
    assert len(engine.mel_of_ids(ids, speaker=1)) == int((len(ids) + 1) * 6.0)  # no stop: maxlenratio x (N + eos)
    engine.step.run_named = step
    k = next(k for k in range(2, len(probs)) if probs[k] > max(probs[:k]))
    for threshold in (1.01, (probs[k] + max(probs[:k])) / 2):
        conf["threshold"] = engine.s["threshold"] = threshold
        for speaker in (0, 1):
            got = engine.mel_of_ids(ids, speaker=speaker)
            with torch.no_grad(), replay_prenet_dropout(0.5):
                ref = t2.inference(torch.tensor(ids), sids=torch.tensor([speaker]), **conf)["feat_gen"].numpy()
            assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4, (threshold, speaker, got.shape, ref.shape)
    assert len(got) == 2 * (k + 1)  # speaker 1 stopped at step k + 1, both of its frames kept
