"""Exporters from the spx manifest to each backend's native input. All stream; none loads audio.

Each format is a *sink* (`write_batch(rows)`, `write(utt)`, `close()`, `abort()`), so one pass over a manifest can
feed several formats at once (`convert`). The `export_*` functions are the one-format shortcuts.
Everything is written to a temp path and renamed on success: a failed export leaves nothing half-written.
Sinks take batches of rows and write each file once per batch from preformatted lines (str.join): per-row
Python is what the time goes to (see docs/manifests.md, Benchmark). A row is an Utterance or anything with its
attributes (`spx.manifests.fastrow.Row`, what `convert_manifest` reads).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from itertools import islice
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from spx.errors import SpxError
from spx.manifests.schema import Utterance

_enc = json.encoder.encode_basestring  # the C string encoder json.dumps(ensure_ascii=False) uses
_KALDI_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
BATCH_ROWS = 256  # rows per write_batch: amortizes the calls and stays in CPU cache across sinks (4096: 30% slower)


def _batches(rows: Iterable[Any], size: int = BATCH_ROWS) -> Iterator[list]:
    it = iter(rows)
    while batch := list(islice(it, size)):
        yield batch


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

    def write(self, u: Utterance) -> None:
        self.write_batch((u,))

    def write_batch(self, rows: Sequence[Any]) -> None:
        raise NotImplementedError

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


_K_OFFSET, _K_UTT_ID, _K_SPEAKER, _K_LANG = ', "offset": ', ', "utt_id": ', ', "speaker": ', ', "lang": '
_EMPTY_JSON_STR = '""'
_K_LABEL, _K_RATE, _K_CHANNELS, _K_NO_TEXT, _K_META = (', "label": ', ', "sample_rate": ', ', "channels": ',
                                                      ', "spx_no_text": true', ', "spx_meta": ')


def nemo_lines(rows: Iterable[Any]) -> str:
    """NeMo JSONL lines of `rows`: the same bytes as `json.dumps(nemo_row(u), ensure_ascii=False)` per row,
    formatted directly (~3x faster; tests/test_manifest_roundtrip.py checks the equality)."""
    enc, dumps = _enc, json.dumps
    out = []
    append = out.append
    for u in rows:
        text, offset, speaker, lang, label, rate, channels, meta = (
            u.text, u.offset, u.speaker, u.language, u.label, u.sample_rate, u.channels, u.meta)
        append(f'{{"audio_filepath": {enc(u.audio)}, "duration": {u.duration!r}, "text": {_EMPTY_JSON_STR if text is None else enc(text)}'
               f'{_K_OFFSET + repr(offset) if offset else ""}{_K_UTT_ID}{enc(u.id)}'
               f'{"" if speaker is None else _K_SPEAKER + enc(speaker)}{"" if lang is None else _K_LANG + enc(lang)}'
               f'{"" if label is None else _K_LABEL + enc(label)}{"" if rate is None else _K_RATE + str(rate)}'
               f'{"" if channels is None else _K_CHANNELS + str(channels)}{_K_NO_TEXT if text is None else ""}'
               f'{_K_META + dumps(meta, ensure_ascii=False) if meta else ""}}}\n')
    return "".join(out)


class NemoSink(_FileSink):
    """NeMo JSONL (`audio_filepath`, `duration`, `text`, `offset`, `lang`, ...). NeMo ignores the extra keys."""

    def write_batch(self, rows: Sequence[Any]) -> None:
        self.fh.write(nemo_lines(rows))
        self.count += len(rows)


def export_nemo(utts: Iterable[Utterance], path: str | Path) -> int:
    """NeMo JSONL (`audio_filepath`, `duration`, `text`, `offset`, `lang`, ...). Extra keys NeMo ignores."""
    return _drain(utts, NemoSink(path))


# ---------------------------------------------------------------- SpeechBrain
# `spx_empty` names the text columns whose value is "" rather than absent (an empty cell reads back as absent).
SB_COLUMNS = ["ID", "duration", "wav", "offset", "spk_id", "wrd", "language", "label", "sample_rate", "channels", "meta",
              "spx_empty"]
SB_TEXT_COLUMNS = (("speaker", "spk_id"), ("text", "wrd"), ("language", "language"), ("label", "label"))


_CSV_SPECIAL = re.compile(r'["\r\n]')  # with ',' (counted): the characters Python's csv writer quotes a field for


class _CsvRowFormatter:
    """csv.writer's own formatting of one row, for the rare rows the fast path cannot write."""

    def __init__(self):
        self._buf = io.StringIO(newline="")
        self._writer = csv.writer(self._buf)

    def __call__(self, fields: list) -> str:
        self._buf.seek(0)
        self._buf.truncate()
        self._writer.writerow(fields)
        return self._buf.getvalue()


