"""`spx manifest prepare`: resample, mono, loudness-normalise, trim silence (silero-vad), filter by duration.

Runs in worker processes (torch, soxr and the VAD model are imported there only). Every output file is written
to a temp name and renamed when complete, so an interrupted run resumes: finished files are reused, not redone.
"""
from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from spx.errors import SpxError
from spx.manifests.exporters import kaldi_utt_id
from spx.manifests.io import ManifestWriter, iter_manifest
from spx.manifests.schema import Utterance

VAD_RATE = 16000


@dataclass
class PrepareOptions:
    sample_rate: int | None = None        # resample to this rate (soxr, high quality)
    mono: bool = False                    # average the channels
    loudness: float | None = None         # target integrated loudness, LUFS (ITU-R BS.1770), e.g. -23
    trim: bool = False                    # cut leading/trailing non-speech found by silero-vad
    trim_padding: float = 0.1             # seconds of context kept around the speech
    min_duration: float | None = None     # drop utterances shorter than this after processing (s)
    max_duration: float | None = None     # drop utterances longer than this after processing (s)
    allow_pipes: bool = False

    def processing(self) -> dict:
        """The settings that change the audio written (a resumed run must use the same)."""
        return {k: v for k, v in asdict(self).items() if k in ("sample_rate", "mono", "loudness", "trim", "trim_padding")}


_VAD = None


def _init_worker(trim: bool) -> None:
    global _VAD
    if trim:
        import warnings

        import torch
        from silero_vad import load_silero_vad

        torch.set_num_threads(1)
        with warnings.catch_warnings():  # silero-vad's own torch.jit.load deprecation notice, not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            _VAD = load_silero_vad()


def _read(u: dict, allow_pipes: bool):
    import io

    import soundfile as sf

    audio = u["audio"]
    if audio.rstrip().endswith("|"):
        if not allow_pipes:
            raise SpxError(f"piped audio {audio!r}", hint="pass --allow-pipes to run the command")
        from spx.manifests.audioinfo import run_pipe

        source: Any = io.BytesIO(run_pipe(audio))
    else:
        source = audio
    with sf.SoundFile(source) as f:
        sr = f.samplerate
        start = round(u.get("offset", 0.0) * sr)
        frames = round(u["duration"] * sr)
        f.seek(min(start, f.frames))
        data = f.read(frames, dtype="float32", always_2d=True)
    if len(data) == 0:
        raise SpxError(f"no samples at offset {u.get('offset', 0.0)}s in {audio}", hint="check offset/duration")
    return data, sr


def _filtered(o: dict, duration: float) -> dict | None:
    if o["min_duration"] is not None and duration < o["min_duration"]:
        return {"status": "too_short", "duration": duration}
    if o["max_duration"] is not None and duration > o["max_duration"]:
        return {"status": "too_long", "duration": duration}
    return None


def _process(task: tuple[dict, str, dict]) -> dict:
    """One utterance -> one output file. Returns a result dict (never raises: errors come back as data)."""
    u, out_path, o = task
    out = Path(out_path)
    try:
        import soundfile as sf

        if out.exists():  # complete by construction (temp file + rename): reuse it
            info = sf.info(str(out))
            return _filtered(o, info.frames / info.samplerate) or {
                "status": "reused", "duration": info.frames / info.samplerate, "sample_rate": info.samplerate,
                "channels": info.channels}
        import numpy as np

        data, sr = _read(u, o["allow_pipes"])
        notes: list[str] = []
        if o["mono"] and data.shape[1] > 1:
            data = data.mean(axis=1, keepdims=True)
        if o["sample_rate"] and o["sample_rate"] != sr:
            import soxr

            data = soxr.resample(data, sr, o["sample_rate"], quality="HQ").astype("float32", copy=False)
            data = data.reshape(len(data), -1)
            sr = o["sample_rate"]
        if o["trim"]:
            import soxr
            import torch
            from silero_vad import get_speech_timestamps

            mono16 = soxr.resample(data.mean(axis=1), sr, VAD_RATE) if sr != VAD_RATE else data.mean(axis=1)
            stamps = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(mono16, dtype=np.float32)), _VAD,
                                           sampling_rate=VAD_RATE)
            if not stamps:
                return {"status": "no_speech"}
            pad = o["trim_padding"]
            first = max(0, round((stamps[0]["start"] / VAD_RATE - pad) * sr))
            last = min(len(data), round((stamps[-1]["end"] / VAD_RATE + pad) * sr))
            data = data[first:last]
        if o["loudness"] is not None:
            import torch
            import torchaudio.functional as AF

            measured = float(AF.loudness(torch.from_numpy(np.ascontiguousarray(data.T)), sr))
            if math.isfinite(measured):
                data = data * np.float32(10 ** ((o["loudness"] - measured) / 20))
                peak = float(np.abs(data).max())
                if peak > 0.999:
                    data = data * np.float32(0.999 / peak)
                    notes.append("peak_limited")
            else:
                notes.append("loudness_skipped")  # shorter than one 400 ms gating block, or silent
        duration = len(data) / sr
        if rejected := _filtered(o, duration):
            return rejected
        tmp = out.with_name(f".{out.name}.part")
        sf.write(str(tmp), data, sr, format="FLAC", subtype="PCM_16")
        os.replace(tmp, out)
        return {"status": "written", "duration": duration, "sample_rate": sr, "channels": data.shape[1], "notes": notes}
    except SpxError as exc:
        return {"status": "error", "message": exc.message + (f" ({exc.hint})" if exc.hint else "")}
    except Exception as exc:  # unreadable audio and the like: reported with the utterance, run stops
        return {"status": "error", "message": f"{type(exc).__name__}: {exc}"}


