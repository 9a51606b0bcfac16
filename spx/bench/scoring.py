"""Scoring, one way for every backend: one text normalizer, corpus-level WER/CER with S/D/I counts,
paired bootstrap confidence intervals, and RTF/RTFx from the shared decoding protocol (speed.json).

Nothing here imports torch or a toolkit. Edit distances come from rapidfuzz, the Levenshtein engine
jiwer itself runs on (tests check the counts against jiwer), called directly because it is ~10x faster.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from spx.registry import TASKS

CI_LEVEL = 0.95


# ---------------------------------------------------------------- normalizer
def normalizer(name: str) -> Callable[[str], str]:
    """The text normalizer applied to references and hypotheses alike (spx.bench.normalize: whisper_english is
    Whisper's English normalizer on a fast path with the package's exact output)."""
    from spx.bench import normalize

    return normalize.normalizer(name)


def normalizer_info(name: str) -> dict[str, Any]:
    """What the report discloses about the normalizer: its name, implementation and package version."""
    from spx.bench import normalize

    normalizer(name)  # a clear error for an unknown name
    impl = {"whisper_english": "whisper_normalizer.english.EnglishTextNormalizer",
            "basic": "whisper_normalizer.basic.BasicTextNormalizer",
            "none": "identity (whitespace-split only)"}[name]
    version = normalize.installed_version() if name != "none" else None
    info = {"name": name, "implementation": impl, "package": "whisper-normalizer" if name != "none" else None,
            "version": version}
    if name == "whisper_english":
        info["fast_path"] = normalize.fast_path_available()  # spx.bench.normalize, same output as the package
    return info


def normalize_all(texts: Sequence[str | None], name: str, processes: int | None = None) -> list[str]:
    """Normalize many strings in order, whitespace collapsed; identical strings (references shared by the cells
    of a bench, hypotheses equal to their reference) are normalized once per process; large inputs are split
    across processes (spx.bench.normalize.normalize_all)."""
    from spx.bench import normalize

    return normalize.normalize_all(texts, name, processes=processes)


def normalize_pairs(refs: Sequence[str | None], hyps: Sequence[str | None], name: str,
                    processes: int | None = None) -> tuple[list[str], list[str]]:
    """normalize_all of references and hypotheses in one call (one set of processes for both)."""
    both = normalize_all([*refs, *hyps], name, processes=processes)
    return both[:len(refs)], both[len(refs):]


# ---------------------------------------------------------------- error counts
@dataclass
class UttErrors:
    """Per-utterance edit operations, as arrays of length n_utterances."""

    sub: np.ndarray
    dele: np.ndarray
    ins: np.ndarray
    ref_len: np.ndarray

    @property
    def errors(self) -> np.ndarray:
        return self.sub + self.dele + self.ins

    def corpus(self) -> dict[str, Any]:
        """Corpus-level rate: sum of errors / sum of reference units (not a mean of per-utterance rates)."""
        n = int(self.ref_len.sum())
        e = int(self.errors.sum())
        return {"rate": e / n if n else None, "errors": e, "ref_units": n, "substitutions": int(self.sub.sum()),
                "deletions": int(self.dele.sum()), "insertions": int(self.ins.sum())}


def utterance_errors(refs: Sequence[str], hyps: Sequence[str], unit: str = "word") -> UttErrors:
    """Minimum edit-distance S/D/I counts per utterance on normalized text (unit: 'word' or 'char').

    For CER, spaces between words count as characters, as in jiwer's process_characters."""
    from rapidfuzz.distance import Levenshtein

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    n = len(refs)
    sub = np.zeros(n, np.int32)
    dele = np.zeros(n, np.int32)
    ins = np.zeros(n, np.int32)
    ref_len = np.zeros(n, np.int32)
    editops = Levenshtein.editops
    for i, (r, h) in enumerate(zip(refs, hyps)):
        if unit == "word":
            r_seq, h_seq = r.split(), h.split()
        else:
            r_seq, h_seq = r, h
        ref_len[i] = len(r_seq)
        if r_seq == h_seq:
            continue
        s = d = k = 0
        for tag, _, _ in editops(r_seq, h_seq).as_list():
            if tag == "replace":
                s += 1
            elif tag == "delete":
                d += 1
            else:
                k += 1
        sub[i], dele[i], ins[i] = s, d, k
    return UttErrors(sub, dele, ins, ref_len)


