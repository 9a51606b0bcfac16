"""Child step `export` (`spx export`) of the NeMo kws_classifier: the run's EncDecClassificationModel (MatchboxNet)
-> ONNX or TorchScript through NeMo's own route, `Exportable.export` (encoder + classification decoder in one graph,
log-mel features in, logits out), with the preprocessor's settings for spx's numpy frontend, the class labels and
the parity check (spx.adapters.common.export.export_classifier_run).

`python -m spx.adapters.nemo.steps.cls_export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8] [--opset N]`
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from spx.adapters.common import child
from spx.adapters.common.export import ClassifierExporter, export_classifier_run, main
from spx.adapters.nemo.steps.export import _frontend


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    import torch
    from nemo.collections.asr.models import EncDecClassificationModel

    spec, rd = child.load_run(run_dir)
    summary = json.loads((rd / "train_summary.json").read_text())

    def restore():
        m = EncDecClassificationModel.restore_from(summary["exported_model"], map_location="cpu")
        m.preprocessor.featurizer.dither = 0.0  # the frontend is deterministic in an export
        m.preprocessor.featurizer.pad_to = 0
        return m.eval()

    model = restore()

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        net = model
        if int8:  # TorchScript int8: PyTorch dynamic quantization of the Linear layers, on a copy of its own
            net = torch.ao.quantization.quantize_dynamic(restore(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        net.export(str(path), onnx_opset_version=opset, check_trace=False)
        # MatchboxNet's encoder output does not depend on the lengths, so NeMo's graph takes the features only
        return {"inputs": {"features": "audio_signal", "lengths": None},
                "input_shapes": {"audio_signal": ["batch", "n_mels", "frames"]},
                "outputs": {"logits": "logits"}, "output_order": ["logits"],
                "output_shapes": {"logits": ["batch", "classes"]}}

    @torch.inference_mode()
    def reference(wav: np.ndarray) -> np.ndarray:
        logits = model.forward(input_signal=torch.from_numpy(wav)[None], input_signal_length=torch.tensor([len(wav)]))
        return logits[0].float().numpy()

    @torch.inference_mode()
    def toolkit_features(wav: np.ndarray) -> np.ndarray:
        feats, _ = model.preprocessor(input_signal=torch.from_numpy(wav)[None], length=torch.tensor([len(wav)]))
        return feats[0].T.numpy()

    exporter = ClassifierExporter(
        backend="nemo", route="NeMo Exportable.export (MatchboxNet encoder + classification decoder)",
        write_graph=write_graph, frontend=_frontend(model), classes=list(model.cfg.labels), reference=reference,
        toolkit_features=toolkit_features)
    return export_classifier_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
