"""Score a collected run: one normalizer and one WER/CER computation for every backend."""
from __future__ import annotations

from typing import Any

from spx.spec import Spec


def normalizer(name: str):
    if name == "whisper_english":
        from whisper_normalizer.english import EnglishTextNormalizer

        return EnglishTextNormalizer()
    if name == "basic":
        from whisper_normalizer.basic import BasicTextNormalizer

        return BasicTextNormalizer()
    return lambda s: s


def error_counts(refs: list[str], hyps: list[str]) -> dict[str, Any]:
    import jiwer

    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        return {"wer": None, "cer": None}
    refs_, hyps_ = [p[0] for p in pairs], [p[1] if p[1].strip() else "" for p in pairs]
    w = jiwer.process_words(refs_, hyps_)
    c = jiwer.process_characters(refs_, hyps_)
    n_words = w.hits + w.substitutions + w.deletions
    n_chars = c.hits + c.substitutions + c.deletions
    return {
        "wer": (w.substitutions + w.deletions + w.insertions) / n_words,
        "cer": (c.substitutions + c.deletions + c.insertions) / n_chars,
        "words": n_words, "substitutions": w.substitutions, "deletions": w.deletions, "insertions": w.insertions,
        "chars": n_chars,
    }


def score_run(result: dict[str, Any], spec: Spec) -> dict[str, Any]:
    norm = normalizer(spec.eval.normalizer)
    hyps = result.get("hyps") or []
    metrics: dict[str, Any] = {"backend": result.get("backend"), "task": spec.task, "normalizer": spec.eval.normalizer}
    if spec.task == "asr":
        metrics.update(error_counts([norm(h["ref"]) for h in hyps], [norm(h["hyp"]) for h in hyps]))
        metrics["utterances"] = len(hyps)
    speed = result.get("speed")
    if speed:
        med = speed["median_decode_seconds"]
        metrics["rtf"] = med / speed["audio_seconds"]
        metrics["rtfx"] = speed["audio_seconds"] / med
    if result.get("train_summary"):
        metrics["train"] = result["train_summary"]
    return metrics
