"""Child step `tts_export` (`spx export`) of the NeMo fastspeech2 family: the run's FastPitchModel -> ONNX through
NeMo's own route, `Exportable.export` (FastPitchModel.forward_for_export: FastPitchModule.infer, predicted durations
and pitch; `text` [1, N] int64 + NeMo's `pitch` shift (0) and `pace` (1) per token -> `spect` [1, n_mels, frames]
log-mel + `num_frames`), NeMo's character table as text.json, and the vocoder: Griffin-Lim from the model's own mel
filterbank (natural log, + 1e-5 guard, |STFT| power 1, as tts_synth's GriffinLim), or, when tts.vocoder names a NeMo
HiFi-GAN, its generator exported the same way (HifiGanModel.export) beside the acoustic graph.

TorchScript: NeMo's Exportable.export cannot trace FastPitch (its TorchScript path passes the example's
`batch_lengths` as `volume` and cannot return infer's None volume output), so the same forward_for_export is traced
with torch.jit.trace on a sentence of the model's own alphabet (FastPitch's ops trace shape-generically: checked by the
parity check on every test sentence).

`python -m spx.adapters.nemo.steps.tts_export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8] [--opset N]`
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from spx.adapters.common import child
from spx.adapters.common.export import TtsExporter, export_tts_run, main
from spx.adapters.nemo.helpers import TTS_INFO
from spx.adapters.nemo.steps.tts_synth import exported_model

ROUTE = "NeMo Exportable.export (FastPitchModel.forward_for_export)"
TORCHSCRIPT_ROUTE = "torch.jit.trace of NeMo's FastPitchModel.forward_for_export"
# graph outputs: NeMo's names for the ONNX graph (FastPitchModel.output_types); the TorchScript wrapper keeps two
ONNX_OUTPUTS = ["spect", "num_frames", "durs_predicted", "log_durs_predicted", "pitch_predicted"]
TRACE_TEXT = "the quick brown fox, jumps over the lazy dog's back"  # the tracing example (any text of the alphabet)


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    import torch
    from nemo.collections.tts.models import FastPitchModel

    spec, rd = child.load_run(run_dir)
    info = json.loads((rd / TTS_INFO).read_text())
    nemo_file = exported_model(rd)
    lowercase = spec.tokenizer.lowercase

    def restore() -> Any:
        return FastPitchModel.restore_from(nemo_file, map_location="cpu").eval()

    model = restore()  # the reference: never prepared for export (NeMo swaps modules and input types for it)

    def toolkit_ids(text: str) -> list[int]:
        return [int(i) for i in model.parse(child.clean_transcript(text, lowercase), normalize=False)[0]]

    @torch.inference_mode()
    def reference(text: str, speaker: str | None) -> np.ndarray:
        tokens = model.parse(child.clean_transcript(text, lowercase), normalize=False)
        return model.generate_spectrogram(tokens=tokens)[0].T.float().numpy()  # [frames, n_mels]

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        net = restore()
        if int8:  # TorchScript int8: PyTorch dynamic quantization of the Linear layers (FFT blocks' projections)
            net = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        io: dict[str, Any] = {
            "inputs": {"ids": "text"},
            # NeMo's per-token controls, constant in spx: no pitch shift, pace 1 (generate_spectrogram's defaults)
            "extra_inputs": {"pitch": {"dtype": "float32", "fill": 0.0, "shape": "like_ids"},
                             "pace": {"dtype": "float32", "fill": 1.0, "shape": "like_ids"}},
            "outputs": {"mel": "spect", "frames": "num_frames"}, "mel_layout": "BDT",
            "input_order": ["text", "pitch", "pace"],
        }
        if fmt == "onnx":
            net.export(str(path), onnx_opset_version=opset, check_trace=False)
            return {**io, "output_order": ONNX_OUTPUTS}
        _trace(net, path)
        return {**io, "output_order": ["spect", "num_frames"]}

    mel = info["mel"]
    vocoder: dict[str, Any]
    write_vocoder = None
    if info["vocoder"]:
        vocoder = {"kind": "graph", "model_file": "vocoder.onnx" if fmt == "onnx" else "vocoder.ts",
                   "input": "spec", "output": "audio", "mel_layout": "BDT", "sample_rate": int(mel["sample_rate"]),
                   "hop_length": int(mel["hop_length"]),  # samples per mel frame: the export's audio seconds
                   "name": info["vocoder_name"]}
        write_vocoder = partial(_write_hifigan, info["vocoder"], mel=mel)
    else:
        featurizer = model.preprocessor.featurizer
        vocoder = {"kind": "griffin_lim", "sample_rate": int(mel["sample_rate"]), "n_fft": int(mel["n_fft"]),
                   "win_length": int(mel["win_length"]), "hop_length": int(mel["hop_length"]), "power": 1.0,
                   "log": {"base": "e", "guard": float(getattr(featurizer, "log_zero_guard_value", 1e-5))},
                   "n_iter": int(info["griffin_lim_iters"])}
    arrays = None if info["vocoder"] else {"mel_basis": model.preprocessor.featurizer.fb[0].float().numpy()}

    tokenizer = model.vocab  # NeMo's EnglishCharsTokenizer: ' ' first, a-z, apostrophe, punctuation
    pad = [tokenizer.space] if getattr(tokenizer, "pad_with_space", False) else []
    text = {"symbols": list(tokenizer.tokens), "space": tokenizer.tokens[tokenizer.space], "lowercase": lowercase,
            "prefix": pad, "suffix": pad, "unknown": None, "collapse_spaces": True}  # NeMo drops digits, merges spaces

    exporter = TtsExporter(
        backend="nemo", route=ROUTE if fmt == "onnx" else TORCHSCRIPT_ROUTE, write_graph=write_graph, text=text,
        toolkit_ids=toolkit_ids, reference=reference, vocoder=vocoder, vocoder_arrays=arrays,
        write_vocoder=write_vocoder, speakers={})
    return export_tts_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


def _trace(net: Any, path: Path) -> None:
    """torch.jit.trace of forward_for_export (text, pitch, pace) -> (spect, num_frames), in NeMo's export mode."""
    import torch

    class ForExport(torch.nn.Module):
        def __init__(self, fastpitch: Any) -> None:
            super().__init__()
            self.fastpitch = fastpitch

        def forward(self, text, pitch, pace):
            spect, num_frames, *_ = self.fastpitch.forward_for_export(text=text, pitch=pitch, pace=pace)
            return spect, num_frames

    ids = net.parse(TRACE_TEXT, normalize=False)
    net._prepare_for_export()  # NeMo's own export preparation (export-friendly module swaps), as Exportable.export
    try:
        with torch.inference_mode():
            traced = torch.jit.trace(ForExport(net), (ids, torch.zeros(ids.shape), torch.ones(ids.shape)),
                                     check_trace=False)
        torch.jit.save(traced, str(path))
    finally:
        net._export_teardown()


def _write_hifigan(nemo_file: str, path: Path, fmt: str, opset: int, mel: dict[str, Any]) -> dict[str, Any]:
    """The HiFi-GAN .nemo tts.vocoder names -> its generator (spec [1, n_mels, frames] -> audio [1, 1, samples]),
    through NeMo's Exportable.export (weight norm removed by HifiGanModel's own export preparation)."""
    from nemo.collections.tts.models import HifiGanModel

    vocoder = HifiGanModel.restore_from(nemo_file, map_location="cpu").eval()
    pre = vocoder.cfg.preprocessor
    got = (int(pre.sample_rate), int(pre.get("nfilt", pre.get("features", 0))))
    if got != (int(mel["sample_rate"]), int(mel["n_mels"])):
        raise SystemExit(f"spx export: tts.vocoder {nemo_file} was trained on {got[1]} mels at {got[0]} Hz, this "
                         f"FastPitch makes {mel['n_mels']} mels at {mel['sample_rate']} Hz")
    vocoder.export(str(path), onnx_opset_version=opset, check_trace=False)
    return {"format": fmt, "route": "NeMo Exportable.export (HifiGanModel generator)"}


if __name__ == "__main__":
    main(export)