def align(ref: str, hyp: str) -> list[tuple[str, str, str]]:
    """Word alignment of a normalized reference and hypothesis: (ref_word|'', hyp_word|'', op) with op in
    C (correct), S, D, I."""
    from rapidfuzz.distance import Levenshtein

    r, h = ref.split(), hyp.split()
    out: list[tuple[str, str, str]] = []
    for tag, r0, r1, h0, h1 in Levenshtein.opcodes(r, h).as_list():
        if tag == "equal":
            out.extend((r[i], h[h0 + i - r0], "C") for i in range(r0, r1))
        elif tag == "replace":
            out.extend((r[r0 + j], h[h0 + j], "S") for j in range(r1 - r0))
        elif tag == "delete":
            out.extend((r[i], "", "D") for i in range(r0, r1))
        else:
            out.extend(("", h[j], "I") for j in range(h0, h1))
    return out


def word_distance(a: str, b: str) -> int:
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(a.split(), b.split())


def error_counts(refs: list[str], hyps: list[str]) -> dict[str, Any]:
    """Corpus WER and CER of already-normalized texts (utterances with an empty reference are left out)."""
    keep = [i for i, r in enumerate(refs) if r.strip()]
    if not keep:
        return {"wer": None, "cer": None}
    refs_ = [refs[i] for i in keep]
    hyps_ = [hyps[i] for i in keep]
    w = utterance_errors(refs_, hyps_, "word").corpus()
    c = utterance_errors(refs_, hyps_, "char").corpus()
    return {
        "wer": w["rate"], "cer": c["rate"],
        "words": w["ref_units"], "substitutions": w["substitutions"], "deletions": w["deletions"],
        "insertions": w["insertions"], "chars": c["ref_units"], "char_errors": c["errors"],
    }


