"""Streaming read/write of spx manifests (never the whole file in memory)."""
from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from spx.errors import SpxError
from spx.manifests.schema import HEADER_KEY, SCHEMA_VERSION, ManifestRowError, Utterance


def _resolve_audio(audio: str, base: Path) -> str:
    if audio.rstrip().endswith("|") or "://" in audio or os.path.isabs(audio):
        return audio
    return str(base / audio)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def lone_surrogate(value) -> bool:
    """Does a decoded JSON value hold a lone surrogate (valid JSON, but not encodable as UTF-8)?"""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def iter_manifest(path: str | Path, resolve_audio: bool = True) -> Iterator[Utterance]:
    """Yield utterances one by one; relative audio paths resolve against the manifest's folder.

    Raises SpxError naming `file:line` for the first malformed row.
    """
    p = _existing(path)
    with p.open("rb") as fh:
        yield from parse_manifest_lines(fh, p, resolve_audio)


def iter_manifest_rows(path: str | Path, resolve_audio: bool = True) -> Iterator[Any]:
    """`iter_manifest` for the exporters: rows with Utterance's attributes (see `iter_rows`), same checks, faster."""
    p = _existing(path)
    with p.open("rb") as fh:
        yield from iter_rows(fh, p, resolve_audio)


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise SpxError(f"manifest not found: {p}", hint="check the path (relative paths resolve against the recipe)")
    return p


def parse_manifest_lines(lines: Iterable[bytes], p: Path, resolve_audio: bool = True, first_lineno: int = 1) -> Iterator[Utterance]:
    """Parse raw manifest lines (bytes) of file `p` starting at line `first_lineno` (used for byte-range workers)."""
    for row in iter_rows(lines, p, resolve_audio, first_lineno):
        yield row if type(row) is Utterance else Utterance(
            row.id, row.audio, row.duration, row.offset, row.text, row.speaker, row.language, row.label,
            row.sample_rate, row.channels, row.meta)


def iter_rows(lines: Iterable[bytes], p: Path, resolve_audio: bool = True, first_lineno: int = 1) -> Iterator[Any]:
    """Like `parse_manifest_lines`, but yields rows with Utterance's attributes without building Utterances:
    the exporters' fast path. A row is a `fastrow.Row` (msgspec, parsed in C), or an Utterance from `_parse_line`
    (the reference reader) for each line the fast path rejects: that one accepts it or raises its SpxError."""
    from spx.manifests.fastrow import decoder  # msgspec: imported on the first read, not by the CLI

    base = p.resolve().parent
    decode = decoder.decode
    if first_lineno == 1:
        lines = without_bom(lines)
    for lineno, raw in enumerate(lines, first_lineno):
        try:
            row = decode(raw)
        except (ValueError, RecursionError):  # msgspec.DecodeError/ValidationError, UnicodeDecodeError
            row = _parse_line(raw, p, lineno)
            if row is None:
                continue
        if resolve_audio and not row.audio.startswith("/"):
            row.audio = _resolve_audio(row.audio, base)
        yield row


UTF8_BOM = b"\xef\xbb\xbf"


def without_bom(lines: Iterable[bytes]) -> Iterator[bytes]:
    """The file's lines with a UTF-8 byte order mark (Windows editors write one) taken off the first."""
    lines = iter(lines)
    first = next(lines, None)
    return iter(()) if first is None else itertools.chain((first.removeprefix(UTF8_BOM),), lines)  # C speed per row


def check_header(row: Any, p: Path, lineno: int) -> bool:
    """Is this decoded row the header `{"spx_manifest": 1}`? SpxError for a header this spx cannot read, or one
    that is not on the first line (where a reader would take it for a row)."""
    if not (isinstance(row, dict) and HEADER_KEY in row):
        return False
    if lineno != 1:
        raise SpxError(f"the header {{{HEADER_KEY!r}: ...}} must be the file's first line, not line {lineno}",
                       where=f"{p}:{lineno}", hint="delete it, or move it to the top (when joining manifests, keep only the first one's)")
    version = row[HEADER_KEY]
    if type(version) is not int or version != SCHEMA_VERSION:
        raise SpxError(f"manifest schema version {version!r} is not supported (this spx reads {SCHEMA_VERSION})",
                       where=f"{p}:1", hint="upgrade spx or re-export the manifest")
    if len(row) > 1:
        raise SpxError(f"the header line holds other keys besides {HEADER_KEY!r}: {sorted(k for k in row if k != HEADER_KEY)}",
                       where=f"{p}:1", hint=f'the first line is {{"{HEADER_KEY}": {SCHEMA_VERSION}}} alone; utterances follow it')
    return True


