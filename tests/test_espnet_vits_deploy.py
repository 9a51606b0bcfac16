"""`spx export` / `spx serve` of an ESPnet VITS run (issue 17, TTS with sampled noise): the generator's inference
with its noise as graph inputs -> the waveform, through spx.adapters.espnet.steps.vits_export. Fast: the engine's
noise plumbing on a toy graph with VITS's inputs (no toolkit). Slow: the session's VITS (tests/test_espnet_vits.py's
`trained_vits`; no new training) exported to ONNX fp32 and int8, each parity-checked against Text2Speech's own
waveform given the same noise, and the fp32 export served by a real uvicorn process on POST /v1/synthesize."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_spx
from shared_artifacts import build_once, shared_dir
from test_deploy import assert_served_synthesizes
from test_espnet_vits import trained_vits

SCALES = {"noise_scale_dur": 0.8, "noise_scale": 0.667, "length_scale": 1.0}  # Text2Speech's, as the run synthesized


# ------------------------------------------------------------------ fast: the engine's noise, no toolkit
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_waveform_graph_gets_seeded_noise_and_a_short_budget_is_drawn_again(tmp_path, fmt):
    """A toy graph with VITS's inputs and outputs (durations ceil(exp(duration noise * scale + 1)), a frame's samples
    = its token's embedding + prior noise * scale) written by the VITS exporter's own writer, run by TtsEngine: the
    waveform is what the noise the engine reports gives; one seed gives one waveform; a budget of 1 frame a token
    (short: ~3 frames a token) is drawn again and gives the same waveform; noise scales 0 make the seed moot."""
    import torch

    from spx.adapters.espnet.steps.vits_export import prior_draw, write_waveform_graph
    from spx.deploy.engine import TtsEngine, load_engine

    hop = 4  # samples a frame = the noise channels

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(6, hop)

        def forward(self, ids, duration_noise, prior_noise, noise_scale_dur, noise_scale, length_scale):
            dur = torch.ceil(torch.exp(duration_noise[0, 0] * noise_scale_dur + 1.0) * length_scale)
            cum = torch.cumsum(dur, 0)
            token = (torch.arange(cum[-1]).unsqueeze(1) >= cum.unsqueeze(0)).sum(1)
            m = self.emb(ids[0].index_select(0, token)).t().unsqueeze(0)  # [1, hop, frames]
            z = m + prior_draw(prior_noise, m) * noise_scale
            return z.transpose(1, 2).reshape(1, -1), cum[-1:].long()

    torch.manual_seed(0)
    net = Toy().eval()
    d = tmp_path / "export"
    d.mkdir()
    model_file = {"onnx": "model.onnx", "torchscript": "model.ts"}[fmt]
    io = write_waveform_graph(net, d / model_file, fmt, 17, False, [1, 2, 3], speakers=False, channels=hop,
                              scales=SCALES)
    (d / "export.json").write_text(json.dumps({"task": "tts", "format": fmt, "model_file": model_file, **io}))
    (d / "text.json").write_text(json.dumps({"symbols": ["<blank>", "a", "b", "c", " ", "<unk>"], "prefix": [],
                                             "suffix": [], "unknown": "<unk>"}))
    (d / "vocoder.json").write_text(json.dumps({"kind": "none", "sample_rate": 16000, "hop_length": hop}))

    engine = load_engine(d, threads=1)
    assert isinstance(engine, TtsEngine) and engine.vocoder is None
    ids = engine.text.ids("abc cab ba")
    wav, noise = engine.waveform_graph(ids)
    assert noise["duration_noise"].shape == (1, 2, len(ids)) and noise["prior_noise"].shape == (1, 16 * len(ids), hop)
    dur = np.ceil(np.exp(noise["duration_noise"][0, 0].astype(np.float64) * 0.8 + 1.0))
    frames = int(dur.sum())
    means = net.emb.weight.detach().numpy()[np.repeat(ids, dur.astype(int))]  # each frame's token, [frames, hop]
    expected = means + noise["prior_noise"][0, :frames] * 0.667
    assert len(wav) == frames * hop and np.abs(wav - expected.reshape(-1)).max() <= 1e-5
    again, _ = engine.waveform_graph(ids)
    other, _ = engine.waveform_graph(ids, seed=1)
    assert np.array_equal(again, wav) and (len(other) != len(wav) or not np.allclose(other, wav))

    short = TtsEngine(d, threads=1)
    short.noise.frames_per_token = 1
    redrawn, used = short.waveform_graph(ids)
    assert used["prior_noise"].shape[1] == frames > len(ids)  # drawn again at the frame count the graph gave
    assert np.array_equal(redrawn, wav)

    for name in ("noise_scale", "noise_scale_dur"):
        engine.info["extra_inputs"][name]["fill"] = 0.0
    assert np.array_equal(engine.waveform_graph(ids, seed=3)[0], engine.waveform_graph(ids, seed=4)[0])
    (out, rate), = engine.synthesize([("ABC, cab!", None)])
    assert rate == 16000 and len(out) % hop == 0 and len(out)


# ------------------------------------------------------------------ slow: the session's VITS
@pytest.fixture(scope="session")
def vits_run(tts_corpus, tmp_path_factory):
    return trained_vits(tts_corpus, tmp_path_factory)  # the one training, shared


@pytest.fixture(scope="session")
def vits_exported(vits_run, tmp_path_factory):
    """vits_exported("onnx" | "onnx-int8") -> the export dir of the shared VITS run (made once per test run)."""
    root = shared_dir(tmp_path_factory, "espnet_vits_exports")

    def get(kind: str) -> Path:
        fmt, _, quant = kind.partition("-")

        def build(folder: Path) -> None:
            run_spx("export", vits_run.path, "--format", fmt, *(["--quantize", quant] if quant else []),
                    "--out", folder, "--force", check=True, timeout=900)

        return build_once(root / kind, build)

    return get


@pytest.mark.slow
def test_vits_onnx_export_matches_the_toolkit_given_the_same_noise(vits_exported):
    """fp32: Text2Speech's own ids, sample counts and waveform on every test sentence, its two noise draws (duration
    predictor, prior) patched to the noise the engine drew (one traced sentence: every other length runs through
    the graph's dynamic axes, its duration rounding and its cut of the prior noise); the run's noise scales in
    export.json; the engine's noise is seeded, so one text gives one waveform."""
    from spx.deploy.engine import TtsEngine

    d = vits_exported("onnx")
    info = json.loads((d / "export.json").read_text())
    assert (info["backend"], info["task"], info["family"], info["format"]) == ("espnet", "tts", "vits", "onnx")
    assert {p.name for p in d.iterdir()} == {"model.onnx", "export.json", "text.json", "vocoder.json"}
    assert json.loads((d / "vocoder.json").read_text()) == {"kind": "none", "sample_rate": 16000, "hop_length": 256}
    assert info["outputs"] == {"waveform": "waveform", "frames": "frames"} and info["speakers"] == {}
    assert [i["name"] for i in info["noise"]["inputs"]] == ["duration_noise", "prior_noise"]
    assert {k: v["fill"] for k, v in info["extra_inputs"].items()} == SCALES
    p = info["parity"]
    assert p["passed"] and p["utterances"] == 8 and not p["id_mismatch"] and not p["lengths_differ"], p["summary"]
    assert p["max_abs_sample_diff"] <= 1e-5, p["summary"]  # float rounding (7.8e-8 measured)
    assert len(set(p["toolkit_frames"].values())) > 1  # sentences of other lengths than the traced one
    assert p["waveform"]["rms"] > 1e-3 and info["sample_rate"] == 16000
    assert info["speed"]["torch_rtfx"] > 0 and info["speed"]["export_rtfx"] > 0

    engine = TtsEngine(d, threads=1)
    text = "a sentence the export never saw"
    wav, noise = engine.waveform_graph(engine.text.ids(text))
    assert len(wav) % 256 == 0 and len(wav) // 256 <= noise["prior_noise"].shape[1]
    assert np.array_equal(engine.synthesize([(text, None)])[0][0], wav)  # seeded: the same text, the same waveform
    other, _ = engine.waveform_graph(engine.text.ids(text), seed=1)
    assert len(other) != len(wav) or not np.allclose(other, wav)


@pytest.mark.slow
def test_vits_int8_export_passes_the_loose_waveform_rule(vits_exported):
    """int8 (onnxruntime dynamic quantization of the MatMuls): the toolkit's ids, sample counts within 10% (or 2
    frames) and time-averaged spectra within 3 dB of Text2Speech's given the same noise (measured: the same lengths,
    0.002 dB; two noise seeds of the toolkit itself are 1.5-1.9 dB apart)."""
    d = vits_exported("onnx-int8")
    info = json.loads((d / "export.json").read_text())
    assert info["quantize"] == "int8" and {p.name for p in d.glob("*.onnx")} == {"model.onnx"}
    p = info["parity"]
    assert p["passed"] and p["rule"].startswith("int8") and not p["id_mismatch"], p["summary"]
    assert p["worst_spectrum_db"] <= 0.5 and p["worst_length_change"] <= 0.10, p["summary"]
    assert info["sizes"]["int8_model_bytes"] > 0 and info["speed"]["fp32_export_rtfx"] > 0


@pytest.mark.slow
def test_served_vits_export_synthesizes(vits_exported, vits_run, tmp_path):
    """The fp32 export over HTTP (no toolkit in the server): the longest test sentence -> a WAV at the run's rate,
    not silent, one hop per frame, within 2x of the run's own synthesis of it (the noise differs: torch's there,
    the engine's seeded numpy draw here)."""
    row, seconds = assert_served_synthesizes(vits_exported("onnx"), vits_run.path, tmp_path / "server.log",
                                             same_length=False)
    assert round(seconds * 16000) % 256 == 0


@pytest.mark.slow  # imports espnet2 (no training)
def test_multi_speaker_vits_graph_takes_the_speaker_id(tmp_path):
    """The speaker branch the shared single-voice run does not reach: an untrained ESPnet VITS with 3 speaker ids
    traced with one sentence, run on others of other lengths and speakers against VITS.inference(sids=...) given the
    same noise (torch_noise, as the export's parity reference); one sentence and noise, two speakers: two waveforms."""
    import types

    import onnxruntime as ort
    import torch
    from espnet2.gan_tts.vits import VITS

    from spx.adapters.espnet.steps.vits_export import (noise_channels, torch_noise, vits_waveform_module,
                                                       write_waveform_graph)
    from spx.deploy.engine import SampledNoise

    torch.manual_seed(0)
    small = {"hidden_channels": 16, "spks": 3, "global_channels": 16, "segment_size": 8, "text_encoder_blocks": 1,
             "text_encoder_ffn_expand": 2, "decoder_channels": 16, "decoder_upsample_scales": [4, 4],
             "decoder_upsample_kernel_sizes": [8, 8], "decoder_resblock_kernel_sizes": [3],
             "decoder_resblock_dilations": [[1, 3]], "posterior_encoder_layers": 2, "flow_flows": 2, "flow_layers": 2,
             "stochastic_duration_predictor_flows": 2, "stochastic_duration_predictor_dds_conv_layers": 1}
    vits = VITS(idim=20, odim=17, sampling_rate=16000, generator_params=small).eval()
    net = vits_waveform_module(types.SimpleNamespace(tts=vits), speakers=True)
    io = write_waveform_graph(net, tmp_path / "model.onnx", "onnx", 17, False, [3, 4, 5, 6, 7], speakers=True,
                              channels=noise_channels(vits.generator), scales=SCALES)
    assert io["input_order"][:2] == ["ids", "speaker"] and io["inputs"]["speaker"] == "speaker"
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    noise = SampledNoise(io["noise"])
    scales = {k: np.array([v], dtype=np.float32) for k, v in SCALES.items()}
    lengths, by_speaker = set(), {}
    for n, sid in ((12, 0), (30, 2), (4, 1), (12, 2)):
        ids = torch.randint(1, 19, (n,), generator=torch.Generator().manual_seed(n))
        feeds = noise.feeds(n)
        with torch.no_grad(), torch_noise(feeds):
            ref = vits.inference(ids, sids=torch.tensor([sid]), noise_scale=SCALES["noise_scale"],
                                 noise_scale_dur=SCALES["noise_scale_dur"], alpha=SCALES["length_scale"])["wav"]
        wav, frames = session.run(None, {"ids": ids[None].numpy(), "speaker": np.array([sid]), **feeds, **scales})
        assert wav.shape == (1, len(ref)) and len(ref) == int(frames[0]) * 16, (n, sid)
        assert np.abs(wav[0] - ref.numpy()).max() <= 1e-5, (n, sid)
        lengths.add(len(ref))
        if n == 12:
            by_speaker[sid] = wav[0]
    assert len(lengths) >= 3
    assert by_speaker[0].shape != by_speaker[2].shape or not np.allclose(by_speaker[0], by_speaker[2])
    # TorchScript int8 (PyTorch dynamic quantization deep-copies the module: its weight-norm weights made leaves)
    write_waveform_graph(net, tmp_path / "model.ts", "torchscript", 17, True, [3, 4, 5, 6, 7], speakers=True,
                         channels=noise_channels(vits.generator), scales=SCALES)
    feeds = noise.feeds(12)
    wav, frames = torch.jit.load(str(tmp_path / "model.ts"))(
        torch.randint(1, 19, (1, 12)), torch.tensor([1]), *map(torch.from_numpy, feeds.values()),
        *map(torch.from_numpy, scales.values()))
    assert wav.shape[1] == int(frames[0]) * 16 and torch.isfinite(wav).all()
    with pytest.raises(SystemExit, match="speaker ids"):
        vits_waveform_module(types.SimpleNamespace(tts=vits), speakers=False)
