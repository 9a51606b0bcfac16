"""Child step `decode` of the NeMo kws_classifier, and its model loader `load_classifier(run_dir, device)` (the
family's INFERENCE module): the run's exported .nemo (EncDecClassificationModel) -> softmax of its logits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spx.adapters.common import child
from spx.adapters.common.classify import Classifier, classify_and_time, result
from spx.rundir import RunDir
from spx.yamlio import read_json


def load_classifier(run_dir: str | Path, device: str) -> Classifier:
    from nemo.collections.asr.models import EncDecClassificationModel

    exported = (read_json(RunDir(run_dir) / "train_summary.json") or {})["exported_model"]
    model = EncDecClassificationModel.restore_from(exported, map_location=device)
    model.eval()
    classes = list(model.cfg.labels)

    @torch.inference_mode()
    def classify(batch: list[np.ndarray]) -> list[tuple[str, dict[str, float]]]:
        lengths = torch.tensor([len(a) for a in batch], dtype=torch.long)
        wavs = torch.zeros(len(batch), int(lengths.max()))
        for i, a in enumerate(batch):
            wavs[i, : len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
        logits = model.forward(input_signal=wavs.to(device), input_signal_length=lengths.to(device))
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return [result(classes, p) for p in probs]

    return classify


def main(run_dir: str) -> None:
    spec, rd = child.load_run(run_dir)
    child.set_threads(spec)
    device = child.pick_device(spec)
    classify_and_time(rd, spec, load_classifier(rd.path, device), device, "float32")


if __name__ == "__main__":
    child.main_guard(main)
