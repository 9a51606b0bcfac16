"""Child step `decode` of the ESPnet kws_classifier, and its model loader `load_classifier(run_dir, device)` (the
family's INFERENCE module): ESPnet's own `espnet2.bin.cls_inference.Classification` on the run's exported model and
config.yaml. Classification scores one clip per call (ESPnet's model.score asserts batch size 1), so a batch is
classified clip by clip."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from spx.adapters.common import child
from spx.adapters.common.classify import Classifier, classify_and_time, result
from spx.adapters.espnet.steps.lazy_imports import defer_unused_imports
from spx.rundir import RunDir
from spx.yamlio import read_json


def load_classifier(run_dir: str | Path, device: str) -> Classifier:
    defer_unused_imports()
    from espnet2.bin.cls_inference import Classification

    summary = read_json(RunDir(run_dir) / "train_summary.json") or {}
    model = Path(summary["exported_model"])
    config = Path(summary.get("config") or model.parent / "config.yaml")
    cls = Classification(classification_train_config=str(config), classification_model_file=str(model),
                         device=device)
    classes = list(cls.classification_train_args.token_list)[:-1]  # the last token is the recipe's <unk>

    def classify(batch: list[np.ndarray]) -> list[tuple[str, dict[str, float]]]:
        out = []
        for audio in batch:
            _, scores, _ = cls(np.asarray(audio, dtype=np.float32))
            out.append(result(classes, scores.float().cpu().numpy()))
        return out

    return classify


def main(run_dir: str) -> None:
    spec, rd = child.load_run(run_dir)
    child.set_threads(spec)
    device = child.pick_device(spec)
    classify_and_time(rd, spec, load_classifier(rd.path, device), device, "float32")


if __name__ == "__main__":
    child.main_guard(main)
