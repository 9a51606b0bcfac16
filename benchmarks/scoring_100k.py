"""Benchmark: score 100k utterances, text normalization included (Whisper English normalizer, word + character
S/D/I counts, corpus WER/CER and a 1000-resample paired bootstrap CI), as `spx bench` scores one cell.

Target: <= 5 s on the 2-core dev machine for the whole scoring. Prints:
- before: whisper_normalizer's own EnglishTextNormalizer (timed on 10k strings, scaled to the 200k references
  and hypotheses) plus the counts and bootstrap;
- after: the whole scoring with spx's normalizer (spx.bench.normalize), in 1 and 2 processes, cold (nothing
  normalized yet: a bench's first cell) and with the references already normalized (its other cells);
- counts and bootstrap alone, three systems with pairwise differences, and the normalizers on their own,
  including digit-heavy text (every word holds digits), the fast path's worst case.

The text is English-like: Zipf-distributed common words, contractions, spelled-out and written numbers, money,
capitals and punctuation; hypotheses have 3% deleted, 5% substituted words and an inserted filler in 10% of
utterances, and are written like the references, so a correct hypothesis is the same string (~30% of them).

    uv run python benchmarks/scoring_100k.py [--n 100000] [--samples 1000]
"""
from __future__ import annotations

import argparse
import itertools
import os
import resource
import time

import numpy as np

from spx.bench import normalize, scoring

WORDS = ("the of and to a in is it you that he was for on are with as I his they be at one have this from or had "
         "by not word but what some we can out other were all there when up use your how said an each she which do "
         "their time if will way about many then them write would like so these her long make thing see him two has "
         "look more day could go come did number sound no most people my over know water than call first who may "
         "down side been now find any new work part take get place made live where after back little only round man "
         "year came show every good me give our under name very through just form sentence great think say help "
         "low line differ turn cause much mean before move right boy old too same tell does set three want air well "
         "also play small end put home read hand port large spell add even land here must big high such follow act "
         "why ask men change went light kind off need house picture try us again animal point mother world near "
         "build self earth father head stand own page should country found answer school grow study still learn "
         "plant cover food sun four between state keep eye never last let thought city tree cross farm hard start "
         "might story saw far sea draw left late run don't while press close night real life few north open seem "
         "together next white children begin got walk example ease paper group always music those both mark often "
         "letter until mile river car feet care second book carry took science eat room friend began idea fish "
         "mountain stop once base hear horse cut sure watch colour face wood main enough plain girl usual young "
         "ready above ever red list though feel talk bird soon body dog family direct pose leave song measure door "
         "product black short numeral class wind question happen complete ship area half rock order fire south "
         "problem piece told knew pass since top whole king space heard best hour better true during hundred five "
         "remember step early hold west ground interest reach fast verb sing listen six table travel less morning "
         "ten simple several vowel toward war lay against pattern slow centre love person money serve appear road "
         "map rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark machine "
         "it's I'm can't won't that's there's we're they're didn't doesn't isn't you're I've I'd Mr Mrs Dr "
         "twenty thirty fifty million thousand third").split()
NUMBERS = ["1990", "2024", "$5", "$20 million", "10%", "3.5", "1,000", "21st", "twenty one", "three hundred",
           "nineteen ninety", "one and a half", "seven", "eleven", "0.5", "£40", "2nd", "100"]
FILLERS = ("uh", "um", "the", "and")