# ---------------------------------------------------------------- bootstrap
def _resample_indices(rng: np.random.Generator, n: int, samples: int, max_cells: int = 8_000_000):
    """Yield blocks of bootstrap resamples: arrays (block, n) of utterance indices drawn with replacement."""
    block = max(1, min(samples, max_cells // max(n, 1)))
    done = 0
    while done < samples:
        b = min(block, samples - done)
        yield rng.integers(0, n, size=(b, n), dtype=np.int32 if n < 2**31 else np.int64)
        done += b


def bootstrap_rates(errors: np.ndarray, ref_len: np.ndarray, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """Paired bootstrap over utterances: resample utterance indices (the same draw for every system) and
    compute each system's corpus error rate (Σerrors/Σref units) on every resample.

    errors: (systems, n) per-utterance error counts; ref_len: (n,) reference lengths (same references).
    Returns (systems, samples) error rates."""
    errors = np.atleast_2d(np.asarray(errors, dtype=np.int64))
    ref_len = np.asarray(ref_len, dtype=np.int64)
    k, n = errors.shape
    if ref_len.shape != (n,):
        raise ValueError(f"ref_len has shape {ref_len.shape}, expected ({n},)")
    if n == 0:
        raise ValueError("no utterances to bootstrap")
    if errors.min(initial=0) < 0 or ref_len.min(initial=0) < 0:
        raise ValueError("error counts and reference lengths must be >= 0")
    rows = list(errors) + [ref_len]
    # Two non-negative counts share one uint64 (hi << 32 | lo) so one gather sums both; exact as long as a
    # resample's sum (at most n * max value) stays below 2**32, else each row is gathered on its own.
    packable = n * max(int(r.max(initial=0)) for r in rows) < 2**32
    groups = [rows[i:i + 2] for i in range(0, len(rows), 2)] if packable else [[r] for r in rows]
    packed = [(g[0].astype(np.uint64) << np.uint64(32)) | g[1].astype(np.uint64) if len(g) == 2 else g[0]
              for g in groups]
    rng = np.random.default_rng(seed)
    sums = np.empty((len(rows), samples), dtype=np.float64)
    pos = 0
    for idx in _resample_indices(rng, n, samples):
        b = idx.shape[0]
        r = 0
        for g, values in zip(groups, packed):
            total = np.take(values, idx).sum(axis=1)
            if len(g) == 2:
                sums[r, pos:pos + b] = total >> np.uint64(32)
                sums[r + 1, pos:pos + b] = total & np.uint64(0xFFFFFFFF)
            else:
                sums[r, pos:pos + b] = total
            r += len(g)
        pos += b
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[:k] / sums[k][None, :]


def bootstrap_means(values: np.ndarray, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """Paired bootstrap of per-utterance scores (MOS proxies, MCD, ...): the same resamples of utterance
    indices as bootstrap_rates (same seed, same draws), and each system's mean score on every resample.

    values: (systems, n) scores, column j the same utterance for every system. Returns (systems, samples)."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    k, n = values.shape
    if n == 0:
        raise ValueError("no utterances to bootstrap")
    if not np.isfinite(values).all():
        raise ValueError("scores must be finite: leave out the utterances a metric could not score")
    rng = np.random.default_rng(seed)
    means = np.empty((k, samples), dtype=np.float64)
    pos = 0
    for idx in _resample_indices(rng, n, samples):
        b = idx.shape[0]
        for s in range(k):
            means[s, pos:pos + b] = np.take(values[s], idx).mean(axis=1)
        pos += b
    return means


def percentile_ci(draws: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    a = (1 - level) / 2
    lo, hi = np.nanpercentile(draws, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def paired_difference(rate_a: float, rate_b: float, draws_a: np.ndarray, draws_b: np.ndarray,
                      level: float = CI_LEVEL) -> dict[str, Any]:
    """statistic(a) - statistic(b) (a WER, a mean MOS) with a percentile CI and a two-sided bootstrap p-value.

    p-value: the bootstrap distribution of the difference, shifted to mean 0 (the null hypothesis of equal
    statistics), and the fraction of resamples at least as far from 0 as the observed difference
    (Efron & Tibshirani 1993, sec. 16.4), with the +1 correction so it is never exactly 0."""
    d_obs = rate_a - rate_b
    d = draws_a - draws_b
    d = d[~np.isnan(d)]
    centered = d - d.mean()
    p = (np.count_nonzero(np.abs(centered) >= abs(d_obs) - 1e-12) + 1) / (d.size + 1)
    lo, hi = percentile_ci(d, level)
    return {"diff": d_obs, "ci": [lo, hi], "p_value": float(min(1.0, p)), "samples": int(d.size)}


# ---------------------------------------------------------------- speed
def speed_summary(speed: dict[str, Any]) -> dict[str, Any]:
    """RTF = median decode seconds / audio seconds; RTFx = audio seconds / median decode seconds.

    The spread is the range over repeats (RTFx from the slowest and the fastest repeat)."""
    secs = [float(s) for s in speed.get("decode_seconds") or []]
    audio = float(speed.get("audio_seconds") or 0.0)
    if not secs or audio <= 0 or min(secs) <= 0:
        raise ValueError(f"speed.json needs decode_seconds (positive) and audio_seconds > 0, got {secs!r}, {audio!r}")
    med = statistics.median(secs)
    return {
        "audio_seconds": audio,
        "decode_seconds": secs,
        "median_decode_seconds": med,
        "rtf": med / audio,
        "rtfx": audio / med,
        "rtfx_min": audio / max(secs),
        "rtfx_max": audio / min(secs),
        "spread_pct": 100.0 * (max(secs) - min(secs)) / med,
        **{k: speed.get(k) for k in ("device", "dtype", "batch_size", "threads", "warmup_batches", "repeats",
                                     "clock", "utterances")},
    }


# ---------------------------------------------------------------- one run
def score_hyps(hyps: list[dict[str, Any]], norm_name: str) -> dict[str, Any]:
    """Corpus WER/CER of a run's hyps.jsonl rows with the named normalizer."""
    rows = [h for h in hyps if (h.get("ref") or "").strip()]
    refs, out = normalize_pairs([h.get("ref") for h in rows], [h.get("hyp") for h in rows], norm_name)
    keep = [i for i, r in enumerate(refs) if r]
    m = error_counts([refs[i] for i in keep], [out[i] for i in keep])
    m["utterances"] = len(hyps)
    m["scored_utterances"] = len(keep)
    return m


def score_asr(hyps: list[dict[str, Any]], spec) -> dict[str, Any]:
    """The asr task's metrics (spx.registry.TASKS)."""
    return score_hyps(hyps, spec.eval.normalizer)


def score_run(result: dict[str, Any], spec) -> dict[str, Any]:
    """metrics.json of one run (called by spx.runner.finalize_run after collect)."""
    hyps = result.get("hyps") or []
    metrics: dict[str, Any] = {"backend": result.get("backend"), "task": spec.task,
                               "normalizer": spec.eval.normalizer,
                               "normalizer_info": normalizer_info(spec.eval.normalizer)}
    scorer = TASKS[spec.task].score()
    if scorer is not None:
        metrics.update(scorer(hyps, spec))
    speed = result.get("speed")
    if speed:
        s = speed_summary(speed)
        metrics.update(rtf=s["rtf"], rtfx=s["rtfx"], rtfx_min=s["rtfx_min"], rtfx_max=s["rtfx_max"])
    if result.get("train_summary"):
        metrics["train"] = result["train_summary"]
    return metrics