def speechbrain_csv_fields(u: Any) -> list:
    """The SB_COLUMNS values of one row, as csv.writer gets them."""
    empty = " ".join(col for key, col in SB_TEXT_COLUMNS if getattr(u, key) == "")
    return [u.id, repr(u.duration), u.audio, repr(u.offset), u.speaker or "", u.text or "", u.language or "",
            u.label or "", u.sample_rate or "", u.channels or "", json.dumps(u.meta, ensure_ascii=False) if u.meta else "",
            empty]


def speechbrain_csv_lines(rows: Iterable[Any], csv_line: _CsvRowFormatter | None = None) -> str:
    """SpeechBrain CSV lines of `rows`: the bytes csv.writer writes for `speechbrain_csv_fields(u)`, joined directly
    where no field needs quoting (no ',', '"', CR or LF: then a row is its fields joined by ','), else by csv.writer."""
    csv_line = csv_line or _CsvRowFormatter()
    special, dumps = _CSV_SPECIAL.search, json.dumps
    out = []
    append = out.append
    last_column = len(SB_COLUMNS) - 1
    for u in rows:
        speaker, text, lang, label, meta = u.speaker, u.text, u.language, u.label, u.meta
        empty = (" ".join(col for key, col in SB_TEXT_COLUMNS if getattr(u, key) == "")
                 if "" in (speaker, text, lang, label) else "")
        line = (f'{u.id},{u.duration!r},{u.audio},{u.offset!r},{speaker or ""},{text or ""},{lang or ""},{label or ""},'
                f'{u.sample_rate or ""},{u.channels or ""},{dumps(meta, ensure_ascii=False) if meta else ""},{empty}\r\n')
        append(csv_line(speechbrain_csv_fields(u)) if line.count(",") != last_column or special(line, 0, len(line) - 2)
               else line)
    return "".join(out)


class SpeechBrainCsvSink(_FileSink):
    """SpeechBrain CSV in its LibriSpeech-recipe style (`ID,duration,wav,spk_id,wrd`) plus optional columns."""

    newline = ""

    def __init__(self, path: str | Path, header: bool = True):
        super().__init__(path)
        self._csv_line = _CsvRowFormatter()
        if header:
            self.fh.write(self._csv_line(SB_COLUMNS))

    def write_batch(self, rows: Sequence[Any]) -> None:
        self.fh.write(speechbrain_csv_lines(rows, self._csv_line))
        self.count += len(rows)


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

    def write_batch(self, rows: Sequence[Any]) -> None:
        for u in rows:
            self._write_one(u)

    def _write_one(self, u: Any) -> None:
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
    # fast path: every line break is non-printable and str.strip() strips what \s matches; the regex decides the rest
    return (s.isprintable() and s.strip() == s) or _NOT_ONE_LINE.search(s) is None


def _one_line(s: str) -> str:
    return " ".join(s.split())


KALDI_SORTED_FILES = ("wav.scp", "text", "utt2spk", "utt2dur", "spx_id_map", "segments")


def kaldi_reco_id(audio: str) -> str:
    """Recording id of an audio path (segments mode): readable stem + hash, the same in every worker."""
    stem = kaldi_safe(Path(audio.rstrip(" |")).stem)[:40]
    return f"{stem}_{hashlib.blake2s(audio.encode(), digest_size=6).hexdigest()}"


def _segments_from_utt2dur(utt2dur: Path, segments: IO[str]) -> None:
    """Segments lines of rows without an offset (each its own recording), from their utt2dur lines."""
    with utt2dur.open(encoding="utf-8") as src:
        while lines := src.readlines(1 << 20):
            segments.write("".join(f"{kid} {kid} 0.0 {dur}" for kid, dur in (line.split(" ", 1) for line in lines)))


