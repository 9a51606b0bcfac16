"""Classification scoring (keyword spotting, audio classification), one way for every backend: accuracy, macro-F1,
per-class precision/recall/F1, the confusion matrix, and paired bootstrap CIs on accuracy (the resampling of
spx.bench.scoring, so classification and ASR intervals are drawn the same way).

The counts are plain numpy (a confusion matrix is one scatter-add; tests check every figure against
scikit-learn's precision_recall_fscore_support and confusion_matrix). Nothing here imports torch or a toolkit.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from spx.bench import scoring

OTHER = "(other)"  # confusion-matrix column of predictions outside the test set's labels (always errors)


def scored_rows(hyps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with a reference label (a test row without one cannot be scored; it is left out and counted, as
    ASR leaves out utterances with an empty reference)."""
    return [h for h in hyps if isinstance(h.get("ref_label"), str) and h["ref_label"]]


def _labels_of(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(reference labels, predicted labels) of scored rows; a missing prediction is the empty string."""
    return [h["ref_label"] for h in rows], [h["label"] if isinstance(h.get("label"), str) else "" for h in rows]


def confusion(refs: Sequence[str], preds: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts (len(labels), len(labels) + 1): row = reference, column = prediction; the last column counts
    predictions outside `labels` (unknown labels, no prediction)."""
    index = {lab: i for i, lab in enumerate(labels)}
    k = len(labels)
    m = np.zeros((k, k + 1), dtype=np.int64)
    np.add.at(m, (np.array([index[r] for r in refs], dtype=np.int64),
                  np.array([index.get(p, k) for p in preds], dtype=np.int64)), 1)
    return m


def per_class(matrix: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Precision, recall, F1 and support of each label from the confusion counts (0 where undefined, as
    scikit-learn's zero_division=0)."""
    k = len(labels)
    tp = np.diag(matrix[:, :k]).astype(np.float64)
    predicted = matrix[:, :k].sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {lab: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                  "support": int(support[i])} for i, lab in enumerate(labels)}


def score_classification(hyps: list[dict[str, Any]], spec: Any = None) -> dict[str, Any]:
    """The classification task's metrics (spx.registry.TASKS) over a run's hyps.jsonl rows.

    The classes are the test rows' reference labels; a predicted label outside them (or none) is an error and
    lands in the confusion matrix's OTHER column. Macro-F1 is the unweighted mean over those classes. Rows without
    a reference label are left out (utterances counts every row, scored_utterances the scored ones)."""
    rows = scored_rows(hyps)
    if not rows:
        return {"accuracy": None, "macro_f1": None, "utterances": len(hyps), "scored_utterances": 0}
    refs, preds = _labels_of(rows)
    labels = sorted(set(refs))
    matrix = confusion(refs, preds, labels)
    classes = per_class(matrix, labels)
    correct = int(np.trace(matrix[:, :len(labels)]))
    test_sets: dict[str, dict[str, Any]] = {}
    for h, r, p in zip(rows, refs, preds):
        ts = test_sets.setdefault(h.get("test_set") or "test", {"correct": 0, "utterances": 0})
        ts["correct"] += int(r == p)
        ts["utterances"] += 1
    for ts in test_sets.values():
        ts["accuracy"] = ts["correct"] / ts["utterances"]
    unknown = int(matrix[:, -1].sum())
    return {
        "accuracy": correct / len(refs), "macro_f1": float(np.mean([c["f1"] for c in classes.values()])),
        "correct": correct, "errors": len(refs) - correct, "unknown_predictions": unknown, "utterances": len(hyps),
        "scored_utterances": len(rows),
        "classes": len(labels), "per_class": classes,
        "confusion": {"labels": labels + ([OTHER] if unknown else []),
                      "matrix": (matrix if unknown else matrix[:, :len(labels)]).tolist()},
        "test_sets": test_sets,
    }


def correct_vector(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """1.0 where a scored row's prediction equals its reference label, else 0.0 (the per-row statistic of
    accuracy)."""
    refs, preds = _labels_of(rows)
    return np.array([float(r == p) for r, p in zip(refs, preds)])


def bootstrap_accuracy(correct: np.ndarray, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """Paired bootstrap of accuracy: correct is (systems, n), column j the same test row for every system;
    returns (systems, samples) accuracies on the same resamples as scoring.bootstrap_rates/bootstrap_means."""
    return scoring.bootstrap_means(correct, samples, seed)

