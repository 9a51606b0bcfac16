"""Child step `export` (`spx export`) of hf ssl_ctc: a finished run's AutoModelForCTC (Wav2Vec2/Hubert/WavLMForCTC;
LoRA runs merged as the decode step loads them) -> ONNX (torch.onnx.export) or TorchScript (torch.jit.trace) of the
whole model from the waveform (the convolutional feature encoder is part of the graph, as in every Transformers ONNX
export of these models): normalised waveform [B, samples] + sample counts [B] -> CTC log-probs [B, frames, vocab] +
frame counts [B] (the model's own _get_feat_extract_output_lengths, in the graph). The feature extractor's
normalisation runs in numpy (spx.deploy.features.WaveformFrontend); the vocabulary goes to tokens.json; the parity
reference is the decode step's own forward (spx.adapters.hf.steps.decode.ctc_forward) and greedy text.

The TorchScript-based ONNX exporter (dynamo=False) on purpose: the dynamo exporter needs onnxscript (not in the lock).

`python -m spx.adapters.hf.steps.export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8] [--opset N]`
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spx.adapters.common import child
from spx.adapters.common.export import (Exporter, export_run, main, sample_mask, trace_waveform_graph,
                                       waveform_frontend)
from spx.adapters.hf.steps.decode import ctc_forward


class WaveformCtc(torch.nn.Module):
    """AutoModelForCTC from the normalised waveform: log-softmax of its logits and its frame counts. The attention
    mask (when the checkpoint takes one) is built from the sample counts inside the graph."""

    def __init__(self, model, attention_mask: bool):
        super().__init__()
        self.model, self.attention_mask = model, attention_mask

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor):
        mask = sample_mask(waveform, lengths) if self.attention_mask else None
        logits = self.model(waveform, attention_mask=mask).logits
        return torch.log_softmax(logits.float(), dim=-1), self.model._get_feat_extract_output_lengths(lengths)


def ctc_tokens(text) -> dict[str, Any]:
    """tokens.json (spx.deploy.engine.CtcText) from the run's CTC codec: Wav2Vec2CTCTokenizer (blank = its pad
    token, '|' the word delimiter) or sentencepiece (blank after the pieces)."""
    if text.kind == "char":
        tok = text.tokenizer
        if tok.do_lower_case or getattr(tok, "clean_up_tokenization_spaces", False) or \
                tok.replace_word_delimiter_char != " ":
            raise SystemExit("spx export: this Wav2Vec2CTCTokenizer lower-cases, cleans up spaces or replaces the word "
                             "delimiter by something else than a space; spx's CTC text does not yet")
        return {"tokens": tok.convert_ids_to_tokens(list(range(len(tok)))), "blank": int(tok.pad_token_id),
                "space": tok.word_delimiter_token, "bpe": False, "strip": True}
    sp = text.sp
    return {"tokens": [sp.id_to_piece(i) for i in range(sp.get_piece_size())] + ["<blank>"],
            "blank": int(text.blank), "space": None, "bpe": True, "strip": True}


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    spec, rd = child.load_run(run_dir)
    source = Path(json.loads((rd / "train_summary.json").read_text())["exported_model"])
    model, fe, text, forward = ctc_forward(source, "cpu", "float32")
    frontend = waveform_frontend(fe)

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        io = trace_waveform_graph(WaveformCtc(model, frontend.settings["attention_mask"]), path, fmt, opset, int8,
                                  {"log_probs": ["batch", "out_frames", "vocab"], "out_lengths": ["batch"]})
        return {**io, "outputs": {"log_probs": "log_probs", "lengths": "out_lengths"}}

    def reference(wav: np.ndarray) -> tuple[np.ndarray, str]:
        logits, lengths = forward([wav])
        row = logits[0, : lengths[0]]
        return torch.log_softmax(row.float(), dim=-1).numpy(), text.decode_ctc(row.argmax(-1))

    exporter = Exporter(backend="hf", route="torch.onnx.export (TorchScript exporter, dynamo=False) of "
                        f"{type(model).__name__} from the waveform (feature encoder, Transformer, CTC head, "
                        "log-softmax, output lengths)", write_graph=write_graph, frontend=frontend,
                        tokens=ctc_tokens(text), reference=reference)
    return export_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
