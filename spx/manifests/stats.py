"""`spx manifest stats` and `spx manifest split` (both stream the manifest)."""
from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

from spx.errors import SpxError
from spx.manifests.io import ManifestWriter, iter_manifest

HISTOGRAM_EDGES = (0.0, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, math.inf)


def manifest_stats(path: str | Path) -> dict:
    n = 0
    total = 0.0
    lo, hi = math.inf, 0.0
    speakers: Counter = Counter()
    languages: Counter = Counter()
    labels: Counter = Counter()
    label_seconds: Counter = Counter()
    chars: Counter = Counter()
    bins = [0] * (len(HISTOGRAM_EDGES) - 1)
    with_text = 0
    words = 0
    for u in iter_manifest(path, resolve_audio=False):
        n += 1
        total += u.duration
        lo, hi = min(lo, u.duration), max(hi, u.duration)
        if u.speaker is not None:
            speakers[u.speaker] += 1
        if u.language is not None:
            languages[u.language] += 1
        if u.label is not None:
            labels[u.label] += 1
            label_seconds[u.label] += u.duration
        if u.text is not None:
            with_text += 1
            chars.update(u.text)
            words += len(u.text.split())
        for i in range(len(bins)):
            if u.duration < HISTOGRAM_EDGES[i + 1]:
                bins[i] += 1
                break
    histogram = [{"from_s": HISTOGRAM_EDGES[i], "to_s": HISTOGRAM_EDGES[i + 1] if HISTOGRAM_EDGES[i + 1] != math.inf else None,
                  "utterances": bins[i]} for i in range(len(bins))]
    return {
        "manifest": str(path), "utterances": n, "hours": round(total / 3600, 4), "seconds": round(total, 3),
        "duration_min_s": round(lo, 3) if n else None, "duration_max_s": round(hi, 3) if n else None,
        "duration_mean_s": round(total / n, 3) if n else None,
        "speakers": len(speakers), "utterances_per_speaker_max": max(speakers.values()) if speakers else 0,
        "languages": dict(languages.most_common()), "labels": dict(labels.most_common()),
        "class_balance": [{"label": k, "utterances": v, "hours": round(label_seconds[k] / 3600, 4),
                           "share": round(v / n, 4)} for k, v in sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))],
        "unlabelled": n - sum(labels.values()) if labels else None,
        "with_text": with_text, "words": words, "characters": "".join(sorted(chars)),
        "character_counts": dict(chars.most_common()), "duration_histogram": histogram,
    }


