"""Child-process helpers of task: classification, shared by every backend: the decoding/timing protocol (the
classification twin of child.decode_and_time) and turning class scores into hyps rows."""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any, Callable

import numpy as np

from spx.adapters.common.child import load_audio, progress, test_utterances
from spx.rundir import RunDir
from spx.spec import Spec
from spx.yamlio import atomic_write_json

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
    """The decoding protocol of child.decode_and_time for a classifier: audio read before the clock, warm-up
    batches, the test set classified `eval.speed_repeats` times in batches of `decoding.batch_size` (sorted by
    duration); the clock covers classify only (features + model + softmax). Labels come from the first repeat.
    hyps.jsonl rows: {id, test_set, ref_label, label, scores (top classification.top_k), duration, decode_time}."""
    sr = spec.features.sample_rate
    items = test_utterances(spec)
    items.sort(key=lambda it: it[1].duration)
    audio = [load_audio(u, sr) for _, u in items]
    bs = spec.decoding.batch_size
    batches = [list(range(i, min(i + bs, len(items)))) for i in range(0, len(items), bs)]

    def sync() -> None:
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    for b in batches[: spec.eval.warmup_batches]:
        classify([audio[i] for i in b])
    sync()
    out: list[tuple[str, dict[str, float]]] = [("", {})] * len(items)
    per_utt_time = [0.0] * len(items)
    totals = []
    for repeat in range(spec.eval.speed_repeats):
        total = 0.0
        for b in batches:
            t0 = time.perf_counter()
            res = classify([audio[i] for i in b])
            sync()
            dt = time.perf_counter() - t0
            total += dt
            if len(res) != len(b):
                raise RuntimeError(f"the classifier returned {len(res)} results for {len(b)} inputs")
            if repeat == 0:
                for i, r in zip(b, res):
                    out[i] = r
                    per_utt_time[i] = dt * items[i][1].duration / sum(items[j][1].duration for j in b)
        totals.append(total)
        progress(phase="decode", repeat=repeat + 1, of=spec.eval.speed_repeats, seconds=round(total, 3))
    k = spec.classification.top_k
    rows = [{"id": u.id, "test_set": name, "ref_label": u.label, "label": label, "scores": top_k(scores, k),
             "duration": u.duration, "decode_time": t}
            for (name, u), (label, scores), t in zip(items, out, per_utt_time)]
    with open(run_dir / "hyps.jsonl.tmp", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(run_dir / "hyps.jsonl.tmp", run_dir / "hyps.jsonl")
    import torch

    speed = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "dtype": dtype,
        "batch_size": bs,
        "threads": torch.get_num_threads(),
        "warmup_batches": min(spec.eval.warmup_batches, len(batches)),
        "repeats": spec.eval.speed_repeats,
        "audio_seconds": float(sum(u.duration for _, u in items)),
        "decode_seconds": totals,
        "median_decode_seconds": statistics.median(totals),
        "clock": "features + model forward + softmax on audio already in memory",
        "utterances": len(items),
    }
    atomic_write_json(run_dir / "speed.json", speed)
    return speed


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
