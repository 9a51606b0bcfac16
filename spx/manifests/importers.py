"""Importers from common corpus layouts into spx utterances (each is a lazy iterator of `Utterance`).

Durations come from the corpus' own durations file where it has one (Kaldi utt2dur/reco2dur, NeMo/SpeechBrain
`duration`, Common Voice clip_durations.tsv, Lhotse); otherwise from the audio header (never decoding the
audio), read by `workers` threads. Every problem is one SpxError naming file:line and how to fix it.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from spx.errors import SpxError
from spx.manifests.audioinfo import AudioInfo, audio_info, parallel_map, pipe_info
from spx.manifests.schema import ManifestRowError, Utterance

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".sph", ".aiff", ".aif")
csv.field_size_limit(1 << 24)


@dataclass
class ImportOptions:
    workers: int = 4                  # threads reading audio headers
    language: str | None = None       # filled in where the corpus does not say
    allow_pipes: bool = False         # Kaldi: run piped wav.scp commands to measure durations
    audio_root: str | None = None     # Kaldi: folder relative wav.scp paths resolve against (default: cwd)
    data_root: str | None = None      # SpeechBrain: value of $data_root / $root in paths
    text_column: str | None = None    # audiofolder / SpeechBrain CSV: which column holds the transcript
    file_column: str | None = None    # label CSV: which column holds the audio path (default: the first of FILE_COLUMNS)
    label_column: str | None = None   # label CSV / audiofolder: which column holds the class label


def _need(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise SpxError(f"{what} not found: {path}", hint=hint)
    return path


def _utt(where: str, **fields: Any) -> Utterance:
    try:
        return Utterance.from_dict({k: v for k, v in fields.items() if v is not None or k in ("id", "audio", "duration")})
    except ManifestRowError as exc:
        raise SpxError(str(exc), where=where, hint="fix this entry in the corpus files") from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) for a UTF-8 text file; blank lines skipped."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise SpxError(f"not UTF-8 (byte {exc.start})", where=f"{path}:{lineno}", hint="re-encode the file as UTF-8") from None
            if line.strip():
                yield lineno, line


def _with_info(rows: Iterator[tuple[str, dict]], opts: ImportOptions) -> Iterator[Utterance]:
    """rows: (where, fields without duration) -> utterances with duration/sample_rate/channels from the header."""
    def probe(row: tuple[str, dict]) -> Utterance:
        where, f = row
        if f.get("duration") is None:  # the corpus has no duration for it: read the header (never the samples)
            info = audio_info(f["audio"], where)
            f.update(duration=round(info.duration, 6), sample_rate=info.sample_rate, channels=info.channels)
        return _utt(where, **f)

    yield from parallel_map(probe, rows, opts.workers)


def _stem_id(path: str, offset: float | None = None) -> str:
    stem = Path(path).stem if not path.rstrip().endswith("|") else re.sub(r"\W+", "_", path).strip("_")
    return f"{stem}-{round(offset * 1000):08d}" if offset else stem


# ---------------------------------------------------------------- Kaldi
def _kaldi_table(path: Path) -> dict[str, str]:
    table: dict[str, str] = {}
    for lineno, line in _lines(path):
        key, _, value = line.lstrip().partition(" ")
        if "\t" in key:
            key, _, rest = key.partition("\t")
            value = rest + (" " + value if value else "")
        if key in table:
            raise SpxError(f"duplicate key {key!r}", where=f"{path}:{lineno}", hint="Kaldi tables have one line per key")
        table[key] = value.strip() if path.name != "text" else value.lstrip()
    return table


def _float(value: str, where: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SpxError(f"{what} {value!r} is not a number", where=where, hint="fix the Kaldi file") from None


def import_kaldi(src: str | Path, opts: ImportOptions) -> Iterator[Utterance]:
    """Kaldi/ESPnet data dir: wav.scp (paths or `cmd |`), optional segments, text, utt2spk, utt2dur, reco2dur.

    Dirs written by spx (spx_id_map + spx_extra.jsonl) come back exactly: original ids and every field.
    """
    d = Path(src)
    if not d.is_dir():
        raise SpxError(f"Kaldi data dir not found: {d}", hint="pass the folder holding wav.scp, text, utt2spk")
    wav_scp = _need(d / "wav.scp", "wav.scp", "a Kaldi data dir needs wav.scp")
    table = lambda name: _kaldi_table(d / name) if (d / name).exists() else None  # noqa: E731
    wavs, text, utt2spk, utt2dur, reco2dur = (table(n) for n in ("wav.scp", "text", "utt2spk", "utt2dur", "reco2dur"))
    assert wavs is not None
    extras: dict[str, dict] = {}
    spx_made = (d / "spx_id_map").exists()
    if (d / "spx_extra.jsonl").exists():
        for lineno, line in _lines(d / "spx_extra.jsonl"):
            try:
                row = json.loads(line)
                extras[row.pop("kaldi_id")] = row
            except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
                raise SpxError("malformed spx_extra.jsonl row", where=f"{d / 'spx_extra.jsonl'}:{lineno}",
                               hint="re-export the data dir with spx") from None
    root = Path(opts.audio_root) if opts.audio_root else Path.cwd()

    def audio_path(reco: str, where: str) -> str:
        if reco not in wavs:
            raise SpxError(f"recording {reco!r} is not in wav.scp", where=where, hint="add it to wav.scp or drop the segment")
        a = wavs[reco]
        if not a:
            raise SpxError(f"recording {reco!r} has no path in wav.scp", where=f"{wav_scp}")
        if a.endswith("|") or os.path.isabs(a) or "://" in a:
            return a
        return str(root / a)

    def duration_of(audio: str, where: str) -> AudioInfo:
        if audio.endswith("|"):
            if not opts.allow_pipes:
                raise SpxError(f"piped wav.scp entry and no utt2dur/reco2dur: {audio!r}", where=where,
                               hint="provide utt2dur or reco2dur (utils/data/get_utt2dur.sh), or pass --allow-pipes to run the commands")
            return pipe_info(audio, where)
        return audio_info(audio, where)

    def finish(kid: str, where: str, audio: str, duration: float, offset: float) -> Utterance:
        extra = extras.get(kid, {})
        txt = extra["text"] if "text" in extra else (None if extra.get("no_text") else (text.get(kid) if text is not None else None))
        speaker = extra.get("speaker") if spx_made else (utt2spk.get(kid) if utt2spk else None)
        return _utt(where, id=extra.get("id", kid), audio=audio, duration=duration, offset=offset, text=txt,
                    speaker=speaker, language=extra.get("language", opts.language), label=extra.get("label"),
                    sample_rate=extra.get("sample_rate"), channels=extra.get("channels"), meta=extra.get("meta"))

    if (d / "segments").exists():
        seg_file = d / "segments"

        def seg_rows() -> Iterator[Utterance]:
            for lineno, line in _lines(seg_file):
                where = f"{seg_file}:{lineno}"
                parts = line.split()
                if len(parts) != 4:
                    raise SpxError(f"segments line needs 4 fields (utt reco start end), got {len(parts)}", where=where)
                kid, reco, start_s, end_s = parts
                start, end = _float(start_s, where, "start"), _float(end_s, where, "end")
                audio = audio_path(reco, where)
                if utt2dur is not None and kid in utt2dur:
                    duration = _float(utt2dur[kid], f"{d / 'utt2dur'}", "duration")
                elif end == -1:
                    total = (_float(reco2dur[reco], str(d / "reco2dur"), "duration") if reco2dur and reco in reco2dur
                             else duration_of(audio, where).duration)
                    duration = total - start
                else:
                    duration = end - start
                yield finish(kid, where, audio, duration, start)

        yield from seg_rows()
        return

    def wav_rows() -> Iterator[tuple[str, str, str, float | None]]:
        for lineno, line in _lines(wav_scp):
            kid = line.lstrip().split(maxsplit=1)[0]
            where = f"{wav_scp}:{lineno}"
            audio = audio_path(kid, where)
            dur = None
            if utt2dur is not None and kid in utt2dur:
                dur = _float(utt2dur[kid], str(d / "utt2dur"), "duration")
            elif reco2dur is not None and kid in reco2dur:
                dur = _float(reco2dur[kid], str(d / "reco2dur"), "duration")
            yield kid, where, audio, dur

    def complete(row: tuple[str, str, str, float | None]) -> Utterance:
        kid, where, audio, dur = row
        if dur is None:
            dur = duration_of(audio, where).duration
        return finish(kid, where, audio, dur, 0.0)

    yield from parallel_map(complete, wav_rows(), opts.workers)


# ---------------------------------------------------------------- NeMo
_NEMO_FIELDS = {"audio_filepath", "duration", "text", "offset", "utt_id", "speaker", "lang", "label", "sample_rate",
                "channels", "spx_no_text", "spx_meta"}


def import_nemo(src: str | Path, opts: ImportOptions) -> Iterator[Utterance]:
    """NeMo JSONL: audio_filepath, duration, text, offset, lang, speaker, ... (other keys go to meta)."""
    p = _need(Path(src), "NeMo manifest", "pass the .json/.jsonl manifest file")
    base = p.resolve().parent
    for lineno, line in _lines(p):
        where = f"{p}:{lineno}"
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise SpxError(f"invalid JSON: {exc}", where=where, hint="NeMo manifests hold one JSON object per line") from None
        if not isinstance(row, dict):
            raise SpxError(f"a NeMo manifest row must be a JSON object, got {type(row).__name__}", where=where)
        audio = row.get("audio_filepath")
        if not isinstance(audio, str) or not audio:
            raise SpxError("missing 'audio_filepath'", where=where, hint="every NeMo row needs audio_filepath and duration")
        if not (os.path.isabs(audio) or "://" in audio or audio.endswith("|")):
            audio = str(base / audio)
        meta = {k: v for k, v in row.items() if k not in _NEMO_FIELDS}
        if "spx_meta" in row:
            if not isinstance(row["spx_meta"], dict):
                raise SpxError("'spx_meta' must be an object", where=where)
            meta.update(row["spx_meta"])
        text = None if row.get("spx_no_text") else row.get("text")
        yield _utt(where, id=row.get("utt_id", _stem_id(audio, row.get("offset") if isinstance(row.get("offset"), (int, float)) else None)),
                   audio=audio, duration=row.get("duration"), offset=row.get("offset"), text=text,
                   speaker=row.get("speaker"), language=row.get("lang", opts.language), label=row.get("label"),
                   sample_rate=row.get("sample_rate"), channels=row.get("channels"), meta=meta or None)


# ---------------------------------------------------------------- SpeechBrain
_SB_VAR = re.compile(r"\$([\w.]+)")
_SB_TEXT = ("wrd", "words", "transcript", "text", "char")
_SB_KNOWN = {"ID", "duration", "wav", "offset", "spk_id", "language", "label", "sample_rate", "channels", "meta", "spx_empty"}


def _sb_path(value: str, where: str, opts: ImportOptions, base: Path) -> str:
    def sub(m: re.Match) -> str:
        if opts.data_root is None:
            raise SpxError(f"path {value!r} uses ${m.group(1)}", where=where,
                           hint=f"pass --data-root DIR (the value of ${m.group(1)})")
        return opts.data_root

    value = _SB_VAR.sub(sub, value)
    return value if os.path.isabs(value) or "://" in value else str(base / value)


def _int_or_none(v: str, where: str, name: str) -> int | None:
    if v in ("", None):
        return None
    try:
        return int(v)
    except ValueError:
        raise SpxError(f"column {name!r}: {v!r} is not an integer", where=where) from None


def import_speechbrain_csv(src: str | Path, opts: ImportOptions) -> Iterator[Utterance]:
    """SpeechBrain CSV (`ID,duration,wav,spk_id,wrd`, ...); other columns go to meta."""
    p = _need(Path(src), "SpeechBrain CSV", "pass the .csv file")
    base = p.resolve().parent
    with p.open(encoding="utf-8", newline="") as fh:
        try:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in ("ID", "duration", "wav") if c not in header]
            if missing:
                raise SpxError(f"missing column(s) {missing}; found {header}", where=f"{p}:1",
                               hint="a SpeechBrain CSV needs at least ID, duration, wav")
            text_col = opts.text_column or next((c for c in _SB_TEXT if c in header), None)
            if text_col is not None and text_col not in header:
                raise SpxError(f"text column {text_col!r} not in {header}", where=f"{p}:1")
            for row in reader:
                where = f"{p}:{reader.line_num}"
                if None in row or any(v is None for v in row.values()):
                    raise SpxError(f"row has {len(row) - (None in row) + len(row.get(None) or [])} fields, the header {len(header)}",
                                   where=where, hint="quote fields that contain commas")
                empty = set((row.get("spx_empty") or "").split())
                get = lambda col: row.get(col) or ("" if col in empty else None)  # noqa: E731
                meta: dict = {}
                if row.get("meta"):
                    try:
                        meta = json.loads(row["meta"])
                    except ValueError:
                        raise SpxError("column 'meta' is not JSON", where=where) from None
                for k, v in row.items():
                    if k not in _SB_KNOWN and k != text_col and v != "":
                        meta.setdefault(k, v)
                yield _utt(where, id=row["ID"], audio=_sb_path(row["wav"], where, opts, base),
                           duration=_float(row["duration"], where, "duration"),
                           offset=_float(row["offset"], where, "offset") if row.get("offset") else None,
                           text=get(text_col) if text_col else None, speaker=get("spk_id"),
                           language=opts.language if get("language") is None else get("language"), label=get("label"),
                           sample_rate=_int_or_none(row.get("sample_rate"), where, "sample_rate"),
                           channels=_int_or_none(row.get("channels"), where, "channels"), meta=meta or None)
        except UnicodeDecodeError as exc:
            raise SpxError(f"not UTF-8 (byte {exc.start})", where=str(p), hint="re-encode the CSV as UTF-8") from None
        except csv.Error as exc:
            raise SpxError(f"malformed CSV: {exc}", where=str(p)) from None


def import_speechbrain_json(src: str | Path, opts: ImportOptions) -> Iterator[Utterance]:
    """SpeechBrain JSON: {id: {wav, duration, spk_id, wrd, ...}} (a JSON object is read whole by its nature)."""
    p = _need(Path(src), "SpeechBrain JSON", "pass the .json file")
    base = p.resolve().parent
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SpxError(f"not UTF-8 (byte {exc.start})", where=str(p)) from None
    except json.JSONDecodeError as exc:
        raise SpxError(f"invalid JSON: {exc.msg}", where=f"{p}:{exc.lineno}", hint="a SpeechBrain JSON is one object keyed by id") from None
    except RecursionError:
        raise SpxError("invalid JSON: nested too deeply", where=str(p)) from None
    if not isinstance(data, dict):
        raise SpxError(f"a SpeechBrain JSON must be an object keyed by utterance id, got {type(data).__name__}", where=str(p))
    known = {"wav", "duration", "offset", "spk_id", "wrd", "language", "label", "sample_rate", "channels", "meta"}
    for uid, e in data.items():
        where = f"{p}: entry {uid!r}"
        if not isinstance(e, dict):
            raise SpxError(f"entry must be an object, got {type(e).__name__}", where=where)
        if not isinstance(e.get("wav"), str):
            raise SpxError("missing 'wav' path", where=where, hint="each entry needs wav and duration")
        meta = dict(e["meta"]) if isinstance(e.get("meta"), dict) else {}
        if "meta" in e and not isinstance(e["meta"], dict):
            raise SpxError("'meta' must be an object", where=where)
        text_key = opts.text_column or ("wrd" if "wrd" in e else next((k for k in _SB_TEXT if k in e), "wrd"))
        for k, v in e.items():
            if k not in known and k != text_key:
                meta.setdefault(k, v)
        yield _utt(where, id=uid, audio=_sb_path(e["wav"], where, opts, base), duration=e.get("duration"),
                   offset=e.get("offset"), text=e.get(text_key), speaker=e.get("spk_id"),
                   language=e.get("language", opts.language), label=e.get("label"), sample_rate=e.get("sample_rate"),
                   channels=e.get("channels"), meta=meta or None)


# ---------------------------------------------------------------- LibriSpeech
def import_librispeech(src: str | Path, opts: ImportOptions) -> Iterator[Utterance]:
    """LibriSpeech layout: SPK/CHAPTER/SPK-CHAPTER.trans.txt + SPK-CHAPTER-NNNN.flac (e.g. LibriSpeech/dev-clean)."""
    root = Path(src)
    if not root.is_dir():
        raise SpxError(f"LibriSpeech folder not found: {root}", hint="pass a split folder such as LibriSpeech/dev-clean")
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise SpxError(f"no *.trans.txt under {root}", hint="pass a split folder such as LibriSpeech/dev-clean")

    def rows() -> Iterator[tuple[str, dict]]:
        for trans in transcripts:
            for lineno, line in _lines(trans):
                uid, _, text = line.partition(" ")
                where = f"{trans}:{lineno}"
                audio = next((trans.parent / f"{uid}{ext}" for ext in (".flac", ".wav") if (trans.parent / f"{uid}{ext}").exists()), None)
                if audio is None:
                    raise SpxError(f"no audio {uid}.flac beside the transcript", where=where, hint="is the corpus complete?")
                yield where, {"id": uid, "audio": str(audio.resolve()), "text": text.strip(), "speaker": uid.split("-")[0],
                              "language": opts.language}

    return _with_info(rows(), opts)


# ---------------------------------------------------------------- Common Voice
def import_commonvoice(src: str | Path, opts: ImportOptions) -> Iterator[Utterance]:
    """Common Voice TSV (train.tsv, dev.tsv, test.tsv, validated.tsv) with clips/*.mp3 beside it.

    Durations come from clip_durations.tsv (milliseconds) when it exists, otherwise from the mp3 headers.
    """
    tsv = Path(src)
    if tsv.is_dir():
        raise SpxError(f"{tsv} is a folder", hint=f"pass one split's TSV, e.g. {tsv / 'train.tsv'}")
    _need(tsv, "Common Voice TSV", "pass e.g. cv-corpus-17.0/en/train.tsv")
    clips = tsv.resolve().parent / "clips"
    durations: dict[str, float] = {}
    dur_file = tsv.parent / "clip_durations.tsv"
    if dur_file.exists():
        for lineno, line in _lines(dur_file):
            if lineno == 1:
                continue
            name, _, ms = line.partition("\t")
            durations[name] = _float(ms, f"{dur_file}:{lineno}", "duration (ms)") / 1000.0

    def rows() -> Iterator[tuple[str, dict]]:
        with tsv.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None) or []
            missing = [c for c in ("client_id", "path", "sentence") if c not in header]
            if missing:
                raise SpxError(f"missing column(s) {missing}; found {header}", where=f"{tsv}:1",
                               hint="a Common Voice TSV has client_id, path, sentence, ...")
            for lineno, values in enumerate(reader, 2):
                where = f"{tsv}:{lineno}"
                if len(values) != len(header):
                    raise SpxError(f"row has {len(values)} fields, the header {len(header)}", where=where)
                row = dict(zip(header, values))
                meta = {k: row[k] for k in ("age", "gender", "accents", "variant", "up_votes", "down_votes", "segment", "sentence_id")
                        if row.get(k)}
                f = {"id": Path(row["path"]).stem, "audio": str(clips / row["path"]), "text": row["sentence"],
                     "speaker": row["client_id"], "language": row.get("locale") or opts.language, "meta": meta or None}
                if row["path"] in durations:
                    f["duration"] = durations[row["path"]]
                yield where, f

    def complete(row: tuple[str, dict]) -> Utterance:
        where, f = row
        if "duration" not in f:
            info = audio_info(f["audio"], where)
            f.update(duration=round(info.duration, 6), sample_rate=info.sample_rate, channels=info.channels)
        return _utt(where, **f)

    try:
        yield from parallel_map(complete, rows(), opts.workers)
    except UnicodeDecodeError as exc:
        raise SpxError(f"not UTF-8 (byte {exc.start})", where=str(tsv)) from None


# ---------------------------------------------------------------- LJSpeech
def import_ljspeech(src: str | Path, opts: ImportOptions) -> Iterator[Utterance]:
    """LJSpeech layout: metadata.csv (`id|text|normalized text`, no header) + wavs/ID.wav."""
    root = Path(src)
    meta_file = _need(root / "metadata.csv" if root.is_dir() else root, "LJSpeech metadata.csv",
                      "pass the LJSpeech-1.1 folder (holding metadata.csv and wavs/)")
    wavs = meta_file.resolve().parent / "wavs"

    def rows() -> Iterator[tuple[str, dict]]:
        for lineno, line in _lines(meta_file):
            where = f"{meta_file}:{lineno}"
            parts = line.split("|")
            if len(parts) not in (2, 3) or not parts[0]:
                raise SpxError(f"expected `id|text|normalized text`, got {len(parts)} field(s)", where=where,
                               hint="LJSpeech metadata.csv is '|'-separated with no header")
            text = parts[2] if len(parts) == 3 and parts[2] else parts[1]
            yield where, {"id": parts[0], "audio": str(wavs / f"{parts[0]}.wav"), "text": text,
                          "language": opts.language, "meta": {"raw_text": parts[1]} if parts[1] != text else None}

    return _with_info(rows(), opts)


# ---------------------------------------------------------------- classification layouts (and HF audiofolder)
# split folder / list names -> spx split names (the names `spx manifest split` writes)
SPLIT_NAMES = {"train": "train", "training": "train", "validation": "valid", "valid": "valid", "val": "valid",
               "dev": "valid", "test": "test", "testing": "test", "eval": "test", "evaluation": "test"}
NOT_A_CLASS = ("_background_noise_",)  # speech_commands: long noise recordings for augmentation, not a class
FILE_COLUMNS = ("file", "path", "filename", "file_name", "audio", "wav", "audio_path", "audio_filepath")
LABEL_COLUMNS = ("label", "class", "category")
_NOHASH = re.compile(r"^(.+?)_nohash_\d+$")  # speech_commands file names: <speaker>_nohash_<n>.wav


def _label(value: Any, where: str, column: str) -> str:
    label = "" if value is None else str(value).strip()
    if not label:
        raise SpxError(f"empty label in column {column!r}", where=where,
                       hint="give every row a class label, or drop the row")
    return label


def _existing_audio(audio: str, where: str, hint: str) -> str:
    if "://" not in audio and not Path(audio).is_file():
        raise SpxError(f"audio file not found: {audio}", where=where, hint=hint)
    return audio


def _split_name(value: str, where: str) -> str:
    name = SPLIT_NAMES.get(value.strip().lower())
    if name is None:
        raise SpxError(f"split {value!r} is not one of {sorted(set(SPLIT_NAMES))}", where=where,
                       hint="name splits train, validation (valid, dev) or test")
    return name


def _column(explicit: str | None, candidates: tuple[str, ...], header: list[str], what: str, option: str,
            where: str) -> str:
    if explicit is not None:
        if explicit not in header:
            raise SpxError(f"no {what} column {explicit!r}; the header has {header}", where=where,
                           hint=f"pass {option} with one of the header's columns")
        return explicit
    found = next((c for c in candidates if c in header), None)
    if found is None:
        raise SpxError(f"no {what} column: the header {header} has none of {list(candidates)}", where=where,
                       hint=f"name the column with {option}")
    return found


def import_class_folders(src: str | Path, opts: ImportOptions) -> Iterator[Utterance]:
    """A folder per class (speech_commands layout): `<root>/<label>/*.wav`, label = the folder's name.

    `_background_noise_` is not a class. Where `validation_list.txt` / `testing_list.txt` sit in the root (paths
    relative to it, one a line), each row carries meta.split (valid / test; every other file train). File names
    `<speaker>_nohash_<n>` give the speaker."""
    root = Path(src)
    if not root.is_dir():
        raise SpxError(f"class-folder corpus not found: {root}", hint="pass the folder holding one subfolder per class")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and d.name not in NOT_A_CLASS and not d.name.startswith("."))
    if not classes:
        raise SpxError(f"no class folders under {root}", hint="the layout is <root>/<label>/*.wav")
    if all(d.name.lower() in SPLIT_NAMES for d in classes):
        raise SpxError(f"the folders under {root} are splits ({', '.join(d.name for d in classes)}), not classes",
                       hint="import it as audiofolder (split folders holding class folders)")
    lists = {"valid": root / "validation_list.txt", "test": root / "testing_list.txt"}
    has_lists = any(p.exists() for p in lists.values())
    split_of: dict[str, str] = {}
    for split, list_file in lists.items():
        if not list_file.exists():
            continue
        for lineno, line in _lines(list_file):
            rel, where = line.strip(), f"{list_file}:{lineno}"
            if not (root / rel).is_file():
                raise SpxError(f"{rel!r} is listed but is not a file under {root}", where=where,
                               hint="the list names files relative to the corpus folder: is the corpus complete?")
            if split_of.get(rel, split) != split:
                raise SpxError(f"{rel!r} is in both validation_list.txt and testing_list.txt", where=where,
                               hint="a file belongs to one split: delete one of the lines")
            split_of[rel] = split

    def rows() -> Iterator[tuple[str, dict]]:
        for d in classes:
            for f in sorted(p for p in d.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()):
                rel = f.relative_to(root).as_posix()
                speaker = _NOHASH.match(f.stem)
                yield str(f), {"id": rel.rsplit(".", 1)[0], "audio": str(f.resolve()), "label": d.name,
                               "speaker": speaker.group(1) if speaker else None, "language": opts.language,
                               "meta": {"split": split_of.get(rel, "train")} if has_lists else None}

    return _with_info(rows(), opts)


def import_label_csv(src: str | Path, opts: ImportOptions) -> Iterator[Utterance]:
    """A CSV or TSV (tab-separated when its header line holds a tab) with a header row, one audio file a row:
    the file column (--file-column, default the first of FILE_COLUMNS) and the label column (--label-column,
    default the first of LABEL_COLUMNS); relative paths resolve against the CSV's folder. Optional columns id,
    speaker, duration, text and split (train / validation / test: meta.split); every other column goes to meta."""
    p = _need(Path(src), "label CSV", "pass the .csv/.tsv file listing file,label")
    if p.is_dir():
        raise SpxError(f"{p} is a folder", hint="pass the CSV/TSV file (a folder per class is the class_folders format)")
    base = p.resolve().parent

    def rows() -> Iterator[tuple[str, dict]]:
        with p.open(encoding="utf-8-sig", newline="") as fh:
            first = fh.readline()
            fh.seek(0)
            reader = csv.reader(fh, delimiter="\t" if "\t" in first else ",")
            header = [h.strip() for h in next(reader, [])]
            file_col = _column(opts.file_column, FILE_COLUMNS, header, "file", "--file-column", f"{p}:1")
            label_col = _column(opts.label_column, LABEL_COLUMNS, header, "label", "--label-column", f"{p}:1")
            known = {file_col, label_col, "id", "speaker", "duration", "text", "split"}
            for values in reader:
                where = f"{p}:{reader.line_num}"
                if not any(v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    raise SpxError(f"row has {len(values)} fields, the header {len(header)}", where=where,
                                   hint="quote fields that hold the separator")
                row = dict(zip(header, values))
                name = row[file_col].strip()
                if not name:
                    raise SpxError(f"empty file name in column {file_col!r}", where=where)
                audio = name if os.path.isabs(name) or "://" in name else str(base / name)
                f = {"id": row.get("id") or str(Path(name).with_suffix("")),
                     "audio": _existing_audio(audio, where, "relative paths resolve against the CSV's folder"),
                     "label": _label(row[label_col], where, label_col), "speaker": row.get("speaker") or None,
                     "text": row.get("text") or None, "language": opts.language,
                     "meta": ({k: v for k, v in row.items() if k not in known and v != ""}
                              | ({"split": _split_name(row["split"], where)} if row.get("split") else {})) or None}
                if row.get("duration"):
                    f["duration"] = _float(row["duration"], where, "duration")
                yield where, f

    def guarded() -> Iterator[Utterance]:
        try:
            yield from _with_info(rows(), opts)
        except UnicodeDecodeError as exc:
            raise SpxError(f"not UTF-8 (byte {exc.start})", where=str(p), hint="re-encode the file as UTF-8") from None

    return guarded()


_AF_TEXT = ("text", "transcription", "sentence", "transcript")


def import_audiofolder(src: str | Path, opts: ImportOptions) -> Iterator[Utterance]:
    """Hugging Face audiofolder: metadata.csv / metadata.jsonl with `file_name` (+ text, label, speaker_id, ...
    columns) in the folder or its split subfolders; without metadata, audio in class folders (folder name = label),
    also under split folders (train/, validation/, test/). Rows under a split folder carry meta.split
    (train / valid / test). A label column (`label`, or --label-column) must not hold an empty value."""
    root = Path(src)
    if not root.is_dir():
        raise SpxError(f"audiofolder not found: {root}", hint="pass the dataset folder")
    metas = sorted([*root.rglob("metadata.csv"), *root.rglob("metadata.jsonl")])
    label_col = opts.label_column or "label"

    def split_of(rel: Path) -> str | None:  # rel: a path relative to root
        return SPLIT_NAMES.get(rel.parts[0].lower()) if len(rel.parts) > 1 else None

    def meta_rows(mf: Path) -> Iterator[tuple[str, dict]]:
        if mf.suffix == ".csv":
            with mf.open(encoding="utf-8-sig", newline="") as fh:
                reader = csv.DictReader(fh)
                if opts.label_column and opts.label_column not in (reader.fieldnames or []):
                    raise SpxError(f"no label column {opts.label_column!r}; the header has {reader.fieldnames}",
                                   where=f"{mf}:1", hint="pass --label-column with one of the header's columns")
                for row in reader:
                    yield f"{mf}:{reader.line_num}", row
        else:
            for lineno, line in _lines(mf):
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError) as exc:
                    raise SpxError(f"invalid JSON: {exc}", where=f"{mf}:{lineno}") from None
                if not isinstance(row, dict):
                    raise SpxError("each metadata.jsonl line must be an object", where=f"{mf}:{lineno}")
                if opts.label_column and opts.label_column not in row:
                    raise SpxError(f"no {opts.label_column!r} key", where=f"{mf}:{lineno}",
                                   hint="every line needs the --label-column key")
                yield f"{mf}:{lineno}", row

    def rows() -> Iterator[tuple[str, dict]]:
        if not metas:
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
            if not files:
                raise SpxError(f"no metadata.csv/metadata.jsonl and no audio under {root}", hint="see the HF audiofolder docs")
            for f in files:
                rel = f.relative_to(root)
                split = split_of(rel)
                in_class = f.parent != root and not (split and f.parent.parent == root)
                yield str(f), {"id": str(rel.with_suffix("")), "audio": str(f.resolve()),
                               "label": f.parent.name if in_class else None, "language": opts.language,
                               "meta": {"split": split} if split else None}
            return
        for mf in metas:
            base = mf.resolve().parent
            split = split_of(mf.relative_to(root))
            try:
                for where, row in meta_rows(mf):
                    name = row.get("file_name")
                    if not isinstance(name, str) or not name:
                        raise SpxError("missing 'file_name'", where=where, hint="audiofolder metadata needs a file_name column")
                    text_col = opts.text_column or next((c for c in _AF_TEXT if c in row), None)
                    known = {"file_name", text_col, "speaker_id", "speaker", label_col, "language", "duration"}
                    meta = {k: v for k, v in row.items() if k not in known and v not in ("", None)}
                    if split:
                        meta["split"] = split
                    rel = (mf.parent.relative_to(root) / name).with_suffix("")
                    f = {"id": str(rel), "audio": _existing_audio(str(base / name), where, "file_name is relative to "
                                                                  "the metadata file's folder"),
                         "text": row.get(text_col) if text_col else None,
                         "speaker": row.get("speaker_id") or row.get("speaker"),
                         "label": _label(row[label_col], where, label_col) if label_col in row else None,
                         "language": row.get("language") or opts.language, "meta": meta or None}
                    if f["speaker"] is not None:
                        f["speaker"] = str(f["speaker"])
                    if row.get("duration") not in (None, ""):
                        f["duration"] = _float(str(row["duration"]), where, "duration")
                    yield where, f
            except UnicodeDecodeError as exc:
                raise SpxError(f"not UTF-8 (byte {exc.start})", where=str(mf)) from None

    return _with_info(rows(), opts)


# ---------------------------------------------------------------- Lhotse
def import_lhotse(src: str | Path, opts: ImportOptions, supervisions: str | Path | None = None) -> Iterator[Utterance]:
    """Lhotse manifests: a CutSet (`cuts.jsonl.gz`), or a RecordingSet plus `supervisions` (SupervisionSet).

    One utterance per supervision (offset = where it starts in the recording); a cut without supervisions
    becomes one untranscribed utterance.
    """
    from lhotse import load_manifest_lazy

    p = _need(Path(src), "Lhotse manifest", "pass cuts.jsonl.gz, or recordings.jsonl.gz with --supervisions")

    def load(path: Path):
        try:
            m = load_manifest_lazy(path)
        except Exception as exc:
            raise SpxError(f"not a Lhotse manifest: {exc}", where=str(path), hint="pass a .jsonl or .jsonl.gz manifest") from None
        if m is None:
            raise SpxError("not a Lhotse JSONL manifest", where=str(path), hint="pass a .jsonl or .jsonl.gz manifest")
        return m

    def source(rec) -> str:
        s = rec.sources[0]
        return f"{s.source} |" if s.type == "command" else s.source

    def sup_utt(sup, rec, where: str, extra_offset: float = 0.0, sup_duration: float | None = None) -> Utterance:
        return _utt(where, id=sup.id, audio=source(rec), duration=sup_duration or sup.duration,
                    offset=max(0.0, extra_offset + sup.start), text=sup.text, speaker=sup.speaker,
                    language=sup.language or opts.language, sample_rate=rec.sampling_rate, channels=rec.num_channels,
                    meta=({"gender": sup.gender} if sup.gender else {}) | (dict(sup.custom) if sup.custom else {}) or None)

    manifest = load(p)
    kind = type(manifest).__name__
    try:
        if kind == "CutSet":
            for cut in manifest:
                where = f"{p}: cut {cut.id!r}"
                if not cut.has_recording:
                    raise SpxError("cut has no recording", where=where)
                rec = cut.recording
                if not cut.supervisions:
                    yield _utt(where, id=cut.id, audio=source(rec), duration=cut.duration, offset=cut.start,
                               sample_rate=rec.sampling_rate, channels=rec.num_channels)
                for sup in cut.supervisions:
                    yield sup_utt(sup, rec, where, extra_offset=cut.start)
        elif kind == "RecordingSet":
            if supervisions is None:
                raise SpxError(f"{p} is a RecordingSet", hint="also pass --supervisions supervisions.jsonl.gz")
            recs = {r.id: r for r in manifest}
            sups_path = Path(supervisions)
            for sup in load(_need(sups_path, "Lhotse supervisions", "pass the SupervisionSet manifest")):
                where = f"{sups_path}: supervision {sup.id!r}"
                if sup.recording_id not in recs:
                    raise SpxError(f"recording {sup.recording_id!r} not in {p}", where=where)
                yield sup_utt(sup, recs[sup.recording_id], where)
        else:
            raise SpxError(f"{p} is a {kind}", hint="pass a CutSet, or a RecordingSet with --supervisions")
    except SpxError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise SpxError(f"malformed Lhotse manifest: {type(exc).__name__}: {exc}", where=str(p)) from None


IMPORTERS: dict[str, Callable[..., Iterator[Utterance]]] = {
    "kaldi": import_kaldi,
    "nemo": import_nemo,
    "speechbrain_csv": import_speechbrain_csv,
    "speechbrain_json": import_speechbrain_json,
    "librispeech": import_librispeech,
    "commonvoice": import_commonvoice,
    "ljspeech": import_ljspeech,
    "audiofolder": import_audiofolder,
    "class_folders": import_class_folders,
    "label_csv": import_label_csv,
    "lhotse": import_lhotse,
}


def import_corpus(fmt: str, src: str | Path, opts: ImportOptions | None = None, **kwargs: Any) -> Iterator[Utterance]:
    if fmt not in IMPORTERS:
        raise SpxError(f"unknown import format {fmt!r}", hint=f"formats: {', '.join(IMPORTERS)}")
    return IMPORTERS[fmt](src, opts or ImportOptions(), **kwargs)