_K_KALDI_ID, _K_ID, _K_LANGUAGE, _K_TEXT = '{"kaldi_id": ', ', "id": ', ', "language": ', ', "text": '
_K_NO_TEXT_KALDI, _K_META_KALDI = ', "no_text": true', ', "meta": '


class KaldiSink:
    """Kaldi data dir: wav.scp, text, utt2spk, spk2utt, utt2dur (+ segments when offsets exist).

    Utterance ids become Kaldi-safe and are prefixed with their speaker (Kaldi's sorting convention);
    `spx_id_map` keeps kaldi-id -> original id and `spx_extra.jsonl` keeps what Kaldi has no file for
    (original id, speaker, language, label, ...), so spx -> Kaldi -> spx is exact. Files are sorted as Kaldi
    requires (C locale byte order). Memory stays bounded: lines are written unsorted, then GNU sort (which
    spills to disk) orders each file, and spk2utt is streamed from the sorted utt2spk.
    `segments` is written from the first row with an offset on (earlier rows are filled in from utt2dur then).

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
        self._recos: dict[str, str] = {}  # audio -> recording id, of recordings already in this part's wav.scp
        self._speakers: dict[str, tuple[str, str, str]] = {}  # speaker -> (Kaldi-safe, its id prefix, its extra JSON)
        self._languages: dict[str, str] = {}  # language -> its extra JSON
        self.has_offsets = False

    def write(self, u: Utterance) -> None:
        self.write_batch((u,))

    def _start_segments(self) -> None:
        self.has_offsets = True
        (self.tmp / ".has_offsets").touch()
        self.files["utt2dur"].flush()
        _segments_from_utt2dur(self.tmp / "utt2dur", self.files["segments"])

    def _speaker(self, speaker: str) -> tuple[str, str, str]:
        safe = kaldi_safe(speaker)
        entry = self._speakers[speaker] = (safe, safe + "-", _K_SPEAKER + _enc(speaker))
        return entry

    def write_batch(self, rows: Sequence[Any]) -> None:
        if not self.has_offsets and any(u.offset for u in rows):
            self._start_segments()
        segments = self.has_offsets
        enc, dumps, breaks_line, unsafe = _enc, json.dumps, _NOT_ONE_LINE.search, _KALDI_UNSAFE.search
        speakers, languages, recos = self._speakers, self._languages, self._recos
        wav, text_lines, utt2spk, utt2dur, id_map, seg, extra = [], [], [], [], [], [], []
        for u in rows:
            uid, speaker, text, audio, duration = u.id, u.speaker, u.text, u.audio, u.duration
            kid = uid if uid and unsafe(uid) is None else kaldi_utt_id(uid, None)  # the speaker prefix follows
            if speaker:
                spk, prefix, speaker_json = speakers.get(speaker) or self._speaker(speaker)
                if not kid.startswith(prefix):
                    kid = prefix + kid
            else:
                spk, speaker_json = kid, ("" if speaker is None else _K_SPEAKER + '""')
            lang, label, rate, channels, meta = u.language, u.label, u.sample_rate, u.channels, u.meta
            if lang is not None:
                lang_json = languages.get(lang)
                if lang_json is None:
                    lang_json = languages[lang] = _K_LANGUAGE + enc(lang)
            else:
                lang_json = ""
            if text is None:
                text_json, text = _K_NO_TEXT_KALDI, ""
            elif (text.isprintable() and text.strip() == text) or breaks_line(text) is None:  # _kaldi_representable, inlined
                text_json = ""
            else:
                text_json, text = _K_TEXT + enc(text), _one_line(text)
            more = (f'{"" if uid == kid else _K_ID + enc(uid)}{speaker_json}{lang_json}'
                    f'{"" if label is None else _K_LABEL + enc(label)}{"" if rate is None else _K_RATE + str(rate)}'
                    f'{"" if channels is None else _K_CHANNELS + str(channels)}{_K_META_KALDI + dumps(meta, ensure_ascii=False) if meta else ""}'
                    f'{text_json}')
            if more:
                extra.append(f"{_K_KALDI_ID}{enc(kid)}{more}}}\n")
            if not ((audio.isprintable() and audio.strip() == audio) or breaks_line(audio) is None):
                raise SpxError(f"utterance {uid!r}: audio path {audio!r} cannot be written to a Kaldi wav.scp "
                               "(leading/trailing whitespace or a line break)", hint="rename the audio file")
            utt2spk.append(f"{kid} {spk}\n")
            text_lines.append(f"{kid} {text}\n")
            utt2dur.append(f"{kid} {duration!r}\n")
            id_map.append(f"{kid} {uid}\n")
            offset = u.offset
            if offset:
                reco = recos.get(audio)
                if reco is None:
                    reco = recos[audio] = kaldi_reco_id(audio)
                    wav.append(f"{reco} {audio}\n")
                seg.append(f"{kid} {reco} {offset!r} {offset + duration!r}\n")
            else:
                wav.append(f"{kid} {audio}\n")
                if segments:
                    seg.append(f"{kid} {kid} 0.0 {duration!r}\n")
        f = self.files
        for name, lines in (("wav.scp", wav), ("text", text_lines), ("utt2spk", utt2spk), ("utt2dur", utt2dur),
                            ("spx_id_map", id_map), ("segments", seg), ("spx_extra.jsonl", extra)):
            if lines:
                f[name].write("".join(lines))
        self.count += len(rows)

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


def _concatenate(parts: list[Path], out: Path) -> None:
    """Append the later parts to the first, which becomes `out` (the parts are gone after)."""
    with parts[0].open("ab") as dst:
        for part in parts[1:]:
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
            part.unlink()
    os.replace(parts[0], out)


def _has_offsets(parts: list[Path]) -> bool:
    """Segments mode iff some row of some part had an offset (each part leaves a marker file)."""
    return any((part / ".has_offsets").exists() for part in parts)


def _sort(inputs: list[Path], output: Path, work: Path, *options: str) -> subprocess.Popen:
    sort = shutil.which("sort")
    if sort is None:
        raise SpxError("the `sort` command (GNU coreutils) is needed to write a Kaldi data dir", hint="install coreutils")
    return subprocess.Popen([sort, "-S", "10%", "-T", str(work), *options, "-o", str(output), *map(str, inputs)],
                            env={**os.environ, "LC_ALL": "C"}, stderr=subprocess.PIPE)


def _wait(name: str, proc: subprocess.Popen) -> None:
    err = proc.communicate()[1]
    if proc.returncode != 0:
        raise SpxError(f"sorting {name} failed: {err.decode(errors='replace').strip()}", hint="check free disk space")


def _write_spk2utt(utt2spk: Path, spk2utt: Path, work: Path) -> None:
    """spk2utt from the sorted utt2spk, streamed (one speaker's ids in memory at a time); adjacent equal ids
    are collisions. When speakers are not contiguous in id order (speaker 'a' and 'a-b' interleave: 'a-a', 'a-b-x',
    'a-c'), utt2spk is sorted by speaker once more."""
    ordered = True
    with utt2spk.open("rb") as src, spk2utt.open("wb", buffering=1 << 20) as dst:
        prev_kid = speaker = None
        kids: list[bytes] = []
        for line in src:
            kid, spk = line.split()
            if kid == prev_kid:
                raise SpxError(f"two utterances map to the Kaldi id {kid.decode()!r}",
                               hint="ids must be unique (and unique once made Kaldi-safe); run `spx manifest validate`")
            prev_kid = kid
            if spk == speaker:
                kids.append(kid)
                continue
            if speaker is not None and ordered:
                ordered = spk > speaker
                dst.write(b"%s %s\n" % (speaker, b" ".join(kids)))
            speaker, kids = spk, [kid]
        if speaker is not None and ordered:
            dst.write(b"%s %s\n" % (speaker, b" ".join(kids)))
    if ordered:
        return
    by_speaker = work / "utt2spk.by_speaker"
    _wait("utt2spk", _sort([utt2spk], by_speaker, work, "-t", " ", "-k2,2", "-k1,1"))
    with by_speaker.open("rb") as src, spk2utt.open("wb", buffering=1 << 20) as dst:
        speaker, kids = None, []
        for line in src:
            kid, spk = line.split()
            if spk != speaker:
                if speaker is not None:
                    dst.write(b"%s %s\n" % (speaker, b" ".join(kids)))
                speaker, kids = spk, []
            kids.append(kid)
        if speaker is not None:
            dst.write(b"%s %s\n" % (speaker, b" ".join(kids)))
    by_speaker.unlink()


def finish_kaldi(parts: list[Path], out: Path, work: Path) -> None:
    """Sort and merge the unsorted parts into the final Kaldi dir `out` (built in `work`, then renamed)."""
    segments = _has_offsets(parts)
    if segments:
        for part in parts:
            if not (part / ".has_offsets").exists():
                with (part / "segments").open("w", encoding="utf-8", buffering=1 << 20) as fh:
                    _segments_from_utt2dur(part / "utt2dur", fh)
    sorted_dir = work / ".sorted"
    sorted_dir.mkdir(parents=True)
    # whole-line byte order == order by id: Kaldi-safe ids only hold bytes above the separating space.
    # utt2spk first: spk2utt is streamed from it while the other sorts run.
    names = ["utt2spk"] + [n for n in KALDI_SORTED_FILES if n != "utt2spk" and (segments or n != "segments")]
    procs = {}
    try:
        for name in names:
            # wav.scp in segments mode: one line per recording, whichever part saw it
            options = ("-u",) if name == "wav.scp" and segments else ()
            procs[name] = _sort([p / name for p in parts], sorted_dir / name, work, *options)
        _wait("utt2spk", procs["utt2spk"])
        _write_spk2utt(sorted_dir / "utt2spk", sorted_dir / "spk2utt", work)
        for name in names[1:]:
            _wait(name, procs[name])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    _concatenate([p / "spx_extra.jsonl" for p in parts], sorted_dir / "spx_extra.jsonl")
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
    return _fan_out(utts, [sink])


def _check_formats(targets: dict) -> None:
    unknown = set(targets) - set(SINKS)
    if unknown:
        raise SpxError(f"unknown export format(s) {sorted(unknown)}", hint=f"formats: {', '.join(SINKS)}")


def _open_sinks(targets: dict[str, str | Path]) -> list:
    sinks = []
    try:
        for fmt, path in targets.items():
            sinks.append(SINKS[fmt](path))
    except BaseException:
        for s in sinks:
            s.abort()
        raise
    return sinks


def convert(utts: Iterable[Utterance], targets: dict[str, str | Path]) -> int:
    """Write `utts` once into several formats, e.g. {"nemo": "a.json", "kaldi": "data/train"}; returns the count."""
    _check_formats(targets)
    return _fan_out(utts, _open_sinks(targets))


def _fan_out(rows: Iterable[Any], sinks: list) -> int:
    """Feed `rows` in batches to every sink, then close them all (or abort them all on any error)."""
    n = 0
    writers = [s.write_batch for s in sinks]
    try:
        for batch in _batches(rows):
            for write in writers:
                write(batch)
            n += len(batch)
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
    from spx.manifests.io import iter_rows

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
    try:
        for fmt, part in parts.items():
            if fmt == "kaldi":
                sinks.append(KaldiSink(part, part_dir=part))
            elif fmt == "speechbrain_csv":
                sinks.append(SpeechBrainCsvSink(part, header=index == 0))  # the header comes from part 0 only
            else:
                sinks.append(SINKS[fmt](part))
    except BaseException:
        for s in sinks:
            s.abort()
        raise
    return _fan_out(iter_rows(_lines_in(p, start, end), p, True, first_lineno), sinks)


def convert_manifest(manifest: str | Path, targets: dict[str, str | Path], workers: int = 2) -> int:
    """Convert a manifest file into several formats at once, `workers` processes on byte ranges of the file.

    Same output as `convert(iter_manifest(manifest), targets)` (the SpeechBrain JSON is written by one process).
    """
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    from spx.manifests.io import iter_manifest_rows

    src = Path(manifest)
    _check_formats(targets)
    if not src.is_file():
        raise SpxError(f"manifest not found: {src}", hint="check the path")
    ranges = _byte_ranges(src, workers)
    if workers <= 1 or len(ranges) <= 1 or "speechbrain_json" in targets:
        sinks = _open_sinks(targets)
        return _fan_out(iter_manifest_rows(src), sinks)
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
            _concatenate(parts, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sum(counts)
