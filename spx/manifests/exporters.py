"""Exporters from the spx manifest to each backend's native input. All stream; none loads audio.

Each format is a *sink* (`write(utt)`, `close()`, `abort()`), so one pass over a manifest can feed several
formats at once (`convert`). The `export_*` functions are the one-format shortcuts.
Everything is written to a temp path and renamed on success: a failed export leaves nothing half-written.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Iterable

from spx.errors import SpxError
from spx.manifests.schema import Utterance

_enc = json.encoder.encode_basestring  # the C string encoder json.dumps(ensure_ascii=False) uses
_KALDI_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def kaldi_safe(name: str) -> str:
    """Kaldi/ESPnet ids: no whitespace or shell metacharacters; '-' separates speaker prefix."""
    return _KALDI_UNSAFE.sub("_", name) or "_"


def kaldi_utt_id(utt_id: str, speaker: str | None) -> str:
    """The Kaldi id of an utterance: Kaldi-safe, unique for distinct ids, prefixed with its speaker.

    An id that had to be changed gets a short hash of the original, so 'a b' and 'a_b' stay distinct.
    """
    kid = kaldi_safe(utt_id)
    if kid != utt_id:
        kid = f"{kid}_{hashlib.blake2s(utt_id.encode(), digest_size=4).hexdigest()}"
    if speaker:
        spk = kaldi_safe(speaker)
        if not kid.startswith(spk + "-"):
            kid = f"{spk}-{kid}"
    return kid


def _tmp_file(path: Path, newline: str | None = None) -> tuple[IO[str], str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    return os.fdopen(fd, "w", encoding="utf-8", newline=newline, buffering=1 << 20), tmp


class _FileSink:
    """A sink writing one file: temp file, renamed onto `path` by close()."""

    newline: str | None = None

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fh, self._tmp = _tmp_file(self.path, self.newline)
        self.count = 0

    def close(self) -> int:
        self.fh.close()
        os.replace(self._tmp, self.path)
        return self.count

    def abort(self) -> None:
        self.fh.close()
        Path(self._tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------- NeMo
_NEMO_KEYS = (("speaker", "speaker"), ("language", "lang"), ("label", "label"), ("sample_rate", "sample_rate"),
              ("channels", "channels"))


def nemo_row(u: Utterance) -> dict:
    row: dict = {"audio_filepath": u.audio, "duration": u.duration, "text": u.text if u.text is not None else ""}
    if u.offset:
        row["offset"] = u.offset
    row["utt_id"] = u.id
    for key, nemo_key in _NEMO_KEYS:
        value = getattr(u, key)
        if value is not None:
            row[nemo_key] = value
    if u.text is None:
        row["spx_no_text"] = True
    if u.meta:
        row["spx_meta"] = u.meta
    return row


class NemoSink(_FileSink):
    """NeMo JSONL (`audio_filepath`, `duration`, `text`, `offset`, `lang`, ...). NeMo ignores the extra keys.

    Lines are formatted directly (same bytes as `json.dumps(nemo_row(u), ensure_ascii=False)`, 2x faster).
    """

    def write(self, u: Utterance) -> None:
        enc = _enc
        parts = ['{"audio_filepath": ', enc(u.audio), ', "duration": ', repr(u.duration), ', "text": ',
                 enc(u.text) if u.text is not None else '""']
        if u.offset:
            parts += (', "offset": ', repr(u.offset))
        parts += (', "utt_id": ', enc(u.id))
        if u.speaker is not None:
            parts += (', "speaker": ', enc(u.speaker))
        if u.language is not None:
            parts += (', "lang": ', enc(u.language))
        if u.label is not None:
            parts += (', "label": ', enc(u.label))
        if u.sample_rate is not None:
            parts += (', "sample_rate": ', str(u.sample_rate))
        if u.channels is not None:
            parts += (', "channels": ', str(u.channels))
        if u.text is None:
            parts.append(', "spx_no_text": true')
        if u.meta:
            parts += (', "spx_meta": ', json.dumps(u.meta, ensure_ascii=False))
        parts.append("}\n")
        self.fh.write("".join(parts))
        self.count += 1


def export_nemo(utts: Iterable[Utterance], path: str | Path) -> int:
    """NeMo JSONL (`audio_filepath`, `duration`, `text`, `offset`, `lang`, ...). Extra keys NeMo ignores."""
    return _drain(utts, NemoSink(path))


# ---------------------------------------------------------------- SpeechBrain
# `spx_empty` names the text columns whose value is "" rather than absent (an empty cell reads back as absent).
SB_COLUMNS = ["ID", "duration", "wav", "offset", "spk_id", "wrd", "language", "label", "sample_rate", "channels", "meta",
              "spx_empty"]
SB_TEXT_COLUMNS = (("speaker", "spk_id"), ("text", "wrd"), ("language", "language"), ("label", "label"))


class SpeechBrainCsvSink(_FileSink):
    """SpeechBrain CSV in its LibriSpeech-recipe style (`ID,duration,wav,spk_id,wrd`) plus optional columns."""

    newline = ""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._writer = csv.writer(self.fh)
        self._writer.writerow(SB_COLUMNS)

    def write(self, u: Utterance) -> None:
        empty = " ".join(col for key, col in SB_TEXT_COLUMNS if getattr(u, key) == "")
        self._writer.writerow([u.id, repr(u.duration), u.audio, repr(u.offset), u.speaker or "",
                               u.text or "", u.language or "", u.label or "", u.sample_rate or "", u.channels or "",
                               json.dumps(u.meta, ensure_ascii=False) if u.meta else "", empty])
        self.count += 1


def export_speechbrain_csv(utts: Iterable[Utterance], path: str | Path) -> int:
    """SpeechBrain CSV in its LibriSpeech-recipe style (`ID,duration,wav,spk_id,wrd`) plus optional columns."""
    return _drain(utts, SpeechBrainCsvSink(path))


def speechbrain_json_entry(u: Utterance) -> dict:
    entry: dict = {"wav": u.audio, "duration": u.duration}
    if u.offset:
        entry["offset"] = u.offset
    for key, sb_key in SB_TEXT_COLUMNS + (("sample_rate", "sample_rate"), ("channels", "channels")):
        value = getattr(u, key)
        if value is not None:
            entry[sb_key] = value
    if u.meta:
        entry["meta"] = u.meta
    return entry


class SpeechBrainJsonSink(_FileSink):
    """SpeechBrain JSON: one object keyed by utterance id, written entry by entry (never built in memory).

    Duplicate ids would silently collapse in a JSON object, so they are an error (this keeps a set of ids).
    """

    def __init__(self, path: str | Path):
        super().__init__(path)
        self.fh.write("{")
        self._seen: set[str] = set()

    def write(self, u: Utterance) -> None:
        if u.id in self._seen:
            raise SpxError(f"duplicate utterance id {u.id!r}", hint="ids must be unique; run `spx manifest validate`")
        self._seen.add(u.id)
        sep = ",\n" if self.count else "\n"
        self.fh.write(f"{sep}{json.dumps(u.id, ensure_ascii=False)}: {json.dumps(speechbrain_json_entry(u), ensure_ascii=False)}")
        self.count += 1

    def close(self) -> int:
        self.fh.write("\n}\n")
        return super().close()


def export_speechbrain_json(utts: Iterable[Utterance], path: str | Path) -> int:
    """SpeechBrain JSON: one object keyed by utterance id."""
    return _drain(utts, SpeechBrainJsonSink(path))


# ---------------------------------------------------------------- Kaldi / ESPnet
_NOT_ONE_LINE = re.compile(r"[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]|^\s|\s$")


def _kaldi_representable(s: str) -> bool:
    """Can `s` be the rest of a Kaldi line and read back unchanged?"""
    return _NOT_ONE_LINE.search(s) is None


def _one_line(s: str) -> str:
    return " ".join(s.split())


KALDI_SORTED_FILES = ("wav.scp", "text", "utt2spk", "utt2dur", "spx_id_map", "segments")


def kaldi_reco_id(audio: str) -> str:
    """Recording id of an audio path (segments mode): readable stem + hash, the same in every worker."""
    stem = kaldi_safe(Path(audio.rstrip(" |")).stem)[:40]
    return f"{stem}_{hashlib.blake2s(audio.encode(), digest_size=6).hexdigest()}"


class KaldiSink:
    """Kaldi data dir: wav.scp, text, utt2spk, spk2utt, utt2dur (+ segments when offsets exist).

    Utterance ids become Kaldi-safe and are prefixed with their speaker (Kaldi's sorting convention);
    `spx_id_map` keeps kaldi-id -> original id and `spx_extra.jsonl` keeps what Kaldi has no file for
    (original id, speaker, language, label, ...), so spx -> Kaldi -> spx is exact. Files are sorted as Kaldi
    requires (C locale byte order). Memory stays bounded: lines are written unsorted, then GNU sort (which
    spills to disk) orders each file, and spk2utt is derived from the sorted utt2spk.

    With `part_dir`, the sink only writes its unsorted part (parallel export); `finish_kaldi` merges parts.
    """

    def __init__(self, out_dir: str | Path, part_dir: str | Path | None = None):
        self.out = Path(out_dir)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.part_mode = part_dir is not None
        self.tmp = Path(part_dir) if part_dir is not None else Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}."))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.files = {n: (self.tmp / n).open("w", encoding="utf-8", buffering=1 << 20) for n in KALDI_SORTED_FILES + ("spx_extra.jsonl",)}
        self.count = 0
        self._recos: set[str] = set()
        self.has_offsets = False

    def write(self, u: Utterance) -> None:
        kid = kaldi_utt_id(u.id, u.speaker)
        enc = _enc
        extra = ['{"kaldi_id": ', enc(kid)]
        if u.id != kid:
            extra += (', "id": ', enc(u.id))
        if u.speaker is not None:
            extra += (', "speaker": ', enc(u.speaker))
        if u.language is not None:
            extra += (', "language": ', enc(u.language))
        if u.label is not None:
            extra += (', "label": ', enc(u.label))
        if u.sample_rate is not None:
            extra += (', "sample_rate": ', str(u.sample_rate))
        if u.channels is not None:
            extra += (', "channels": ', str(u.channels))
        if u.meta:
            extra += (', "meta": ', json.dumps(u.meta, ensure_ascii=False))
        text = u.text
        if text is None:
            extra.append(', "no_text": true')
        elif not _kaldi_representable(text):
            extra += (', "text": ', enc(text))
            text = _one_line(text)
        if not _kaldi_representable(u.audio):
            raise SpxError(f"utterance {u.id!r}: audio path {u.audio!r} cannot be written to a Kaldi wav.scp "
                           "(leading/trailing whitespace or a line break)", hint="rename the audio file")
        f = self.files
        spk = kaldi_safe(u.speaker) if u.speaker else kid
        f["utt2spk"].write(f"{kid} {spk}\n")
        f["text"].write(f"{kid} {text or ''}\n")
        f["utt2dur"].write(f"{kid} {u.duration!r}\n")
        f["spx_id_map"].write(f"{kid} {u.id}\n")
        if len(extra) > 2:
            extra.append("}\n")
            f["spx_extra.jsonl"].write("".join(extra))
        if u.offset:
            reco = kaldi_reco_id(u.audio)
            if reco not in self._recos:
                self._recos.add(reco)
                f["wav.scp"].write(f"{reco} {u.audio}\n")
            f["segments"].write(f"{kid} {reco} {u.offset!r} {u.offset + u.duration!r}\n")
            if not self.has_offsets:
                self.has_offsets = True
                (self.tmp / ".has_offsets").touch()
        else:
            f["segments"].write(f"{kid} {kid} 0.0 {u.duration!r}\n")  # dropped if no row has an offset
            f["wav.scp"].write(f"{kid} {u.audio}\n")
        self.count += 1

    def _close_files(self) -> None:
        for fh in self.files.values():
            fh.close()

    def close(self) -> int:
        self._close_files()
        if not self.part_mode:
            try:
                finish_kaldi([self.tmp], self.out, self.tmp)
            except BaseException:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
        return self.count

    def abort(self) -> None:
        self._close_files()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _has_offsets(parts: list[Path]) -> bool:
    """Segments mode iff some row of some part had an offset (each part leaves a marker file)."""
    return any((part / ".has_offsets").exists() for part in parts)


def finish_kaldi(parts: list[Path], out: Path, work: Path) -> None:
    """Sort and merge the unsorted parts into the final Kaldi dir `out` (built in `work`, then renamed)."""
    sort = shutil.which("sort")
    if sort is None:
        raise SpxError("the `sort` command (GNU coreutils) is needed to write a Kaldi data dir", hint="install coreutils")
    segments = _has_offsets(parts)
    names = [n for n in KALDI_SORTED_FILES if segments or n != "segments"]
    env = {**os.environ, "LC_ALL": "C"}
    procs = []
    sorted_dir = work / ".sorted"
    sorted_dir.mkdir(parents=True)
    for name in names:
        # whole-line byte order == order by id: Kaldi-safe ids only hold bytes above the separating space
        cmd = [sort, "-S", "10%", "-T", str(work), "-o", str(sorted_dir / name)]
        if name == "wav.scp" and segments:
            cmd.append("-u")  # one line per recording, whichever part saw it
        procs.append((name, subprocess.Popen(cmd + [str(p / name) for p in parts], env=env, stderr=subprocess.PIPE)))
    failed = [(name, p.communicate()[1]) for name, p in procs if p.wait() != 0]
    if failed:
        raise SpxError(f"sorting {failed[0][0]} failed: {failed[0][1].decode(errors='replace').strip()}", hint="check free disk space")
    # spk2utt from the sorted utt2spk; adjacent equal ids are collisions
    spk2utt: dict[str, list[str]] = {}
    prev = None
    with (sorted_dir / "utt2spk").open(encoding="utf-8") as fh:
        for line in fh:
            kid, spk = line.split()
            if kid == prev:
                raise SpxError(f"two utterances map to the Kaldi id {kid!r}",
                               hint="ids must be unique (and unique once made Kaldi-safe); run `spx manifest validate`")
            prev = kid
            lst = spk2utt.get(spk)
            if lst is None:
                spk2utt[spk] = [kid]
            else:
                lst.append(kid)
    with (sorted_dir / "spk2utt").open("w", encoding="utf-8", buffering=1 << 20) as fh:
        for spk in sorted(spk2utt, key=str.encode):
            fh.write(f"{spk} {' '.join(spk2utt[spk])}\n")
    del spk2utt
    with (sorted_dir / "spx_extra.jsonl").open("wb") as dst:
        for p in parts:
            with (p / "spx_extra.jsonl").open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(sorted_dir, out)
    for p in parts:
        shutil.rmtree(p, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def export_kaldi(utts: Iterable[Utterance], out_dir: str | Path) -> int:
    """Kaldi data dir: wav.scp, text, utt2spk, spk2utt, utt2dur (+ segments when offsets exist).

    See KaldiSink. Returns the number of utterances written.
    """
    return _drain(utts, KaldiSink(out_dir))


# ---------------------------------------------------------------- one pass, many formats
SINKS = {
    "nemo": NemoSink,
    "speechbrain_csv": SpeechBrainCsvSink,
    "speechbrain_json": SpeechBrainJsonSink,
    "kaldi": KaldiSink,
}


def _drain(utts: Iterable[Utterance], sink) -> int:
    try:
        for u in utts:
            sink.write(u)
    except BaseException:
        sink.abort()
        raise
    return sink.close()


def convert(utts: Iterable[Utterance], targets: dict[str, str | Path]) -> int:
    """Write `utts` once into several formats, e.g. {"nemo": "a.json", "kaldi": "data/train"}; returns the count."""
    unknown = set(targets) - set(SINKS)
    if unknown:
        raise SpxError(f"unknown export format(s) {sorted(unknown)}", hint=f"formats: {', '.join(SINKS)}")
    sinks = []
    try:
        for fmt, path in targets.items():
            sinks.append(SINKS[fmt](path))
        n = 0
        writes = [s.write for s in sinks]
        for u in utts:
            for w in writes:
                w(u)
            n += 1
    except BaseException:
        for s in sinks:
            s.abort()
        raise
    for s in sinks:
        s.close()
    return n


EXPORTERS = {
    "nemo": export_nemo,
    "speechbrain_csv": export_speechbrain_csv,
    "speechbrain_json": export_speechbrain_json,
    "kaldi": export_kaldi,
}


# ---------------------------------------------------------------- a manifest file, in parallel byte ranges
def _byte_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    size = path.stat().st_size
    bounds = [0]
    with path.open("rb") as fh:
        for k in range(1, parts):
            fh.seek(max(bounds[-1], size * k // parts))
            fh.readline()  # move to the start of the next line
            bounds.append(min(fh.tell(), size))
    bounds.append(size)
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _lines_in(path: Path, start: int, end: int):
    with path.open("rb") as fh:
        fh.seek(start)
        pos = start
        for raw in fh:
            if pos >= end:
                return
            pos += len(raw)
            yield raw


def _convert_part(path: str, start: int, end: int, index: int, parts: dict[str, str]) -> int:
    """Worker: convert the lines in [start, end) of `path` into unsorted/unjoined part files."""
    from spx.manifests.io import parse_manifest_lines

    p = Path(path)
    first_lineno = 1
    if start:
        with p.open("rb") as fh:  # line numbers for error messages
            remaining = start
            while remaining:
                chunk = fh.read(min(remaining, 1 << 24))
                first_lineno += chunk.count(b"\n")
                remaining -= len(chunk)
    sinks = []
    for fmt, part in parts.items():
        if fmt == "kaldi":
            sinks.append(KaldiSink(part, part_dir=part))
        elif fmt == "speechbrain_csv":
            sink = SpeechBrainCsvSink(part)
            if index:  # the header comes from part 0 only
                sink.fh.seek(0)
                sink.fh.truncate()
            sinks.append(sink)
        else:
            sinks.append(SINKS[fmt](part))
    return _fan_out(parse_manifest_lines(_lines_in(p, start, end), p, True, first_lineno), sinks)


def _fan_out(utts: Iterable[Utterance], sinks: list) -> int:
    n = 0
    writes = [s.write for s in sinks]
    try:
        if len(writes) == 1:
            w = writes[0]
            for u in utts:
                w(u)
                n += 1
        else:
            for u in utts:
                for w in writes:
                    w(u)
                n += 1
    except BaseException:
        for s in sinks:
            s.abort()
        raise
    for s in sinks:
        s.close()
    return n


def convert_manifest(manifest: str | Path, targets: dict[str, str | Path], workers: int = 2) -> int:
    """Convert a manifest file into several formats at once, `workers` processes on byte ranges of the file.

    Same output as `convert(iter_manifest(manifest), targets)` (the SpeechBrain JSON is written by one process).
    """
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    from spx.manifests.io import iter_manifest

    src = Path(manifest)
    unknown = set(targets) - set(SINKS)
    if unknown:
        raise SpxError(f"unknown export format(s) {sorted(unknown)}", hint=f"formats: {', '.join(SINKS)}")
    if not src.is_file():
        raise SpxError(f"manifest not found: {src}", hint="check the path")
    ranges = _byte_ranges(src, workers)
    if workers <= 1 or len(ranges) <= 1 or "speechbrain_json" in targets:
        return convert(iter_manifest(src), targets)
    outs = {fmt: Path(p) for fmt, p in targets.items()}
    for o in outs.values():
        o.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=next(iter(outs.values())).parent, prefix=".spx-convert."))
    try:
        part_paths = [{fmt: str(work / f"{fmt}.{i}") for fmt in targets} for i in range(len(ranges))]
        with ProcessPoolExecutor(len(ranges), mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_convert_part, str(src), a, b, i, part_paths[i]) for i, (a, b) in enumerate(ranges)]
            counts = [f.result() for f in futures]  # the first failing range raises its SpxError (file:line) here
        for fmt, out in outs.items():
            parts = [Path(pp[fmt]) for pp in part_paths]
            if fmt == "kaldi":
                finish_kaldi(parts, out, work / "kaldi.work")
                continue
            tmp = work / f"{fmt}.joined"
            with tmp.open("wb") as dst:
                for part in parts:
                    with part.open("rb") as fh:
                        shutil.copyfileobj(fh, dst, 1 << 20)
                    part.unlink()
            os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sum(counts)
