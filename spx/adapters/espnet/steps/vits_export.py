"""Child step `export` (`spx export`) of the ESPnet VITS family: `torch.onnx.export` (dynamo=False) or TorchScript
(torch.jit.trace) of the generator's inference path, token ids [1, N] (+ speaker id [1]) and the Gaussian noise VITS
samples -> waveform [1, samples] and the frame count it decoded [1] (one hop of samples per frame).

The graph is ESPnet's own VitsGenerator.inference, traced with its three data-dependent calls swapped
(unittest.mock.patch.object, while the graph is recorded): torch.randn, the stochastic duration predictor's draw
[1, 2, N], returns the graph input `duration_noise`; torch.randn_like, the prior sample's draw
(z_p = m_p + eps * exp(logs_p) * noise_scale), returns the input `prior_noise` [1, F, hidden], a budget of F frames
cut (or zero-padded) to the frames the durations give; make_non_pad_mask builds its mask from a length tensor
(ESPnet sizes it with int(max(lengths)), which the tracer freezes). noise_scale, noise_scale_dur and the length
scale (ESPnet's alpha) are graph inputs export.json fills (`extra_inputs`) with the run's Text2Speech settings
(its decode_conf), so they can be changed without a new export. The engine (spx.deploy.engine.SampledNoise) draws
the noise standard normal from a numpy Generator seeded anew for every sentence (export.json noise.seed); the parity
check runs Text2Speech with the same noise (torch.randn / torch.randn_like patched during the reference call).

One limit the trace keeps, as FastSpeech2's: the text encoder's relative-position table is a constant of its initial
size (5000 positions), so a sentence of more than 5000 tokens fails in the graph instead of growing it.

`python -m spx.adapters.espnet.steps.vits_export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8]`
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock  # patch.object: swap a toolkit function while the graph is traced, restore after

import numpy as np

from spx.adapters.common.export import TtsExporter, export_tts_run, main
from spx.adapters.espnet.steps.tts_export import EXAMPLE_TEXT, Text2SpeechRun, trace_tts_graph

ROUTE = ("torch.onnx.export (TorchScript exporter, dynamo=False) of VitsGenerator.inference with its noise draws as "
         "graph inputs (ids + noise -> waveform); TorchScript by torch.jit.trace")
FRAMES_PER_TOKEN = 16  # the prior noise's first budget (~0.26 s a character at hop 256 / 16 kHz); redrawn if short
NOISE_SEED = 0         # the engine seeds every sentence with it: one text, one waveform (waveform_graph takes others)
SCALES = {"noise_scale_dur": "noise_scale_dur", "noise_scale": "noise_scale", "length_scale": "alpha"}  # input: conf


def traceable_non_pad_mask(lengths, xs=None, length_dim=-1):
    """make_non_pad_mask(lengths) [B, max(lengths)] with the size taken from the tensor, which the tracer keeps."""
    import torch

    if xs is not None or length_dim != -1:
        raise NotImplementedError("spx export: make_non_pad_mask with xs / length_dim is not traced")
    return torch.arange(lengths.max(), device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def noise_channels(generator: Any) -> int:
    """The prior's channels (m_p, logs_p: the text encoder's projection, halved)."""
    return int(generator.text_encoder.proj.out_channels // 2)


def prior_draw(prior_noise: Any, like: Any) -> Any:
    """The graph's prior noise [1, F, hidden] as torch.randn_like(m_p [1, hidden, frames]): its first `frames` rows,
    zero rows past F (a short budget: the engine sees the frame count and draws again)."""
    import torch

    noise = torch.cat([prior_noise.transpose(1, 2).to(like.dtype), torch.zeros_like(like)], dim=2)
    return noise[:, :, : like.size(2)]


def vits_waveform_module(model: Any, speakers: bool = False) -> Any:
    """ESPnetGANTTSModel (tts: vits) -> a module (ids [1, N] int64, (speaker [1] int64,) duration_noise [1, 2, N],
    prior_noise [1, F, hidden], noise_scale_dur [1], noise_scale [1], length_scale [1]) -> (waveform [1, samples]
    float32, frames [1] int64)."""
    import torch
    from espnet2.gan_tts.vits import generator as generator_module
    from espnet2.gan_tts.vits import text_encoder as text_encoder_module

    vits = model.tts
    if type(vits).__name__ != "VITS":
        raise SystemExit(f"spx export: an ESPnet {type(vits).__name__} model is not a VITS")
    gen = vits.generator
    unsupported = [name for name, on in (("language ids", gen.langs), ("speaker embeddings", gen.spk_embed_dim)) if on]
    if unsupported:
        raise SystemExit(f"spx export: ESPnet VITS with {', '.join(unsupported)} is not exported yet")
    if bool(gen.spks) != speakers:
        raise SystemExit(f"spx export: the model has {gen.spks or 'no'} speaker ids, the run "
                         f"{'names speakers' if speakers else 'names none'}")

    class VitsWaveform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.generator = gen

        def forward(self, ids, *rest):
            sid, rest = (rest[0], rest[1:]) if speakers else (None, rest)
            duration_noise, prior_noise, noise_scale_dur, noise_scale, length_scale = rest

            def randn(*size, **kwargs):  # the stochastic duration predictor's draw, [1, 2, tokens]
                return duration_noise

            def randn_like(like, **kwargs):
                return prior_draw(prior_noise, like)

            lengths = torch.ones_like(ids).sum(dim=1)
            with mock.patch.object(torch, "randn", randn), mock.patch.object(torch, "randn_like", randn_like), \
                    mock.patch.object(generator_module, "make_non_pad_mask", traceable_non_pad_mask), \
                    mock.patch.object(text_encoder_module, "make_non_pad_mask", traceable_non_pad_mask):
                wav, _, dur = self.generator.inference(text=ids, text_lengths=lengths, sids=sid,
                                                       noise_scale=noise_scale, noise_scale_dur=noise_scale_dur,
                                                       alpha=length_scale)
            frames = torch.clamp_min(dur.sum(dim=1), 1).long()  # VitsGenerator.inference's y_lengths
            return wav, frames

    return VitsWaveform().eval()


def detach_weight_norm(net: Any) -> None:
    """The weights torch.nn.utils.weight_norm computed in the last forward (VITS's decoder, flows, posterior encoder)
    made leaves, which deepcopy needs; the hook computes them again from weight_g / weight_v in every forward."""
    from torch.nn.utils.weight_norm import WeightNorm

    for module in net.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                setattr(module, hook.name, getattr(module, hook.name).detach())


def write_waveform_graph(net: Any, path: Path, fmt: str, opset: int, int8: bool, example_ids: list[int],
                         speakers: bool, channels: int, scales: dict[str, float]) -> dict[str, Any]:
    """The module through trace_tts_graph (tokens, noise frames and samples dynamic) and its account for
    export.json: roles, the noise the engine draws, the scales it feeds."""
    import torch

    n = len(example_ids)
    gen = torch.Generator().manual_seed(0)
    example = {"ids": torch.tensor([example_ids], dtype=torch.long),
               **({"speaker": torch.tensor([0])} if speakers else {}),
               "duration_noise": torch.randn(1, 2, n, generator=gen),
               "prior_noise": torch.randn(1, FRAMES_PER_TOKEN * n, channels, generator=gen),
               **{name: torch.tensor([scales[name]], dtype=torch.float32) for name in SCALES}}
    inputs = list(example)
    if int8:  # PyTorch's dynamic quantization deep-copies the module first
        detach_weight_norm(net)
    trace_tts_graph(net, path, fmt, opset, int8, example, ["waveform", "frames"],
                    {"ids": {1: "tokens"}, "duration_noise": {2: "tokens"}, "prior_noise": {1: "noise_frames"},
                     "waveform": {1: "samples"}})
    return {"inputs": {"ids": "ids", **({"speaker": "speaker"} if speakers else {})}, "input_order": inputs,
            "outputs": {"waveform": "waveform", "frames": "frames"}, "output_order": ["waveform", "frames"],
            "input_shapes": {"ids": [1, "tokens"], **({"speaker": [1]} if speakers else {}),
                             "duration_noise": [1, 2, "tokens"], "prior_noise": [1, "frames", channels],
                             **{name: [1] for name in SCALES}},
            "output_shapes": {"waveform": [1, "samples"], "frames": [1]},
            "noise": {"seed": NOISE_SEED, "frames_per_token": FRAMES_PER_TOKEN, "distribution": "standard normal",
                      "inputs": [{"name": "duration_noise", "shape": [1, 2, "tokens"]},
                                 {"name": "prior_noise", "shape": [1, "frames", channels]}]},
            "extra_inputs": {name: {"shape": [1], "fill": float(scales[name]), "dtype": "float32"}
                             for name in SCALES}}


def torch_noise(feeds: dict[str, np.ndarray]) -> Any:
    """patch.object context that makes torch.randn / torch.randn_like give the engine's noise `feeds` (one draw
    each, as VitsGenerator.inference takes them) while the toolkit's own inference runs."""
    import contextlib

    import torch

    duration_noise = torch.from_numpy(np.ascontiguousarray(feeds["duration_noise"]))
    prior_noise = torch.from_numpy(np.ascontiguousarray(feeds["prior_noise"]))

    def randn(*size, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        if tuple(shape) != tuple(duration_noise.shape):
            raise RuntimeError(f"spx export: VITS drew noise of shape {tuple(shape)}, the engine's duration noise is "
                               f"{tuple(duration_noise.shape)}")
        return duration_noise.clone()

    def randn_like(like, **kwargs):
        return prior_draw(prior_noise, like)

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(torch, "randn", randn))
    stack.enter_context(mock.patch.object(torch, "randn_like", randn_like))
    return stack


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    out_dir = str(Path(out_dir).resolve())
    run = Text2SpeechRun.load(run_dir)
    import torch

    tts = run.tts
    gen = tts.model.tts.generator
    conf = tts.decode_conf
    scales = {name: float(conf[key]) for name, key in SCALES.items()}
    net = vits_waveform_module(tts.model.eval(), speakers=bool(run.speakers))
    vocoder = {"kind": "none", "sample_rate": int(tts.fs), "hop_length": int(gen.upsample_factor)}

    @torch.no_grad()
    def reference(sentence: str, speaker: str | None, noise: dict[str, np.ndarray]) -> np.ndarray:
        with torch_noise(noise):
            return tts(run.clean(sentence), **run.speaker_kwargs(speaker))["wav"].float().numpy()

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        return write_waveform_graph(net, path, fmt, opset, int8, run.toolkit_ids(EXAMPLE_TEXT), bool(run.speakers),
                                    noise_channels(gen), scales)

    exporter = TtsExporter(backend="espnet", route=ROUTE, write_graph=write_graph, text=run.text,
                           toolkit_ids=run.toolkit_ids, reference=reference, vocoder=vocoder, speakers=run.speakers)
    return export_tts_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
