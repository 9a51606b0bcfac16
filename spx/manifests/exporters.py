"""Exporters from the spx manifest to each backend's native input. All stream; none loads audio."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from spx.manifests.schema import Utterance

_KALDI_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def kaldi_safe(name: str) -> str:
    """Kaldi/ESPnet ids: no whitespace or shell metacharacters; '-' separates speaker prefix."""
    return _KALDI_UNSAFE.sub("_", name) or "_"


@contextmanager
def _atomic_open(path: Path, newline: str | None = None) -> Iterator:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    fh = os.fdopen(fd, "w", encoding="utf-8", newline=newline)
    try:
        yield fh
        fh.close()
        os.replace(tmp, path)
    except BaseException:
        fh.close()
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- NeMo
def nemo_row(u: Utterance) -> dict:
    row: dict = {"audio_filepath": u.audio, "duration": u.duration, "text": u.text if u.text is not None else ""}
    if u.offset:
        row["offset"] = u.offset
    row["utt_id"] = u.id
    for key, nemo_key in (("speaker", "speaker"), ("language", "lang"), ("label", "label"),
                          ("sample_rate", "sample_rate"), ("channels", "channels")):
        value = getattr(u, key)
        if value is not None:
            row[nemo_key] = value
    if u.text is None:
        row["spx_no_text"] = True
    if u.meta:
        row["spx_meta"] = u.meta
    return row


def export_nemo(utts: Iterable[Utterance], path: str | Path) -> int:
    """NeMo JSONL (`audio_filepath`, `duration`, `text`, `offset`, `lang`, ...). Extra keys NeMo ignores."""
    n = 0
    dumps = json.dumps
    with _atomic_open(Path(path)) as fh:
        for u in utts:
            fh.write(dumps(nemo_row(u), ensure_ascii=False) + "\n")
            n += 1
    return n


# ---------------------------------------------------------------- SpeechBrain
SB_COLUMNS = ["ID", "duration", "wav", "offset", "spk_id", "wrd", "language", "label", "sample_rate", "channels", "meta"]


def export_speechbrain_csv(utts: Iterable[Utterance], path: str | Path) -> int:
    """SpeechBrain CSV in its LibriSpeech-recipe style (`ID,duration,wav,spk_id,wrd`) plus optional columns."""
    n = 0
    with _atomic_open(Path(path), newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SB_COLUMNS)
        for u in utts:
            w.writerow([u.id, repr(u.duration), u.audio, repr(u.offset), u.speaker or "", u.text if u.text is not None else "",
                        u.language or "", u.label or "", u.sample_rate or "", u.channels or "",
                        json.dumps(u.meta, ensure_ascii=False) if u.meta else ""])
            n += 1
    return n


def export_speechbrain_json(utts: Iterable[Utterance], path: str | Path) -> int:
    """SpeechBrain JSON: one object keyed by utterance id. Held in memory by design of the format."""
    data = {}
    for u in utts:
        entry: dict = {"wav": u.audio, "duration": u.duration}
        if u.offset:
            entry["offset"] = u.offset
        for key, sb_key in (("speaker", "spk_id"), ("text", "wrd"), ("language", "language"), ("label", "label"),
                            ("sample_rate", "sample_rate"), ("channels", "channels")):
            value = getattr(u, key)
            if value is not None:
                entry[sb_key] = value
        if u.meta:
            entry["meta"] = u.meta
        data[u.id] = entry
    with _atomic_open(Path(path)) as fh:
        json.dump(data, fh, ensure_ascii=False)
    return len(data)


# ---------------------------------------------------------------- Kaldi / ESPnet
def export_kaldi(utts: Iterable[Utterance], out_dir: str | Path) -> int:
    """Kaldi data dir: wav.scp, text, utt2spk, spk2utt, utt2dur (+ segments/reco2dur when offsets exist).

    Utterance ids become Kaldi-safe and are prefixed with their speaker (Kaldi's sorting convention);
    `spx_id_map` keeps kaldi-id -> original id and `spx_extra.jsonl` keeps fields Kaldi has no file for,
    so spx -> Kaldi -> spx is exact. Files are sorted as Kaldi requires (C locale byte order).
    """
    out = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None, prefix=f".{out.name}."))
    try:
        rows: list[tuple[str, Utterance]] = []
        seen: set[str] = set()
        for u in utts:
            spk = kaldi_safe(u.speaker) if u.speaker else None
            kid = kaldi_safe(u.id)
            if spk and not kid.startswith(spk):
                kid = f"{spk}-{kid}"
            base, k = kid, 1
            while kid in seen:
                k += 1
                kid = f"{base}_{k}"
            seen.add(kid)
            rows.append((kid, u))
        rows.sort(key=lambda r: r[0].encode())
        use_segments = any(u.offset for _, u in rows)
        files = {name: (tmp / name).open("w", encoding="utf-8") for name in
                 ("wav.scp", "text", "utt2spk", "utt2dur", "spx_id_map", "spx_extra.jsonl")}
        if use_segments:
            files["segments"] = (tmp / "segments").open("w", encoding="utf-8")
        spk2utt: dict[str, list[str]] = {}
        recos: dict[str, str] = {}
        try:
            for kid, u in rows:
                spk = kaldi_safe(u.speaker) if u.speaker else kid
                files["utt2spk"].write(f"{kid} {spk}\n")
                spk2utt.setdefault(spk, []).append(kid)
                files["text"].write(f"{kid} {u.text or ''}\n")
                files["utt2dur"].write(f"{kid} {u.duration!r}\n")
                files["spx_id_map"].write(f"{kid} {u.id}\n")
                extra = {k: v for k, v in (("speaker", u.speaker), ("language", u.language), ("label", u.label),
                                           ("sample_rate", u.sample_rate), ("channels", u.channels), ("meta", u.meta or None),
                                           ("no_text", True if u.text is None else None)) if v is not None}
                files["spx_extra.jsonl"].write(json.dumps({"id": kid, **extra}, ensure_ascii=False) + "\n")
                if use_segments:
                    reco = recos.setdefault(u.audio, f"reco{len(recos):07d}")
                    files["segments"].write(f"{kid} {reco} {u.offset!r} {u.offset + u.duration!r}\n")
                else:
                    files["wav.scp"].write(f"{kid} {u.audio}\n")
            if use_segments:
                for audio, reco in sorted(recos.items(), key=lambda r: r[1]):
                    files["wav.scp"].write(f"{reco} {audio}\n")
        finally:
            for fh in files.values():
                fh.close()
        with (tmp / "spk2utt").open("w", encoding="utf-8") as fh:
            for spk in sorted(spk2utt, key=str.encode):
                fh.write(f"{spk} {' '.join(spk2utt[spk])}\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(rows)


EXPORTERS = {
    "nemo": export_nemo,
    "speechbrain_csv": export_speechbrain_csv,
    "speechbrain_json": export_speechbrain_json,
    "kaldi": export_kaldi,
}