def _parse_line(raw: bytes, p: Path, lineno: int) -> Utterance | None:
    """The reference reader of one line: an Utterance, None for a blank line or the header, or SpxError (file:line)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpxError(f"not UTF-8 (byte {exc.start})", where=f"{p}:{lineno}", hint="re-encode the manifest as UTF-8") from None
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SpxError(f"invalid JSON: {exc.msg} (column {exc.colno})", where=f"{p}:{lineno}",
                       hint="one JSON object per line") from None
    except RecursionError:
        raise SpxError("invalid JSON: nested too deeply", where=f"{p}:{lineno}", hint="one flat JSON object per line") from None
    except ValueError as exc:  # an integer literal past Python's 4300-digit limit (its advice after ';' is for programmers)
        raise SpxError(f"invalid JSON: {str(exc).split(';')[0]}", where=f"{p}:{lineno}", hint="one JSON object per line") from None
    if "\\u" in line and _SURROGATE_ESCAPE.search(line) and lone_surrogate(row):
        raise SpxError("a string holds a lone UTF-16 surrogate escape (not valid Unicode)", where=f"{p}:{lineno}",
                       hint="fix the \\uD800-\\uDFFF escape; only complete surrogate pairs are text")
    if check_header(row, p, lineno):
        return None
    try:
        return Utterance.from_dict(row)
    except ManifestRowError as exc:
        raise SpxError(str(exc), where=f"{p}:{lineno}", hint="see the manifest schema in spx/manifests/schema.py") from None


def require_utterances(path: str | Path, key: str, min_duration: float | None = None,
                       max_duration: float | None = None) -> None:
    """SpxError naming the recipe key (`data.train`...) unless the manifest holds an utterance within the duration
    limits: a run must not render, let alone train, on an empty set. Reads up to the first such utterance."""
    p = Path(path)
    if not p.is_file():
        raise SpxError(f"manifest not found: {p}", where=key, hint="check the path (relative paths resolve against the recipe)")
    rows = 0
    for row in iter_manifest_rows(p, resolve_audio=False):
        if (min_duration is None or row.duration >= min_duration) and (max_duration is None or row.duration <= max_duration):
            return
        rows += 1
    if rows:
        raise SpxError(f"all {rows} utterances of {p} are outside data.min_duration/max_duration "
                       f"({min_duration}, {max_duration} s)", where=key, hint="widen data.min_duration/max_duration")
    raise SpxError(f"{p} has no utterances: {empty_reason(p)}", where=key,
                   hint=f"point {key} at a manifest with utterances (see `spx manifest import --help`)")


def empty_reason(p: Path) -> str:
    """Why a manifest that parsed without error gave no rows: it has no bytes, only blank lines, or a header."""
    if p.stat().st_size == 0:
        return "the file is empty"
    with p.open("rb") as fh:
        return f"the file holds {'only the header line' if HEADER_KEY.encode() in fh.read(1 << 16) else 'only blank lines'}"


def check_run_manifests(spec: Any) -> None:
    """`require_utterances` for every manifest a run of `spec` (a spx.spec.Spec) reads, named by its recipe key."""
    data = spec.data
    require_utterances(data.train, "data.train", data.min_duration, data.max_duration)
    require_utterances(data.valid, "data.valid")
    tests = spec.test_sets
    for i, path in enumerate(tests):
        require_utterances(path, "data.test" if isinstance(data.test, str) else f"data.test[{i}]")
    noise = spec.augmentation.noise
    if noise is not None:
        require_utterances(noise.manifest, "augmentation.noise.manifest")


def read_manifest(path: str | Path, resolve_audio: bool = True) -> list[Utterance]:
    """Whole manifest as a list: only for small manifests (training sets of tests, test sets)."""
    return list(iter_manifest(path, resolve_audio))


class ManifestWriter:
    """Write utterances to a temp file and rename on close, so a failed write leaves nothing half-written."""

    def __init__(self, path: str | Path, relative_to_manifest: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.base = self.path.resolve().parent
        self.relative = relative_to_manifest
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._fh: IO[str] = os.fdopen(fd, "w", encoding="utf-8")
        self._fh.write(json.dumps({HEADER_KEY: SCHEMA_VERSION}) + "\n")
        self.count = 0

    def write(self, utt: Utterance) -> None:
        d = utt.to_json_dict()
        if self.relative and os.path.isabs(d["audio"]):
            try:
                d["audio"] = os.path.relpath(d["audio"], self.base)
            except ValueError:
                pass
        try:
            self._fh.write(json.dumps(d, ensure_ascii=False) + "\n")
        except UnicodeEncodeError:
            raise SpxError(f"utterance {utt.id!r} holds a string that is not valid Unicode (a lone surrogate)",
                           hint="fix that entry in the source corpus") from None
        self.count += 1

    def close(self) -> None:
        self._fh.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._fh.close()
        Path(self._tmp).unlink(missing_ok=True)

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort() if exc_type else self.close()


def write_manifest(path: str | Path, utts: Iterable[Utterance], relative_to_manifest: bool = False) -> int:
    with ManifestWriter(path, relative_to_manifest) as w:
        for u in utts:
            w.write(u)
    return w.count


def write_split_manifests(out_dir: str | Path, utts: Iterable[Utterance], relative_to_manifest: bool = False) -> dict[str, int]:
    """Write rows to OUT_DIR/{train,valid,test}.jsonl by their meta.split (the corpus' own split, which the
    importers record), taking meta.split off; all files or none are written."""
    writers: dict[str, ManifestWriter] = {}
    try:
        for u in utts:
            split = u.meta.pop("split", None)
            if split not in ("train", "valid", "test"):
                raise SpxError(f"utterance {u.id!r} has no split (train, valid or test) in the corpus",
                               hint="drop --splits to write one manifest, then split it with `spx manifest split`")
            if split not in writers:
                writers[split] = ManifestWriter(Path(out_dir) / f"{split}.jsonl", relative_to_manifest)
            writers[split].write(u)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for w in writers.values():
        w.close()
    return {name: writers[name].count for name in ("train", "valid", "test") if name in writers}
