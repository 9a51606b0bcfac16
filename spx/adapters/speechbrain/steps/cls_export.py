"""Child step `export` (`spx export`) of the SpeechBrain kws_classifier: ONNX (torch.onnx.export, dynamo=False) or
TorchScript (torch.jit.trace) of the classifier after the feature extractor (InputNormalization -> ECAPA-TDNN ->
Classifier; log-mel features and frame counts in, the cosine logits out; the server's softmax applies the margin
loss's scale as the decode step does), with the Fbank settings for spx's numpy frontend, the class labels and the
parity check (spx.adapters.common.export.export_classifier_run).

`python -m spx.adapters.speechbrain.steps.cls_export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8]`
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock  # patch.object: swap a toolkit function while the graph is traced, restore after

import numpy as np
import torch

from spx.adapters.common import child
from spx.adapters.common.export import ClassifierExporter, export_classifier_run, main, trace_features_to_logits
from spx.adapters.speechbrain.steps.cls_model import build_modules, forward_cosines, load_export, read_config
from spx.adapters.speechbrain.steps.export import _frontend, broadcast_length_to_mask
from spx.rundir import RunDir
from spx.yamlio import read_json


def traceable_pooling_masks():
    """ECAPA's attentive pooling builds its mask with length_to_mask, which expands to len(lengths) rows (a Python int
    the tracer freezes to the example's batch); during export it gets a broadcast mask with the same values."""
    from speechbrain.lobes.models import ECAPA_TDNN as ecapa

    return mock.patch.object(ecapa, "length_to_mask", broadcast_length_to_mask)


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    spec, rd = child.load_run(run_dir)
    export_dir = Path((read_json(RunDir(rd.path) / "train_summary.json") or {})["exported_model"])
    cfg = read_config(export_dir / "config.yaml")
    classes = (export_dir / "classes.txt").read_text(encoding="utf-8").split()
    mods = torch.nn.ModuleDict(build_modules(cfg))
    load_export(mods, export_dir, load_head=True)
    mods.eval()
    frontend = _frontend(mods["compute_features"], spec.features.sample_rate)

    class Classifier(torch.nn.Module):
        """forward_cosines after the feature extractor, lengths in frames instead of SpeechBrain's relative ones."""

        def __init__(self):
            super().__init__()
            self.norm, self.embed, self.head = mods["mean_var_norm"], mods["embedding_model"], mods["classifier"]

        def forward(self, feats, lengths):
            rel = lengths.to(feats.dtype) / feats.shape[1]
            x = self.norm(feats, lengths=rel)
            return self.head(self.embed(x, rel)).squeeze(1)

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        return trace_features_to_logits(Classifier(), path, fmt, opset, int8, frontend.mel.shape[0],
                                        traceable_pooling_masks())

    @torch.no_grad()
    def reference(wav: np.ndarray) -> np.ndarray:
        return forward_cosines(mods, torch.from_numpy(wav)[None], torch.ones(1))[0].float().numpy()

    @torch.no_grad()
    def toolkit_features(wav: np.ndarray) -> np.ndarray:
        return mods["compute_features"](torch.from_numpy(wav)[None])[0].numpy()

    exporter = ClassifierExporter(
        backend="speechbrain", route="torch.onnx.export (TorchScript exporter, dynamo=False) of InputNormalization + "
        "ECAPA_TDNN + Classifier", write_graph=write_graph, frontend=frontend, classes=classes, reference=reference,
        logit_scale=float(cfg["loss"]["scale"]), toolkit_features=toolkit_features)
    return export_classifier_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
