"""Child step `export` (`spx export`): a finished ESPnet conformer_ctc run -> ONNX (torch.onnx.export) or
TorchScript (torch.jit.trace) of the model's feature normalisation + encoder + CTC head (log-mel features in,
log-probs and lengths out), with the frontend's settings for spx's numpy frontend, the token list, and the parity
check. espnet_onnx (ESPnet's own exporter) is not used: it cannot join spx's lock (its pins conflict).

The legacy TorchScript-based ONNX exporter (dynamo=False) on purpose: the dynamo exporter needs onnxscript (not in
the lock) and its data-dependent shapes (padding masks from lengths) need guards the tracer does not.

`python -m spx.adapters.espnet.steps.export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8] [--opset N]`
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock  # patch.object: swap a toolkit function while the graph is traced, restore after

import numpy as np

from spx.adapters.common import child
from spx.adapters.common.export import Exporter, export_run, main, trace_encoder_ctc
from spx.adapters.espnet.steps.decode import load_speech2text
from spx.deploy.features import LogMelFrontend, centred_window


def _frontend(model, sample_rate: int) -> LogMelFrontend:
    import torch

    fe = model.frontend
    stft, logmel = getattr(fe, "stft", None), getattr(fe, "logmel", None)
    enhancement = getattr(fe, "frontend", None)  # WPE/beamformer: identity on one channel unless switched on
    enhances = enhancement is not None and (enhancement.use_wpe or enhancement.use_beamformer)
    if type(fe).__name__ != "DefaultFrontend" or stft is None or logmel is None or enhances:
        raise SystemExit(f"spx export: ESPnet frontend {type(fe).__name__} is not reproduced by spx's numpy "
                         "frontend yet (it takes DefaultFrontend: STFT + log-mel)")
    if stft.normalized or not stft.onesided or logmel.log_base not in (None,):
        raise SystemExit("spx export: ESPnet STFT normalized/two-sided or a log_base is not supported yet")
    window = getattr(torch, f"{stft.window}_window")(stft.win_length).numpy() if stft.window else np.ones(stft.win_length)
    return LogMelFrontend(
        settings={"sample_rate": sample_rate, "n_fft": int(stft.n_fft), "hop_length": int(stft.hop_length),
                  "center": bool(stft.center), "pad_mode": "reflect", "preemph": None,
                  "log": {"type": "clamp", "floor": 1e-10}, "normalize": None, "valid_frames": "all",
                  "layout": "BTD", "toolkit": "espnet2 DefaultFrontend (Stft + LogMel); normalisation in the graph"},
        window=centred_window(window, int(stft.n_fft)), mel=logmel.melmat.detach().cpu().numpy().T)


def _tokens(s2t) -> dict[str, Any]:
    tokens = list(s2t.converter.token_list)
    blank = int(s2t.asr_model.blank_id)
    kind = type(s2t.tokenizer).__name__ if s2t.tokenizer is not None else None
    if kind == "CharTokenizer":
        return {"tokens": tokens, "blank": blank, "space": s2t.tokenizer.space_symbol, "bpe": False, "strip": False}
    if kind == "SentencepiecesTokenizer":
        return {"tokens": tokens, "blank": blank, "space": None, "bpe": True, "strip": True}
    raise SystemExit(f"spx export: ESPnet tokenizer {kind} is not supported yet (char and bpe are)")


def traceable_pad_masks(encoder):
    """ESPnet's encoders size their padding mask with int(max(lengths)), which the tracer freezes to the example's
    length; during export the encoder's module (conformer_encoder, transformer_encoder, ...) gets a mask sized by a
    tensor (the same values)."""
    import sys

    import torch

    where = sys.modules[type(encoder).__module__]
    original = where.make_pad_mask

    def make_pad_mask(lengths, xs=None, length_dim=-1, maxlen=None):
        if xs is not None or maxlen is not None:
            return original(lengths, xs, length_dim, maxlen)
        steps = torch.arange(lengths.max(), device=lengths.device)  # a tensor bound: stays dynamic in the graph
        return steps[None, :] >= lengths[:, None]

    return mock.patch.object(where, "make_pad_mask", make_pad_mask)


def encoder_ctc(model, with_frontend: bool = False):
    """ESPnetASRModel.encode ([frontend ->] normalize -> preencoder -> encoder) + the CTC log-softmax, as a module:
    (input, lengths) -> (log-probs, output lengths). Without the frontend it takes the frontend's features."""
    import torch

    if model.postencoder is not None:
        raise SystemExit("spx export: ESPnet models with a post-encoder are not supported yet")

    class EncoderCtc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.frontend = model.frontend if with_frontend else None
            self.normalize, self.preencoder, self.encoder, self.ctc = (model.normalize, model.preencoder,
                                                                       model.encoder, model.ctc)

        def forward(self, x, lengths):
            if self.frontend is not None:
                x, lengths = self.frontend(x, lengths)
            if self.normalize is not None:
                x, lengths = self.normalize(x, lengths)
            if self.preencoder is not None:
                x, lengths = self.preencoder(x, lengths)
            enc, enc_lens, _ = self.encoder(x, lengths)
            return self.ctc.log_softmax(enc), enc_lens

    return EncoderCtc()


def asr_reference(model, transcribe):
    """The parity reference: the model's own encode + CTC log-softmax on one waveform, and spx's decode path's text."""
    import torch

    @torch.inference_mode()
    def reference(wav: np.ndarray) -> tuple[np.ndarray, str]:
        enc, enc_lens = model.encode(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        return model.ctc.log_softmax(enc)[0, : int(enc_lens[0])].numpy(), transcribe([wav])[0]

    return reference


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    out_dir = str(Path(out_dir).resolve())
    spec, rd = child.load_run(run_dir)
    os.chdir(rd.path)  # the ESPnet config names its feature statistics relative to the run dir
    import torch

    s2t, transcribe = load_speech2text(run_dir, "cpu")  # transcribe: spx's own decode path, the reference text
    model = s2t.asr_model.eval()
    frontend = _frontend(model, spec.features.sample_rate)

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        return trace_encoder_ctc(encoder_ctc(model), path, fmt, opset, int8, frontend.mel.shape[0],
                                 traceable_pad_masks(model.encoder))

    @torch.inference_mode()
    def toolkit_features(wav: np.ndarray) -> np.ndarray:
        feats, _ = model._extract_feats(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        return feats[0].numpy()

    exporter = Exporter(backend="espnet", route="torch.onnx.export (TorchScript exporter, dynamo=False) of "
                        "normalize + preencoder + encoder + CTC", write_graph=write_graph, frontend=frontend,
                        tokens=_tokens(s2t), reference=asr_reference(model, transcribe),
                        toolkit_features=toolkit_features)
    return export_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