def english_like(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """n references and 3 systems' hypotheses (word lists rendered the same way)."""
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, len(WORDS) + 1)
    weights /= weights.sum()
    lengths = rng.integers(4, 25, n)
    word_ids = rng.choice(len(WORDS), size=int(lengths.sum()), p=weights)
    starts = np.concatenate([[0], np.cumsum(lengths)])

    def render(words: list[str], end: str) -> str:
        return (words[0][:1].upper() + words[0][1:] + " " + " ".join(words[1:]) + end) if words else ""

    refs, hyps = [], [[] for _ in range(3)]
    for i in range(n):
        words = [WORDS[j] for j in word_ids[starts[i]:starts[i + 1]]]
        if rng.random() < 0.2:
            words.insert(int(rng.integers(0, len(words))), NUMBERS[int(rng.integers(0, len(NUMBERS)))])
        if rng.random() < 0.2:
            words[int(rng.integers(0, len(words)))] += ","
        end = "?" if rng.random() < 0.1 else "."
        refs.append(render(words, end))
        for s in range(3):
            h = [w for w in words if rng.random() > 0.03]
            h = [WORDS[int(rng.integers(0, len(WORDS)))] if rng.random() < 0.05 + 0.02 * s else w for w in h]
            if rng.random() < 0.1:
                h.insert(int(rng.integers(0, len(h) + 1)), FILLERS[int(rng.integers(0, len(FILLERS)))])
            hyps[s].append(render(h, end))
    return refs, hyps


def digit_heavy(n: int, seed: int = 0) -> list[str]:
    """The earlier benchmark's text: words w0..w4999, every one holding digits."""
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{j}" for j in rng.integers(0, 5000, ln)) for ln in rng.integers(4, 25, n)]


def counts_and_ci(refs_n: list[str], hyps_n: list[str], samples: int):
    keep = [i for i, r in enumerate(refs_n) if r]
    refs_k, hyps_k = [refs_n[i] for i in keep], [hyps_n[i] for i in keep]
    w = scoring.utterance_errors(refs_k, hyps_k, "word")
    c = scoring.utterance_errors(refs_k, hyps_k, "char")
    draws = scoring.bootstrap_rates(w.errors[None], w.ref_len, samples, seed=0)
    return w, c, scoring.percentile_ci(draws[0])


def whole_scoring(refs: list[str], hyps: list[str], samples: int, processes: int) -> tuple[float, float, tuple]:
    """Wall seconds of normalization and of the whole scoring, and (WER, CER, CI)."""
    t0 = time.perf_counter()
    both = normalize.normalize_all([*refs, *hyps], "whisper_english", processes=processes,
                                   parallel_min=1 if processes > 1 else normalize.PARALLEL_MIN)  # 2: always split
    refs_n, hyps_n = both[:len(refs)], both[len(refs):]
    t1 = time.perf_counter()
    w, c, ci = counts_and_ci(refs_n, hyps_n, samples)
    return t1 - t0, time.perf_counter() - t0, (w.corpus()["rate"], c.corpus()["rate"], ci)


