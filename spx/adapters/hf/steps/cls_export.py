"""Child step `export` (`spx export`) of hf ssl_classifier: a finished run's AutoModelForAudioClassification
(Wav2Vec2/Hubert/WavLMForSequenceClassification; LoRA runs merged as the decode step loads them) -> ONNX
(torch.onnx.export, dynamo=False) or TorchScript (torch.jit.trace) of the whole model from the waveform: normalised
waveform [B, samples] + sample counts [B] -> logits [B, classes] (the attention mask, when the checkpoint takes one, is
built from the counts in the graph; the pooling is the model's own). The feature extractor's normalisation runs in
numpy (spx.deploy.features.WaveformFrontend); the parity reference is the decode step's own forward
(spx.adapters.hf.steps.cls_decode.classifier_forward); spx.adapters.common.export.export_classifier_run does the rest.

`python -m spx.adapters.hf.steps.cls_export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8] [--opset N]`
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from spx.adapters.common.export import (ClassifierExporter, export_classifier_run, main, sample_mask,
                                       trace_waveform_graph, waveform_frontend)
from spx.adapters.hf.steps.cls_decode import classifier_forward


class WaveformClassifier(torch.nn.Module):
    """AutoModelForAudioClassification from the normalised waveform: its logits."""

    def __init__(self, model, attention_mask: bool):
        super().__init__()
        self.model, self.attention_mask = model, attention_mask

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor):
        mask = sample_mask(waveform, lengths) if self.attention_mask else None
        return self.model(waveform, attention_mask=mask).logits.float()


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    model, fe, classes, forward = classifier_forward(run_dir, "cpu", "float32")
    frontend = waveform_frontend(fe)

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        io = trace_waveform_graph(WaveformClassifier(model, frontend.settings["attention_mask"]), path, fmt, opset,
                                  int8, {"logits": ["batch", "classes"]})
        return {**io, "outputs": {"logits": "logits"}}

    def reference(wav: np.ndarray) -> np.ndarray:
        return forward([wav])[0].numpy()

    exporter = ClassifierExporter(
        backend="hf", route="torch.onnx.export (TorchScript exporter, dynamo=False) of "
        f"{type(model).__name__} from the waveform (feature encoder, Transformer, pooling, projector, classifier)",
        write_graph=write_graph, frontend=frontend, classes=classes, reference=reference)
    return export_classifier_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
