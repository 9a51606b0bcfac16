"""Child step `decode` of the SpeechBrain kws_classifier, and its model loader `load_classifier(run_dir, device)`
(the family's INFERENCE module): the run's checkpoints/export (ECAPA-TDNN + Classifier weights, config.yaml,
classes.txt) -> softmax of the scaled cosines (the margin loss's scale) over the classes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spx.adapters.common import child
from spx.adapters.common.classify import Classifier, classify_and_time, result
from spx.adapters.speechbrain.steps.cls_model import build_modules, forward_cosines, load_export, read_config
from spx.rundir import RunDir
from spx.yamlio import read_json


def load_classifier(run_dir: str | Path, device: str) -> Classifier:
    rd = RunDir(run_dir)
    export = Path((read_json(rd / "train_summary.json") or {})["exported_model"])
    cfg = read_config(export / "config.yaml")
    classes = (export / "classes.txt").read_text(encoding="utf-8").split()
    mods = torch.nn.ModuleDict(build_modules(cfg))
    load_export(mods, export, load_head=True)
    mods.to(device).eval()
    scale = float(cfg["loss"]["scale"])

    @torch.inference_mode()
    def classify(batch: list[np.ndarray]) -> list[tuple[str, dict[str, float]]]:
        lengths = torch.tensor([len(a) for a in batch], dtype=torch.float32)
        wavs = torch.zeros(len(batch), int(lengths.max()))
        for i, a in enumerate(batch):
            wavs[i, : len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
        cos = forward_cosines(mods, wavs.to(device), (lengths / lengths.max()).to(device))
        probs = torch.softmax(scale * cos.float(), dim=-1).cpu().numpy()
        return [result(classes, p) for p in probs]

    return classify


def main(run_dir: str) -> None:
    spec, rd = child.load_run(run_dir)
    child.set_threads(spec)
    device = child.pick_device(spec)
    classify_and_time(rd, spec, load_classifier(rd.path, device), device, "float32")


if __name__ == "__main__":
    child.main_guard(main)
