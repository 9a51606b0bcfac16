"""Audio headers (duration, sample rate, channels) without decoding the audio; in parallel for big corpora."""
from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterable, Iterator, TypeVar

from spx.errors import SpxError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AudioInfo:
    duration: float
    sample_rate: int
    channels: int


def audio_info(path: str, where: str | None = None) -> AudioInfo:
    """Header of one audio file (soundfile; ffprobe for what libsndfile cannot read). SpxError if unreadable."""
    import soundfile

    try:
        info = soundfile.info(path)
        return AudioInfo(info.frames / info.samplerate, int(info.samplerate), int(info.channels))
    except FileNotFoundError:
        raise SpxError(f"audio file not found: {path}", where=where, hint="check the path in the corpus files") from None
    except Exception as exc:  # libsndfile cannot read it: ask ffprobe before giving up
        sf_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        raise SpxError(f"cannot read audio header of {path}: {sf_error}", where=where,
                       hint="convert it to WAV/FLAC, or install ffmpeg (ffprobe)")
    proc = subprocess.run([ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries",
                           "stream=sample_rate,channels,duration", "-of", "json", path], capture_output=True, text=True)
    try:
        stream = json.loads(proc.stdout)["streams"][0]
        return AudioInfo(float(stream["duration"]), int(stream["sample_rate"]), int(stream["channels"]))
    except (ValueError, KeyError, IndexError, TypeError):
        raise SpxError(f"cannot read audio header of {path}: {sf_error}; ffprobe: {proc.stderr.strip() or 'no audio stream'}",
                       where=where, hint="check that the file is audio and not truncated") from None


def run_pipe(command: str, where: str | None = None) -> bytes:
    """Run a Kaldi-style piped wav.scp entry (`cmd args | cmd2 ... |`) without a shell; return its stdout."""
    try:
        tokens = shlex.split(command.rstrip().removesuffix("|"))
    except ValueError as exc:
        raise SpxError(f"cannot parse the piped command {command!r}: {exc}", where=where) from None
    stages: list[list[str]] = [[]]
    for tok in tokens:
        stages.append([]) if tok == "|" else stages[-1].append(tok)
    if any(not s for s in stages):
        raise SpxError(f"empty stage in the piped command {command!r}", where=where)
    procs: list[subprocess.Popen] = []
    stdin = None
    try:
        for argv in stages:
            p = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if stdin is not None:
                stdin.close()
            stdin = p.stdout
            procs.append(p)
        out, err = procs[-1].communicate()
    except FileNotFoundError as exc:
        raise SpxError(f"piped command not found: {exc.filename}", where=where, hint="install it or fix wav.scp") from None
    for p in procs[:-1]:
        p.wait()
    bad = [p for p in procs if p.returncode != 0]
    if bad:
        raise SpxError(f"piped command {command!r} failed (exit {bad[0].returncode})", where=where,
                       hint=(err or b"").decode(errors="replace").strip()[-200:] or "run it by hand to see why")
    return out


def pipe_info(command: str, where: str | None = None) -> AudioInfo:
    import soundfile

    data = run_pipe(command, where)
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception as exc:
        raise SpxError(f"the piped command {command!r} did not write readable audio: {exc}", where=where) from None
    return AudioInfo(info.frames / info.samplerate, int(info.samplerate), int(info.channels))


def parallel_map(fn: Callable[[T], object], items: Iterable[T], workers: int = 4, window: int = 1024) -> Iterator:
    """Ordered, lazy map over threads (libsndfile releases the GIL); at most `window` items in flight."""
    it = iter(items)
    if workers <= 1:
        yield from map(fn, it)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while True:
            chunk = list(islice(it, window))
            if not chunk:
                return
            yield from pool.map(fn, chunk)
