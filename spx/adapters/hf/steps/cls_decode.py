"""Decode step of hf ssl_classifier (child process), and its model loader `load_classifier(run_dir, device)` (the
family's INFERENCE module, for the bench's judge and `spx serve`): the run's export (AutoModelForAudioClassification;
LoRA: base + adapter, merged in memory) -> softmax of its logits over the classes, through the shared
classification protocol (spx.adapters.common.classify.classify_and_time -> hyps.jsonl, speed.json).

`python -m spx.adapters.hf.steps.cls_decode RUN_DIR`
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from spx.adapters.common import child
from spx.adapters.common.classify import Classifier, classify_and_time, result
from spx.adapters.hf.steps.models import export_info, load_audio_classifier, to_device
from spx.rundir import RunDir
from spx.yamlio import read_json


def classifier_forward(run_dir: str | Path, device: str, dtype: str = "float32"):
    """The run's exported classifier as (model, feature extractor, classes, forward): forward(list of 16 kHz float
    arrays) -> logits [B, classes] through the feature extractor as training saw it."""
    from transformers import AutoFeatureExtractor

    export = Path((read_json(RunDir(run_dir) / "train_summary.json") or {})["exported_model"])
    classes = list(export_info(export)["classes"])
    model = to_device(load_audio_classifier(str(export), classes, None), device, dtype)
    fe = AutoFeatureExtractor.from_pretrained(str(export))

    @torch.inference_mode()
    def forward(batch: list[np.ndarray]) -> torch.Tensor:
        inputs = fe(batch, sampling_rate=fe.sampling_rate, padding=True, return_tensors="pt",
                    return_attention_mask=True)
        mask = inputs.pop("attention_mask")
        if fe.return_attention_mask:  # models trained without a mask (wav2vec2-base layout) pool over the padding
            inputs["attention_mask"] = mask
        inputs = {k: v.to(device=device, dtype=getattr(torch, dtype) if v.is_floating_point() else v.dtype)
                  for k, v in inputs.items()}
        return model(**inputs).logits.float().cpu()

    return model, fe, classes, forward


def load_classifier(run_dir: str | Path, device: str, dtype: str = "float32") -> Classifier:
    _, _, classes, forward = classifier_forward(run_dir, device, dtype)

    def classify(batch: list[np.ndarray]) -> list[tuple[str, dict[str, float]]]:
        probs = torch.softmax(forward(batch), dim=-1).numpy()
        return [result(classes, p) for p in probs]

    return classify


def main(run_dir: str) -> None:
    spec, rd = child.load_run(run_dir)
    threads = child.set_threads(spec)
    device = child.pick_device(spec)
    dtype = child.precision_dtype(spec, device)
    print(f"spx: classifying with {rd / 'checkpoints' / 'export'} ({device}, {dtype}, {threads} threads)", flush=True)
    speed = classify_and_time(rd, spec, load_classifier(rd.path, device, dtype), device, dtype)
    print(f"spx: classified {speed['utterances']} clips, {speed['audio_seconds']:.1f} s audio, median "
          f"{speed['median_decode_seconds']:.3f} s", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    child.main_guard(main)
    sys.exit(0)
