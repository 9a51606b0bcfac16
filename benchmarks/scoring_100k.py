"""Benchmark: score 100k utterances (word + character S/D/I counts, corpus WER/CER) and paired bootstrap CIs.

Target: <= 5 s on the 2-core dev machine for one system (counts + 1000-resample CI). Also prints three
systems with pairwise differences, and the text normalizer on its own (the Whisper English normalizer is
regex-heavy and is timed separately; identical strings are normalized once).

    uv run python benchmarks/scoring_100k.py [--n 100000] [--samples 1000]
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from spx.bench import scoring


def synthetic(n: int, systems: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    lengths = rng.integers(4, 25, n)
    refs, hyps = [], [[] for _ in range(systems)]
    for ln in lengths:
        words = list(vocab[rng.integers(0, len(vocab), ln)])
        refs.append(" ".join(words))
        for s in range(systems):
            h = [w for w in words if rng.random() > 0.03]
            h = [vocab[rng.integers(0, len(vocab))] if rng.random() < 0.05 + 0.02 * s else w for w in h]
            if rng.random() < 0.1:
                h.append("uh")
            hyps[s].append(" ".join(h))
    return refs, hyps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    refs, hyps = synthetic(args.n, 3)
    print(f"{args.n} utterances, {sum(len(r.split()) for r in refs)} reference words, {args.samples} bootstrap samples")

    t0, p0 = time.perf_counter(), time.process_time()
    w = scoring.utterance_errors(refs, hyps[0], "word")
    c = scoring.utterance_errors(refs, hyps[0], "char")
    t1 = time.perf_counter()
    draws = scoring.bootstrap_rates(w.errors[None], w.ref_len, args.samples, seed=0)
    ci = scoring.percentile_ci(draws[0])
    t2, p2 = time.perf_counter(), time.process_time()
    print(f"one system: WER {100 * w.corpus()['rate']:.2f}% CI [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}], "
          f"CER {100 * c.corpus()['rate']:.2f}%")
    print(f"  counts (word + char) {t1 - t0:.2f} s, bootstrap CI {t2 - t1:.2f} s, total {t2 - t0:.2f} s "
          f"(target <= 5 s: {'OK' if t2 - t0 <= 5 else 'MISSED'}); CPU time {p2 - p0:.2f} s "
          f"(wall > CPU means the machine was busy)")

    t0 = time.perf_counter()
    errs = [scoring.utterance_errors(refs, h, "word") for h in hyps]
    t1 = time.perf_counter()
    E = np.vstack([e.errors for e in errs])
    draws = scoring.bootstrap_rates(E, errs[0].ref_len, args.samples, seed=0)
    rates = E.sum(1) / errs[0].ref_len.sum()
    comps = [scoring.paired_difference(rates[a], rates[b], draws[a], draws[b])
             for a, b in itertools.combinations(range(3), 2)]
    t2 = time.perf_counter()
    print(f"three systems (word counts + paired bootstrap, 3 CIs + 3 differences): counts {t1 - t0:.2f} s, "
          f"bootstrap {t2 - t1:.2f} s, total {t2 - t0:.2f} s; p-values {[round(c['p_value'], 4) for c in comps]}")

    for name in ("basic", "whisper_english"):
        k = 10_000
        t0 = time.perf_counter()
        scoring.normalize_all(refs[:k], name)
        dt = time.perf_counter() - t0
        print(f"normalizer {name}: {k} utterances {dt:.2f} s (~{dt * args.n / k:.1f} s per {args.n})")


if __name__ == "__main__":
    main()
