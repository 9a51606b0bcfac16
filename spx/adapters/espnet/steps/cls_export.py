"""Child step `export` (`spx export`) of the ESPnet kws_classifier: `torch.onnx.export` (dynamo=False) or TorchScript
(torch.jit.trace) of the cls model after its frontend (normalize -> Conformer encoder -> linear decoder with masked
mean pooling; log-mel features and frame counts in, logits out), with the DefaultFrontend settings for spx's numpy
frontend, the class labels and the parity check (spx.adapters.common.export.export_classifier_run).

`python -m spx.adapters.espnet.steps.cls_export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8]`
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from spx.adapters.common import child
from spx.adapters.common.export import ClassifierExporter, export_classifier_run, main, trace_features_to_logits
from spx.adapters.espnet.steps.export import _frontend, traceable_pad_masks
from spx.adapters.espnet.steps.lazy_imports import defer_unused_imports
from spx.rundir import RunDir
from spx.yamlio import read_json


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    out_dir = str(Path(out_dir).resolve())
    spec, rd = child.load_run(run_dir)
    os.chdir(rd.path)  # the ESPnet config names its feature statistics relative to the run dir
    defer_unused_imports()
    import torch
    from espnet2.bin.cls_inference import Classification

    summary = read_json(RunDir(rd.path) / "train_summary.json") or {}
    model_file = Path(summary["exported_model"])
    config = Path(summary.get("config") or model_file.parent / "config.yaml")
    cls = Classification(classification_train_config=str(config), classification_model_file=str(model_file),
                         device="cpu")
    model = cls.classification_model.eval()
    if model.classification_type != "multi-class":
        raise SystemExit("spx export: ESPnet multi-label classifiers are not supported yet")
    if model.preencoder is not None or getattr(model, "postencoder", None) is not None:
        raise SystemExit("spx export: ESPnet models with a pre/post-encoder are not supported yet")
    classes = list(cls.classification_train_args.token_list)[:-1]  # the last token is the recipe's <unk>

    class Classifier(torch.nn.Module):
        """ESPnetClassificationModel.encode after the frontend, then the decoder (masked mean pooling + linear)."""

        def __init__(self):
            super().__init__()
            self.normalize, self.encoder, self.decoder = model.normalize, model.encoder, model.decoder

        def forward(self, feats, lengths):
            if self.normalize is not None:
                feats, lengths = self.normalize(feats, lengths)
            enc, enc_lens, _ = self.encoder(feats, lengths)
            return self.decoder(enc, enc_lens)[..., : len(classes)]

    frontend = _frontend(model, spec.features.sample_rate)

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        return trace_features_to_logits(Classifier(), path, fmt, opset, int8, frontend.mel.shape[0],
                                        traceable_pad_masks(model.encoder))

    @torch.inference_mode()
    def reference(wav: np.ndarray) -> np.ndarray:
        enc, _ = model.encode(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        logits, _ = model.decoder.score(x=enc.squeeze(0), ys=None, state=None)  # what Classification.__call__ scores
        return logits.reshape(-1)[: len(classes)].float().numpy()

    @torch.inference_mode()
    def toolkit_features(wav: np.ndarray) -> np.ndarray:
        feats, _ = model._extract_feats(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        return feats[0].numpy()

    exporter = ClassifierExporter(
        backend="espnet", route="torch.onnx.export (TorchScript exporter, dynamo=False) of normalize + encoder + "
        "linear decoder", write_graph=write_graph, frontend=frontend, classes=classes, reference=reference,
        toolkit_features=toolkit_features)
    return export_classifier_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
