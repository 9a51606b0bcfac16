"""Child-process helpers of task: classification, shared by every backend: the decoding/timing protocol (the
classification twin of child.decode_and_time) and turning class scores into hyps rows."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from spx.adapters.common.child import time_batches, write_hyps, write_speed
from spx.rundir import RunDir
from spx.spec import Spec

# a classifier: a batch of 16 kHz float waveforms -> per clip (predicted label, {label: probability} for every class)
Classifier = Callable[[list[np.ndarray]], list[tuple[str, dict[str, float]]]]


def result(classes: list[str], probs: Any) -> tuple[str, dict[str, float]]:
    """One clip's (argmax label, {label: prob}) from a probability vector in class order."""
    p = [float(x) for x in probs]
    if len(p) != len(classes):
        raise RuntimeError(f"the model gave {len(p)} scores for {len(classes)} classes")
    best = max(range(len(p)), key=p.__getitem__)
    return classes[best], dict(zip(classes, p))


def top_k(scores: dict[str, float], k: int) -> dict[str, float]:
    return dict(sorted(scores.items(), key=lambda kv: -kv[1])[:k])


def classify_and_time(run_dir: RunDir, spec: Spec, classify: Classifier, device: str, dtype: str) -> dict[str, Any]:
    """A classifier through the shared decoding protocol (child.time_batches): the clock covers classify only
    (features + model + softmax); labels come from the first repeat.
    hyps.jsonl rows: {id, test_set, ref_label, label, scores (top classification.top_k), duration, decode_time}."""
    items, out, per_utt_time, totals, n_batches = time_batches(spec, classify, device)
    k = spec.classification.top_k
    rows = [{"id": u.id, "test_set": name, "ref_label": u.label, "label": label, "scores": top_k(scores, k),
             "duration": u.duration, "decode_time": t}
            for (name, u), (label, scores), t in zip(items, out, per_utt_time)]
    write_hyps(run_dir, spec, rows)
    return write_speed(run_dir, spec, device, dtype, items, totals, n_batches,
                       "features + model forward + softmax on audio already in memory")


def lr_lambda(spec: Spec, total_steps: int) -> Callable[[int], float]:
    """The spec's training.scheduler as a factor of optimizer.lr per optimizer step (torch LambdaLR), for the
    backends whose classifier loop spx drives (SpeechBrain's Brain): warmup to lr, then cosine to min_lr, Noam
    (lr / sqrt(step / warmup)), constant, or linear to min_lr."""
    import math

    s, lr = spec.training.scheduler, spec.training.optimizer.lr
    warm, floor = s.warmup_steps, s.min_lr / lr

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if s.name == "noam":
            return math.sqrt(max(warm, 1) / max(step, 1)) if warm else 1.0
        if s.name == "constant":
            return 1.0
        span = max(total_steps - warm, 1)
        done = min(max(step - warm, 0) / span, 1.0)
        if s.name == "linear":
            return 1.0 - done * (1.0 - floor)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done))

    return factor
