"""Child step `export` (`spx export`) of SpeechBrain ssl_ctc: a finished run's modules (SpeechBrain's Transformers
integration, LoRA adapters included, + the linear CTC head + log-softmax) -> ONNX (torch.onnx.export, dynamo=False)
or TorchScript (torch.jit.trace) from the waveform: waveform [B, samples] + sample counts [B] -> log-probs [B, frames,
vocab] + frame counts [B] (the Transformers model's _get_feat_extract_output_lengths, in the graph). The integration's
own input normalisation (a layer norm over each padded row, when the checkpoint's feature extractor says
do_normalize) and padding mask stay in the graph, so the numpy frontend only pads (spx.deploy.features
.WaveformFrontend, do_normalize false); the reference is the decode step's own forward and greedy decoder.

`python -m spx.adapters.speechbrain.steps.ssl_export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8]`
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock  # patch.object: swap a toolkit function while the graph is traced, restore after

import numpy as np
import torch

from spx.adapters.common import child
from spx.adapters.common.export import Exporter, export_run, main, trace_waveform_graph
from spx.adapters.speechbrain.steps.export import _tokens
from spx.adapters.speechbrain.steps.model import ctc_decoder
from spx.adapters.speechbrain.steps.ssl_model import hf_model, load_exported, log_probs
from spx.deploy.features import WaveformFrontend

LAYER_NORM_EPS = 1e-5  # torch.nn.functional.layer_norm's default, which the integration uses


def traceable_padding_masks():
    """The integration's make_padding_masks (length_to_mask: max_len read with .item() and len(lengths) rows, Python
    numbers the tracer freezes to the example; then a bool mask, whose cumsum inside Transformers is not valid ONNX)
    replaced while the graph is traced by the same mask as int64 (what Transformers' own feature extractor gives),
    built from broadcast tensors (every axis stays dynamic)."""
    from speechbrain.integrations.huggingface import wav2vec2

    def make_padding_masks(src, wav_len=None, pad_idx=0):
        if wav_len is None:
            return None
        abs_len = torch.round(wav_len * src.shape[1])
        return (torch.arange(src.shape[1], device=src.device)[None, :] < abs_len[:, None]).long()

    return mock.patch.object(wav2vec2, "make_padding_masks", make_padding_masks)


def integration_normalization_off(ssl_base):
    """The integration without its input layer norm while the graph is traced (the graph's module does it)."""
    return mock.patch.object(ssl_base, "normalize_wav", False)


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    spec, rd = child.load_run(run_dir)
    modules, hparams, tokenizer, _ = load_exported(rd, "cpu")
    if int(hparams["blank_index"]) != 0:
        raise SystemExit("spx export: SpeechBrain runs with a blank index other than 0 are not supported yet")
    if hparams["decoding"] != "greedy":
        raise SystemExit(f"spx export: the run decodes with {hparams['decoding']!r}; the export's engine decodes "
                         "greedy CTC (export a run with decoding.strategy greedy)")
    decode = ctc_decoder(hparams, tokenizer)
    normalize_wav = bool(hparams["ssl_base"].normalize_wav)
    encoder = hf_model(hparams)
    frontend = WaveformFrontend({"kind": "waveform", "sample_rate": spec.features.sample_rate, "do_normalize": False,
                                 "epsilon": 0.0, "padding_value": 0.0, "attention_mask": True,
                                 "toolkit": "SpeechBrain's Transformers integration; its input layer norm "
                                 f"(normalize_wav {normalize_wav}) and padding mask "
                                 "are in the graph"})

    class SslCtc(torch.nn.Module):
        """log_probs of ssl_model after batching, lengths in samples instead of SpeechBrain's relative ones."""

        def __init__(self):
            super().__init__()
            self.ssl, self.ctc_lin, self.log_softmax = modules.ssl, modules.ctc_lin, hparams["log_softmax"]

        def forward(self, waveform, lengths):
            rel = lengths.to(waveform.dtype) / waveform.shape[1]
            if normalize_wav:  # the integration's F.layer_norm(wav, wav.shape[1:]), written out: the ONNX exporter
                # needs a constant normalized_shape
                mean = waveform.mean(dim=-1, keepdim=True)
                var = ((waveform - mean) ** 2).mean(dim=-1, keepdim=True)
                waveform = (waveform - mean) / torch.sqrt(var + LAYER_NORM_EPS)
            lp = self.log_softmax(self.ctc_lin(self.ssl(waveform, rel)))
            return lp, encoder._get_feat_extract_output_lengths(lengths)

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        with traceable_padding_masks(), integration_normalization_off(hparams["ssl_base"]):
            io = trace_waveform_graph(SslCtc(), path, fmt, opset, int8,
                                      {"log_probs": ["batch", "out_frames", "vocab"], "out_lengths": ["batch"]})
        return {**io, "outputs": {"log_probs": "log_probs", "lengths": "out_lengths"}}

    @torch.no_grad()
    def reference(wav: np.ndarray) -> tuple[np.ndarray, str]:
        lp = log_probs(modules, hparams, torch.from_numpy(wav)[None], torch.ones(1))
        return lp[0].numpy(), decode(lp, torch.ones(1))[0]

    exporter = Exporter(backend="speechbrain", route="torch.onnx.export (TorchScript exporter, dynamo=False) of the "
                        f"Brain's modules from the waveform ({type(encoder).__name__} through SpeechBrain's "
                        "integration, ctc_lin, log-softmax, output lengths)", write_graph=write_graph,
                        frontend=frontend, tokens=_tokens(tokenizer), reference=reference)
    return export_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
