"""`spx manifest validate`: every problem of a manifest, each with its line (streaming; audio headers in threads)."""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from spx.errors import SpxError
from spx.manifests.io import check_header, empty_reason, lone_surrogate, without_bom
from spx.manifests.schema import ManifestRowError, Utterance

PROBLEM_KINDS = ("not_utf8", "invalid_json", "schema", "bad_duration", "duplicate_id", "missing_audio", "unreadable_audio",
                 "duration_mismatch", "sample_rate_mismatch", "empty_text", "out_of_vocabulary", "piped_not_checked",
                 "no_utterances")


@dataclass(slots=True)
class Problem:
    line: int
    kind: str
    message: str
    id: str | None = None


@dataclass
class ValidationReport:
    manifest: str
    utterances: int = 0
    problems: list[Problem] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    shown_limit: int = 1000

    @property
    def ok(self) -> bool:
        return not any(k != "piped_not_checked" for k in self.counts)

    def add(self, p: Problem) -> None:
        self.counts[p.kind] += 1
        if len(self.problems) < self.shown_limit:
            self.problems.append(p)

    def to_json(self) -> dict:
        return {"manifest": self.manifest, "ok": self.ok, "utterances": self.utterances, "problem_counts": dict(self.counts),
                "problems": [asdict(p) for p in self.problems], "problems_shown": len(self.problems)}


@dataclass
class ValidateOptions:
    check_audio: bool = True
    duration_tolerance: float = 0.05      # seconds
    sample_rate: int | None = None        # expected rate of every file
    vocabulary: str | None = None         # allowed characters of `text` (space is always allowed)
    require_text: bool = False            # an utterance without text is a problem (ASR training sets)
    allow_pipes: bool = False             # run piped commands to check them
    workers: int = 4
    limit: int = 1000


def _rows(path: Path, report: ValidationReport) -> Iterator[tuple[int, Utterance]]:
    base = path.resolve().parent
    with path.open("rb") as fh:
        for lineno, raw in enumerate(without_bom(fh), 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                report.add(Problem(lineno, "not_utf8", f"line is not UTF-8 (byte {exc.start}); re-encode the manifest"))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                report.add(Problem(lineno, "invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})"))
                continue
            except RecursionError:
                report.add(Problem(lineno, "invalid_json", "invalid JSON: nested too deeply"))
                continue
            try:
                if check_header(row, path, lineno):
                    continue
            except SpxError as exc:  # a header this spx cannot read stops here; a misplaced one is a row problem
                if lineno == 1:
                    raise
                report.add(Problem(lineno, "schema", exc.message))
                continue
            rid = row.get("id") if isinstance(row, dict) and isinstance(row.get("id"), str) else None
            try:
                utt = Utterance.from_dict(row)
            except ManifestRowError as exc:
                kind = "bad_duration" if "'duration'" in str(exc) and "> 0" in str(exc) else "schema"
                report.add(Problem(lineno, kind, str(exc), rid))
                continue
            if "\\u" in line and lone_surrogate(row) and not (utt.text and lone_surrogate(utt.text)):
                report.add(Problem(lineno, "not_utf8", "a field holds a lone UTF-16 surrogate (not valid Unicode)", utt.id))
                continue
            if not (utt.is_piped or "://" in utt.audio or os.path.isabs(utt.audio)):
                utt.audio = str(base / utt.audio)
            yield lineno, utt


def validate_manifest(path: str | Path, opts: ValidateOptions | None = None) -> ValidationReport:
    from spx.manifests.audioinfo import audio_info, parallel_map, pipe_info

    opts = opts or ValidateOptions()
    p = Path(path)
    if not p.is_file():
        raise SpxError(f"manifest not found: {p}", hint="check the path")
    report = ValidationReport(str(p), shown_limit=opts.limit)
    vocab = set(opts.vocabulary) | {" "} if opts.vocabulary is not None else None
    seen: dict[str, int] = {}

    def check_text(lineno: int, u: Utterance) -> None:
        if u.text is None:
            if opts.require_text:
                report.add(Problem(lineno, "empty_text", "no text", u.id))
            return
        if not u.text.strip():
            report.add(Problem(lineno, "empty_text", "text is empty", u.id))
            return
        try:
            u.text.encode("utf-8")
        except UnicodeEncodeError as exc:
            report.add(Problem(lineno, "not_utf8", f"text holds a lone surrogate at character {exc.start}", u.id))
            return
        if vocab is not None:
            bad = sorted(set(u.text) - vocab)
            if bad:
                report.add(Problem(lineno, "out_of_vocabulary", f"characters outside the vocabulary: {''.join(bad)!r}", u.id))

    def probe(item: tuple[int, Utterance]) -> tuple[int, Utterance, object]:
        lineno, u = item
        if not opts.check_audio:
            return lineno, u, None
        try:
            if u.is_piped:
                return lineno, u, (pipe_info(u.audio) if opts.allow_pipes else "piped")
            if "://" in u.audio:
                return lineno, u, "remote"
            if not os.path.exists(u.audio):
                return lineno, u, Problem(lineno, "missing_audio", f"audio file not found: {u.audio}", u.id)
            return lineno, u, audio_info(u.audio)
        except SpxError as exc:
            return lineno, u, Problem(lineno, "unreadable_audio", exc.message, u.id)

    for lineno, u, info in parallel_map(probe, _rows(p, report), opts.workers):
        report.utterances += 1
        if u.id in seen:
            report.add(Problem(lineno, "duplicate_id", f"id {u.id!r} already used on line {seen[u.id]}", u.id))
        else:
            seen[u.id] = lineno
        check_text(lineno, u)
        if isinstance(info, Problem):
            report.add(info)
        elif info == "piped":
            report.add(Problem(lineno, "piped_not_checked", "piped audio not checked (pass --allow-pipes to run it)", u.id))
        elif info is not None and info != "remote":
            available = info.duration - u.offset
            if u.offset and u.offset + u.duration > info.duration + opts.duration_tolerance:
                report.add(Problem(lineno, "duration_mismatch",
                                   f"segment {u.offset:.3f}+{u.duration:.3f}s runs past the audio's end ({info.duration:.3f}s)", u.id))
            elif not u.offset and abs(available - u.duration) > opts.duration_tolerance:
                report.add(Problem(lineno, "duration_mismatch",
                                   f"duration {u.duration:.3f}s but the audio is {info.duration:.3f}s (tolerance {opts.duration_tolerance}s)", u.id))
            expected = opts.sample_rate or u.sample_rate
            if expected and info.sample_rate != expected:
                report.add(Problem(lineno, "sample_rate_mismatch",
                                   f"audio is {info.sample_rate} Hz, expected {expected} Hz", u.id))
    if report.utterances == 0 and not report.counts:  # a run would refuse it (io.require_utterances)
        report.add(Problem(1, "no_utterances", empty_reason(p)))
    return report