def per_string_seconds(norm, texts: list[str]) -> float:
    t0 = time.perf_counter()
    for t in texts:
        norm(t)
    return (time.perf_counter() - t0) / len(texts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    n = args.n
    refs, hyps = english_like(n, 3)
    same = sum(h == r for h, r in zip(hyps[0], refs))
    print(f"{n} English-like utterances ({sum(len(r.split()) for r in refs)} reference words, {100 * same / n:.0f}% "
          f"of hypotheses equal their reference), {args.samples} bootstrap samples; {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.1f} at start (wall > CPU time below means the machine was busy)")
    from whisper_normalizer.english import EnglishTextNormalizer

    package = EnglishTextNormalizer()
    fast = scoring.normalizer("whisper_english")
    k = min(10_000, n)
    sample = refs[:k // 2] + hyps[0][:k // 2]

    # before: the package's normalizer (timed on k strings, scaled to 2n) + counts + bootstrap
    t0 = time.perf_counter()
    package_out = [" ".join(package(t).split()) for t in sample]
    per = package_per = (time.perf_counter() - t0) / len(sample)
    refs_n, hyps_n = scoring.normalize_pairs(refs, hyps[0], "whisper_english", processes=1)
    normalize.forget()
    assert refs_n[:k // 2] + hyps_n[:k // 2] == package_out, "the fast path's output differs from the package's"
    t1 = time.perf_counter()
    w, c, ci = counts_and_ci(refs_n, hyps_n, args.samples)
    counts_s = time.perf_counter() - t1
    print(f"before (whisper_normalizer's EnglishTextNormalizer: {1e6 * per:.0f} us per string on {len(sample)}, "
          f"scaled to {2 * n} references + hypotheses): normalization ~{per * 2 * n:.1f} s + counts (word + char) "
          f"and bootstrap CI {counts_s:.2f} s = ~{per * 2 * n + counts_s:.1f} s")
    print(f"  WER {100 * w.corpus()['rate']:.2f}% CI [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}], "
          f"CER {100 * c.corpus()['rate']:.2f}%; spx's normalizer gave the package's output on those {len(sample)}")

    # after: the whole scoring, cold and with the references remembered, in 1 and 2 processes
    print(f"after: spx's normalizer (fast path: {normalize.fast_path_available()}), each distinct string once; "
          f"'2 processes' splits the new strings however few (spx bench does from {normalize.PARALLEL_MIN} on, "
          f"onto idle cores)")
    results = {}
    for processes in (1, 2):
        for warm in (False, True):
            normalize.forget()
            if warm:
                scoring.normalize_all(refs, "whisper_english", processes=1)
            p0, c0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
            norm_s, total, results[(processes, warm)] = whole_scoring(refs, hyps[0], args.samples, processes)
            cpu, c1 = time.process_time() - p0, resource.getrusage(resource.RUSAGE_CHILDREN)
            child = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
            print(f"after, {processes} process{'es' if processes > 1 else ''}, "
                  f"{'references already normalized' if warm else 'cold'}: whole scoring {total:.2f} s "
                  f"(normalization {norm_s:.2f} s; CPU: this process {cpu:.2f} s, the other {child:.2f} s) "
                  f"(target <= 5 s: {'OK' if total <= 5 else 'MISSED'})")
    normalize.forget()
    assert set(results.values()) == {(w.corpus()["rate"], c.corpus()["rate"], ci)}, results
    print("  the same WER, CER and CI in every run")

    # three systems, counts + paired bootstrap (already-normalized text)
    refs_n, *hyps_n = [scoring.normalize_all(t, "whisper_english") for t in (refs, *hyps)]
    t0 = time.perf_counter()
    errs = [scoring.utterance_errors(refs_n, h, "word") for h in hyps_n]
    t1 = time.perf_counter()
    E = np.vstack([e.errors for e in errs])
    draws = scoring.bootstrap_rates(E, errs[0].ref_len, args.samples, seed=0)
    rates = E.sum(1) / errs[0].ref_len.sum()
    comps = [scoring.paired_difference(rates[a], rates[b], draws[a], draws[b])
             for a, b in itertools.combinations(range(3), 2)]
    t2 = time.perf_counter()
    print(f"three systems (word counts + paired bootstrap, 3 CIs + 3 differences, normalized text): counts "
          f"{t1 - t0:.2f} s, bootstrap {t2 - t1:.2f} s, total {t2 - t0:.2f} s; p-values "
          f"{[round(c['p_value'], 4) for c in comps]}")

    # the normalizers on their own, per 100k strings
    from whisper_normalizer.basic import BasicTextNormalizer

    digits = digit_heavy(k // 5)
    print(f"normalizer whisper_english, package: {1e6 * package_per:.0f} us per string (~{1e5 * package_per:.1f} s "
          f"per 100k, one process; timed in 'before')")
    for label, norm, texts in [("whisper_english, spx fast path", fast, sample),
                               ("whisper_english, package, digit-heavy text", package, digits),
                               ("whisper_english, spx fast path, digit-heavy text", fast, digits),
                               ("basic (the package's)", BasicTextNormalizer(), sample)]:
        per = per_string_seconds(norm, texts)
        print(f"normalizer {label}: {1e6 * per:.0f} us per string (~{1e5 * per:.1f} s per 100k, one process)")


if __name__ == "__main__":
    main()