def _ordered(pool: ProcessPoolExecutor | None, tasks: Iterator, window: int) -> Iterator[tuple[Any, dict]]:
    if pool is None:
        for key, task in tasks:
            yield key, _process(task)
        return
    while True:
        chunk = list(islice(tasks, window))
        if not chunk:
            return
        futures = [(key, pool.submit(_process, task)) for key, task in chunk]
        for key, fut in futures:
            yield key, fut.result()


def prepare_manifest(src: str | Path, out_dir: str | Path, opts: PrepareOptions, workers: int = 2,
                     progress: bool = True, force: bool = False) -> dict:
    """Process every utterance of `src` into OUT_DIR/audio/*.flac and write OUT_DIR/<name>.jsonl."""
    src = Path(src)
    out = Path(out_dir)
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    settings_file = out / "prepare.json"
    settings = opts.processing()
    if settings_file.exists() and not force:
        previous = json.loads(settings_file.read_text())
        if previous != settings:
            raise SpxError(f"{out} was prepared with other settings {previous}", where=str(settings_file),
                           hint="use a new output folder, the same settings, or --force to redo every file")
    if force:
        for f in audio_dir.glob("*.flac"):
            f.unlink()
    from spx.yamlio import atomic_write_json

    atomic_write_json(settings_file, settings)
    total = sum(1 for _ in iter_manifest(src, resolve_audio=False))  # validates every row before any work
    o = asdict(opts)
    names: dict[str, str] = {}

    def tasks() -> Iterator[tuple[Utterance, tuple]]:
        for u in iter_manifest(src):
            name = kaldi_utt_id(u.id, None)
            if name in names:
                raise SpxError(f"duplicate utterance id {u.id!r}", where=str(src), hint="run `spx manifest validate`")
            names[name] = u.id
            yield u, ({"audio": u.audio, "offset": u.offset, "duration": u.duration}, str(audio_dir / f"{name}.flac"), o)

    summary: dict[str, Any] = {"input": total, "written": 0, "reused": 0, "too_short": 0, "too_long": 0, "no_speech": 0,
                               "peak_limited": 0, "loudness_skipped": 0, "seconds_in": 0.0, "seconds_out": 0.0}
    manifest_out = out / src.name
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(opts.trim,),
                               mp_context=__import__("multiprocessing").get_context("spawn")) if workers > 1 else None
    if pool is None:
        _init_worker(opts.trim)
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("prepare"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=Console(stderr=True), transient=False)
        bar.start()
        task_id = bar.add_task("prepare", total=total)
    try:
        with ManifestWriter(manifest_out, relative_to_manifest=True) as writer:
            for u, result in _ordered(pool, tasks(), window=8 * max(1, workers)):
                status = result["status"]
                summary["seconds_in"] += u.duration
                if status == "error":
                    raise SpxError(f"utterance {u.id!r} ({u.audio}): {result['message']}", where=str(src),
                                   hint="fix or drop it, then re-run: finished files are reused")
                summary[status] += 1
                for note in result.get("notes", []):
                    summary[note] += 1
                if status in ("written", "reused"):
                    u.audio = str((audio_dir / f"{kaldi_utt_id(u.id, None)}.flac").resolve())
                    u.duration, u.offset = round(result["duration"], 6), 0.0
                    u.sample_rate, u.channels = result["sample_rate"], result["channels"]
                    summary["seconds_out"] += u.duration
                    writer.write(u)
                if bar is not None:
                    bar.advance(task_id)
    finally:
        if bar is not None:
            bar.stop()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    summary["kept"] = summary["written"] + summary["reused"]
    summary["manifest"] = str(manifest_out)
    summary["seconds_in"], summary["seconds_out"] = round(summary["seconds_in"], 3), round(summary["seconds_out"], 3)
    return summary
