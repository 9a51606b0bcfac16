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
    """NeMo JSONL (`audio_filepath`, `duration`, `text`, `offset`, `lang`, ...). NeMo ignores the extra keys."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._dumps = json.JSONEncoder(ensure_ascii=False).encode

    def write(self, u: Utterance) -> None:
        self.fh.write(self._dumps(nemo_row(u)) + "\n")
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
def _kaldi_representable(s: str) -> bool:
    """Can `s` be the rest of a Kaldi line and read back unchanged?"""
    return s == s.strip() and not any(c in s for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _one_line(s: str) -> str:
    return " ".join(s.split())


class KaldiSink:
    """Kaldi data dir: wav.scp, text, utt2spk, spk2utt, utt2dur (+ segments when offsets exist).

    Utterance ids become Kaldi-safe and are prefixed with their speaker (Kaldi's sorting convention);
    `spx_id_map` keeps kaldi-id -> original id and `spx_extra.jsonl` keeps what Kaldi has no file for
    (original id, speaker, language, label, ...), so spx -> Kaldi -> spx is exact. Files are sorted as Kaldi
    requires (C locale byte order). Memory stays bounded: records go to a temp file sorted by GNU sort,
    then every file is written in one streaming pass.
    """

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}."))
        self._records = (self.tmp / ".records").open("w", encoding="utf-8", buffering=1 << 20)
        self._dumps = json.JSONEncoder(ensure_ascii=False).encode
        self.count = 0
        self.has_segments = False

    def write(self, u: Utterance) -> None:
        kid = kaldi_utt_id(u.id, u.speaker)
        extra: dict = {"id": u.id} if u.id != kid else {}
        for key in ("speaker", "language", "label", "sample_rate", "channels"):
            value = getattr(u, key)
            if value is not None:
                extra[key] = value
        if u.meta:
            extra["meta"] = u.meta
        if u.text is None:
            extra["no_text"] = True
        elif not _kaldi_representable(u.text):
            extra["text"] = u.text
        if not _kaldi_representable(u.audio):
            raise SpxError(f"utterance {u.id!r}: audio path {u.audio!r} cannot be written to a Kaldi wav.scp "
                           "(leading/trailing whitespace or a line break)", hint="rename the audio file")
        if u.offset:
            self.has_segments = True
        # one record a line, sortable by its first field: kid \t json
        self._records.write(kid + "\t" + self._dumps([u.audio, u.duration, u.offset, u.text, extra]) + "\n")
        self.count += 1

    def close(self) -> int:
        self._records.close()
        try:
            self._finish()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return self.count

    def abort(self) -> None:
        self._records.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _finish(self) -> None:
        records = self.tmp / ".records"
        ordered = self.tmp / ".records.sorted"
        sort_records(records, ordered)
        records.unlink()
        names = ["wav.scp", "text", "utt2spk", "utt2dur", "spx_id_map", "spx_extra.jsonl"]
        if self.has_segments:
            names.append("segments")
        files = {n: (self.tmp / n).open("w", encoding="utf-8", buffering=1 << 20) for n in names}
        spk2utt: dict[str, list[str]] = {}
        recos: dict[str, str] = {}
        loads, dumps = json.loads, self._dumps
        prev = None
        try:
            with ordered.open(encoding="utf-8") as fh:
                for line in fh:
                    kid, _, payload = line.partition("\t")
                    if kid == prev:
                        raise SpxError(f"two utterances map to the Kaldi id {kid!r}",
                                       hint="ids must be unique (and unique once made Kaldi-safe); run `spx manifest validate`")
                    prev = kid
                    audio, duration, offset, text, extra = loads(payload)
                    speaker = extra.get("speaker")
                    spk = kaldi_safe(speaker) if speaker else kid
                    files["utt2spk"].write(f"{kid} {spk}\n")
                    spk2utt.setdefault(spk, []).append(kid)
                    files["text"].write(f"{kid} {_one_line(text) if text else ''}\n")
                    files["utt2dur"].write(f"{kid} {duration!r}\n")
                    files["spx_id_map"].write(f"{kid} {extra.get('id', kid)}\n")
                    if extra:
                        files["spx_extra.jsonl"].write(dumps({"kaldi_id": kid, **extra}) + "\n")
                    if self.has_segments:
                        reco = recos.setdefault(audio, f"reco{len(recos):08d}")
                        files["segments"].write(f"{kid} {reco} {offset!r} {offset + duration!r}\n")
                    else:
                        files["wav.scp"].write(f"{kid} {audio}\n")
            if self.has_segments:
                for audio, reco in recos.items():  # reco ids are zero-padded in insertion order: already sorted
                    files["wav.scp"].write(f"{reco} {audio}\n")
        finally:
            for f in files.values():
                f.close()
        ordered.unlink()
        with (self.tmp / "spk2utt").open("w", encoding="utf-8", buffering=1 << 20) as fh:
            for spk in sorted(spk2utt, key=str.encode):
                fh.write(f"{spk} {' '.join(spk2utt[spk])}\n")
        if self.out.exists():
            shutil.rmtree(self.out) if self.out.is_dir() else self.out.unlink()
        os.replace(self.tmp, self.out)


def sort_records(src: Path, dst: Path) -> None:
    """Byte-order sort of a text file by GNU sort (bounded memory, spills to disk), keyed on the first tab field."""
    sort = shutil.which("sort")
    if sort is None:
        raise SpxError("the `sort` command (GNU coreutils) is needed to write a Kaldi data dir", hint="install coreutils")
    env = {**os.environ, "LC_ALL": "C"}
    proc = subprocess.run([sort, "-t", "\t", "-k1,1", "-s", "-S", "25%", "-T", str(src.parent), "-o", str(dst), str(src)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SpxError(f"sorting the Kaldi records failed: {proc.stderr.strip()}", hint="check free disk space")


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