def render_stats(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"{s['manifest']}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for key in ("utterances", "hours", "duration_min_s", "duration_mean_s", "duration_max_s", "speakers", "with_text", "words"):
        t.add_row(key.replace("_", " "), str(s[key]))
    if s["languages"]:
        t.add_row("languages", ", ".join(f"{k} ({v})" for k, v in s["languages"].items()))
    if s["labels"]:
        t.add_row("labels", f"{len(s['labels'])} classes" + (f", {s['unlabelled']} utterances without a label"
                                                           if s.get("unlabelled") else ""))
    t.add_row("character set", repr(s["characters"]))
    console.print(t)
    if s.get("class_balance"):
        c = Table(title="class balance")
        for col in ("label", "utterances", "hours", "share %", ""):
            c.add_column(col, justify="left" if col in ("label", "") else "right")
        peak = s["class_balance"][0]["utterances"]
        for b in s["class_balance"]:
            c.add_row(b["label"], str(b["utterances"]), f"{b['hours']:.4f}", f"{100 * b['share']:.1f}",
                      "█" * round(30 * b["utterances"] / peak))
        console.print(c)
    h = Table(title="duration histogram")
    h.add_column("seconds")
    h.add_column("utterances", justify="right")
    h.add_column("")
    peak = max((b["utterances"] for b in s["duration_histogram"]), default=0) or 1
    for b in s["duration_histogram"]:
        to = "inf" if b["to_s"] is None else f"{b['to_s']:g}"
        h.add_row(f"{b['from_s']:g}-{to}", str(b["utterances"]), "█" * round(30 * b["utterances"] / peak))
    console.print(h)


SPLIT_NAMES = ("train", "valid", "test")


def parse_ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise SpxError(f"--ratios {text!r} is not a comma-separated list of numbers", hint="e.g. --ratios 0.8,0.1,0.1") from None
    if not 1 <= len(ratios) <= 3 or any(r < 0 or r != r for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise SpxError(f"--ratios {text!r}: give up to 3 non-negative numbers that sum to 1", hint="e.g. --ratios 0.8,0.1,0.1")
    return ratios


def split_manifest(path: str | Path, out_dir: str | Path, ratios: tuple[float, ...], seed: int = 0,
                   speaker_disjoint: bool = False, stratify: str | None = None) -> dict[str, int]:
    """Seeded split by utterance count. Speaker-disjoint: whole speakers go to one split. Stratified by label:
    each label's rows are split in the ratios on their own (see `stratified_assignment`).

    Two passes: the first collects keys (ids or speakers, with counts), the second streams rows to their files.
    """
    if stratify not in (None, "label"):
        raise SpxError(f"--stratify {stratify!r}: only 'label' is supported", hint="use --stratify label")
    if stratify and speaker_disjoint:
        raise SpxError("--stratify label and --speaker-disjoint cannot be combined",
                       hint="choose one (a class-balanced split, or one with no speaker in two splits)")
    keys: Counter = Counter()
    by_label: dict[str, set[str]] = {}
    label_of: dict[str, str] = {}
    for u in iter_manifest(path, resolve_audio=False):
        if speaker_disjoint:
            if u.speaker is None:
                raise SpxError(f"utterance {u.id!r} has no speaker, so a speaker-disjoint split is impossible",
                               where=str(path), hint="add speakers, or split without --speaker-disjoint")
            keys[u.speaker] += 1
        else:
            keys[u.id] += 1
        if stratify:
            if u.label is None:
                raise SpxError(f"utterance {u.id!r} has no label, so a split stratified by label is impossible",
                               where=str(path), hint="label every row, or split without --stratify")
            if label_of.setdefault(u.id, u.label) != u.label:
                raise SpxError(f"utterance id {u.id!r} appears twice, with labels {label_of[u.id]!r} and {u.label!r}",
                               where=str(path), hint="ids must be unique (spx manifest validate lists duplicates)")
            by_label.setdefault(u.label, set()).add(u.id)
    total = sum(keys.values())
    if total == 0:
        raise SpxError(f"{path} has no utterances", hint="nothing to split")
    if stratify:
        assign = stratified_assignment(by_label, ratios, seed)
    else:
        assign = _assignment(keys, ratios, seed)
    out = Path(out_dir)
    writers = [ManifestWriter(out / f"{name}.jsonl") for name in SPLIT_NAMES[:len(ratios)]]
    try:
        for u in iter_manifest(path):
            writers[assign[u.speaker if speaker_disjoint else u.id]].write(u)
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for w in writers:
        w.close()
    return {SPLIT_NAMES[i]: w.count for i, w in enumerate(writers)}


def _assignment(keys: Counter, ratios: tuple[float, ...], seed: int) -> dict[str, int]:
    """Keys (ids or speakers, weighted by their row counts) shuffled with the seed and filled into the splits."""
    total = sum(keys.values())
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    targets = [r * total for r in ratios]
    assign: dict[str, int] = {}
    filled = [0] * len(ratios)
    split = 0
    for key in order:
        # move on once this split is full (or would overshoot more than the next would undershoot)
        while split < len(ratios) - 1 and filled[split] + keys[key] / 2 > targets[split]:
            split += 1
        assign[key] = split
        filled[split] += keys[key]
    return assign


def stratified_assignment(by_label: dict[str, set[str]], ratios: tuple[float, ...], seed: int) -> dict[str, int]:
    """Each label's ids, shuffled with (seed, label), go to the splits in the ratios: floor(ratio * n) each, and
    the ids rounding leaves over to the splits furthest behind their share of all rows so far (so small classes
    do not all round the same way and the totals stay in the ratios)."""
    assign: dict[str, int] = {}
    given = [0] * len(ratios)
    seen = 0
    for label in sorted(by_label):
        ids = sorted(by_label[label])
        random.Random(f"{seed}:{label}").shuffle(ids)
        n = len(ids)
        seen += n
        counts = [math.floor(r * n + 1e-9) for r in ratios]
        for _ in range(n - sum(counts)):
            i = max(range(len(ratios)), key=lambda i: (ratios[i] * seen - given[i] - counts[i], -i))
            counts[i] += 1
        start = 0
        for i, c in enumerate(counts):
            assign.update((uid, i) for uid in ids[start:start + c])
            start += c
            given[i] += c
    return assign
