"""Child step `export` (`spx export`): a finished SpeechBrain conformer_ctc run -> ONNX (torch.onnx.export) or
TorchScript (torch.jit.trace) of the Brain's modules after the feature extractor (normalize -> CNN -> Conformer
encoder -> CTC head -> log-softmax; log-mel features in, log-probs and lengths out), with the Fbank settings for
spx's numpy frontend, the label encoder's tokens, and the parity check.

The legacy TorchScript-based ONNX exporter (dynamo=False) on purpose: the dynamo exporter needs onnxscript (not in
the lock), and the tracer keeps SpeechBrain's shape-derived masks dynamic.

`python -m spx.adapters.speechbrain.steps.export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8] [--opset N]`
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock  # patch.object: swap a toolkit function while the graph is traced, restore after

import numpy as np
import torch

from spx.adapters.common import child
from spx.adapters.common.export import Exporter, export_run, main, trace_encoder_ctc
from spx.adapters.speechbrain.steps.decode import load_model, load_transcriber
from spx.adapters.speechbrain.steps.model import encode_log_probs
from spx.deploy.features import LogMelFrontend, centred_window


def _frontend(fbank, sample_rate: int) -> LogMelFrontend:
    stft, fb = fbank.compute_STFT, fbank.compute_fbanks
    if fbank.deltas or fbank.context or not fb.log_mel or stft.normalized_stft or not stft.onesided:
        raise SystemExit("spx export: this SpeechBrain Fbank setting (deltas, context, no log, normalized or "
                         "two-sided STFT) is not reproduced by spx's numpy frontend yet")
    if float(fb.db_multiplier) != 0.0:
        raise SystemExit("spx export: SpeechBrain Filterbank ref_value other than 1 is not supported yet")
    n_freq = stft.n_fft // 2 + 1
    with torch.no_grad():  # the filterbank matrix, read by passing the identity through it with the log off
        fb.log_mel = False
        try:
            mel = fb(torch.eye(n_freq)[None])[0].T.numpy()
        finally:
            fb.log_mel = True
    return LogMelFrontend(
        settings={"sample_rate": sample_rate, "n_fft": int(stft.n_fft), "hop_length": int(stft.hop_length),
                  "center": bool(stft.center), "pad_mode": stft.pad_mode, "preemph": None,
                  "log": {"type": "db", "amin": float(fb.amin), "top_db": float(fb.top_db),
                          "multiplier": float(fb.multiplier)},
                  "normalize": None, "valid_frames": "all", "layout": "BTD",
                  "toolkit": "speechbrain.lobes.features.Fbank; InputNormalization in the graph"},
        window=centred_window(stft.window.numpy(), int(stft.n_fft)), mel=mel)


def broadcast_length_to_mask(length, max_len=None, dtype=None, device=None):
    """SpeechBrain's length_to_mask from broadcast tensors (the same values): its own expands to len(lengths) rows, a
    Python int the tracer freezes to the example's batch size."""
    if max_len is None:
        max_len = length.max().long()
    mask = torch.arange(max_len, device=length.device, dtype=length.dtype)[None, :] < length[:, None]
    return mask.to(dtype=dtype or length.dtype, device=device or length.device)


def traceable_length_masks():
    """While the graph is traced, the Transformer builds its masks with broadcast_length_to_mask (the batch stays
    dynamic)."""
    from speechbrain.lobes.models.transformer import TransformerASR

    return mock.patch.object(TransformerASR, "length_to_mask", broadcast_length_to_mask)


def _tokens(tokenizer) -> dict[str, Any]:
    tokens = tokenizer.vocab_list()
    if tokenizer.kind == "char":
        return {"tokens": tokens, "blank": 0, "space": None, "bpe": False, "strip": False}
    return {"tokens": tokens, "blank": 0, "space": None, "bpe": True, "strip": True}


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    spec, rd = child.load_run(run_dir)
    modules, hparams, tokenizer, _ = load_model(rd, "cpu")
    transcribe = load_transcriber(run_dir, "cpu")  # spx's own decode path: the reference greedy text
    frontend = _frontend(hparams["compute_features"], spec.features.sample_rate)
    if int(hparams["blank_index"]) != 0:
        raise SystemExit("spx export: SpeechBrain runs with a blank index other than 0 are not supported yet")

    class EncoderCtc(torch.nn.Module):
        """encode_log_probs after the feature extractor, lengths in frames instead of SpeechBrain's relative ones."""

        def __init__(self):
            super().__init__()
            self.normalize, self.cnn, self.enc, self.ctc_lin = (modules.normalize, modules.CNN, modules.enc,
                                                                 modules.ctc_lin)
            self.log_softmax = hparams["log_softmax"]

        def forward(self, feats, lengths):
            rel = lengths.to(feats.dtype) / feats.shape[1]
            x = self.normalize(feats, rel)
            x = self.enc(self.cnn(x), rel)
            log_probs = self.log_softmax(self.ctc_lin(x))
            return log_probs, torch.round(rel * log_probs.shape[1]).long()

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        return trace_encoder_ctc(EncoderCtc(), path, fmt, opset, int8, frontend.mel.shape[0], traceable_length_masks())

    @torch.no_grad()
    def reference(wav: np.ndarray) -> tuple[np.ndarray, str]:
        lp = encode_log_probs(modules, hparams, torch.from_numpy(wav)[None], torch.ones(1))
        return lp[0].numpy(), transcribe([wav])[0]

    @torch.no_grad()
    def toolkit_features(wav: np.ndarray) -> np.ndarray:
        return hparams["compute_features"](torch.from_numpy(wav)[None])[0].numpy()

    exporter = Exporter(backend="speechbrain", route="torch.onnx.export (TorchScript exporter, dynamo=False) of the "
                        "Brain's modules (normalize, CNN, encoder, ctc_lin)", write_graph=write_graph,
                        frontend=frontend, tokens=_tokens(tokenizer), reference=reference,
                        toolkit_features=toolkit_features)
    return export_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
