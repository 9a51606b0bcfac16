"""The audio contract: every utterance a backend reads is decoded once, at the spec's sample rate, mono, the same way.

API (stable; `tests/test_audio_contract.py` and the parity tests use it):

    audio_plan(utt, sample_rate, where=None) -> tuple[str, ...]
        Why `utt` cannot be read as is by a `sample_rate` mono reader: a subset of REASONS, () = read as is.
        Opens the file's header (not a pipe: pipes are run when materialized); SpxError naming `where` if unreadable.
    decode_utterance(utt, sample_rate, where=None) -> np.ndarray
        The reference decode: float32 mono at `sample_rate` of [offset, offset + duration) (the whole file when offset
        is 0 and the file is not longer than `duration`). Pipes run through `audioinfo.run_pipe` (no shell); soundfile first, ffmpeg for what it cannot read;
        stereo -> mean of the channels; resampling with soxr (HQ).
    materialize(utts, sample_rate, cache_dir, workers=2, wheres=None, progress=True, stats=None) -> list[Utterance]
        Decode each utterance into the shared content-addressed cache (16-bit PCM mono WAV at `sample_rate`) and
        return rows pointing at the cached files (offset 0, duration of the written audio). A cached file is reused;
        `stats` (a dict) counts 'written' and 'reused' rows.
    conform_manifest(src, dst, sample_rate, cache_dir, workers=2) -> dict
        Copy manifest `src` to `dst` with every row readable as is (the rows that are not are materialized first);
        returns the summary recorded in the run dir's manifests/audio.json.
    plan_manifest(path, sample_rate, examples=5) -> dict
        What `conform_manifest` would do, writing nothing (`spx manifest validate --features`).
    default_cache_dir() -> Path
        $SPX_AUDIO_CACHE, else $XDG_CACHE_HOME/spx/audio (~/.cache/spx/audio): one cache for every run and bench cell
        on the machine, wherever their run dirs are.

One rule for every backend: a row is read as is only if it is a plain WAV or FLAC file at the spec's rate, mono, and
not a segment (offset 0, the file no longer than the row's duration); anything else (pipe, other codec, other rate, several channels, segment) is materialized.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from spx.errors import SpxError
from spx.manifests.audioinfo import audio_info, parallel_map, run_pipe
from spx.manifests.schema import Utterance

REASONS = ("pipe", "codec", "rate", "channels", "segment")
AS_IS_FORMATS = ("WAV", "WAVEX", "FLAC")  # lossless containers every backend's loader reads the same way
CACHE_ENV = "SPX_AUDIO_CACHE"
CACHE_VERSION = "1"  # bump when the decode changes, so old cache entries are not reused
# rounded durations: a segment may end this far past its recording, and a row whose file is longer than its
# duration by more than this is a segment starting at 0 (Kaldi `segments` from 0.0), not the whole file
SEGMENT_TOLERANCE_S = 0.05
_INLINE_BELOW = 8  # fewer rows than this are materialized without a process pool


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spx" / "audio").resolve()


def audio_plan(utt: Utterance, sample_rate: int, where: str | None = None) -> tuple[str, ...]:
    """Reasons (a subset of REASONS, in that order) why `utt` must be materialized; () = it is read as is."""
    if utt.is_piped:
        return ("pipe",) + (("segment",) if utt.offset else ())
    if not os.path.isfile(utt.audio):
        raise SpxError(f"audio file not found: {utt.audio}", where=where, hint="check the path in the manifest")
    import soundfile

    try:
        info = soundfile.info(utt.audio)
        fmt, rate, channels, length = info.format, int(info.samplerate), int(info.channels), info.frames / info.samplerate
    except Exception:  # not for libsndfile: ffprobe reads the header, or audio_info raises one SpxError naming `where`
        ai = audio_info(utt.audio, where=where)
        fmt, rate, channels, length = "other", ai.sample_rate, ai.channels, ai.duration
    if utt.offset and utt.offset + utt.duration > length + SEGMENT_TOLERANCE_S:
        raise SpxError(f"segment [{utt.offset}, {utt.offset + utt.duration}] s ends past the end of {utt.audio} "
                       f"({length:.3f} s)", where=where, hint="fix the row's offset/duration (Kaldi segments file)")
    reasons = []
    if fmt not in AS_IS_FORMATS:
        reasons.append("codec")
    if rate != sample_rate:
        reasons.append("rate")
    if channels != 1:
        reasons.append("channels")
    if utt.offset or length > utt.duration + SEGMENT_TOLERANCE_S:
        reasons.append("segment")
    return tuple(reasons)


def _read_any(source: str | bytes, where: str | None) -> tuple[np.ndarray, int]:
    """(float32 frames x channels, rate) of a path or of audio bytes: soundfile, else ffmpeg."""
    import soundfile

    try:
        data, rate = soundfile.read(io.BytesIO(source) if isinstance(source, bytes) else source,
                                    dtype="float32", always_2d=True)
        return data, int(rate)
    except FileNotFoundError:
        raise SpxError(f"audio file not found: {source}", where=where, hint="check the path in the manifest") from None
    except Exception as exc:
        sf_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    ffmpeg = shutil.which("ffmpeg")
    what = "the piped command's output" if isinstance(source, bytes) else source
    if ffmpeg is None:
        raise SpxError(f"cannot decode {what}: {sf_error}", where=where,
                       hint="convert it to WAV/FLAC (spx manifest prepare), or install ffmpeg")
    proc = subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-i", "pipe:0" if isinstance(source, bytes) else source,
                           "-map", "0:a:0", "-f", "wav", "-c:a", "pcm_f32le", "pipe:1"],
                          input=source if isinstance(source, bytes) else None, capture_output=True)
    try:
        if proc.returncode != 0:
            raise ValueError(proc.stderr.decode(errors="replace").strip()[-300:] or f"exit {proc.returncode}")
        data, rate = soundfile.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    except Exception as exc:
        raise SpxError(f"cannot decode {what}: soundfile: {sf_error}; ffmpeg: {exc}", where=where,
                       hint="check that it is audio and not truncated") from None
    return data, int(rate)


def decode_utterance(utt: Utterance, sample_rate: int, where: str | None = None) -> np.ndarray:
    """Float32 mono at `sample_rate` of the utterance: [offset, offset + duration) when it is a segment (offset > 0,
    or the audio is longer than `duration` by more than SEGMENT_TOLERANCE_S), else the whole audio."""
    if utt.offset and not utt.is_piped:
        data, rate = _read_segment(utt, where)
    else:
        data, rate = _decode_pipe(utt.audio, where) if utt.is_piped else _read_any(utt.audio, where)
        if utt.offset or len(data) > (utt.duration + SEGMENT_TOLERANCE_S) * rate:  # a segment: cut it
            start = int(round(utt.offset * rate))
            data = data[start:start + int(round(utt.duration * rate))]
    # a copy where `data` is the kept pipe decode (read-only): callers clip the result in place
    wav = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0].copy() if utt.is_piped else data[:, 0]
    if len(wav) == 0:
        raise SpxError(f"utterance {utt.id!r} has no audio samples (offset {utt.offset}, duration {utt.duration})",
                       where=where, hint="check the row's offset/duration and the audio file")
    if rate != sample_rate:
        import soxr

        wav = soxr.resample(wav, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(wav)


_last_pipe: dict[str, tuple[np.ndarray, int]] = {}  # one entry: the last piped recording decoded in this process


def _decode_pipe(command: str, where: str | None) -> tuple[np.ndarray, int]:
    """A piped command's audio, decoded. The last one is kept: the segments of one piped recording (Kaldi `segments`
    over a `... |` wav.scp entry) come in a row, and each would otherwise run and decode the whole pipe again."""
    if command not in _last_pipe:
        data, rate = _read_any(run_pipe(command, where=where), where)
        data.setflags(write=False)  # shared by the rows that reuse it: cutting a segment must not change it
        _last_pipe.clear()
        _last_pipe[command] = (data, rate)
    return _last_pipe[command]


def _read_segment(utt: Utterance, where: str | None) -> tuple[np.ndarray, int]:
    """A segment of a plain file: soundfile seeks to it; other codecs are decoded whole, then cut."""
    import soundfile

    try:
        with soundfile.SoundFile(utt.audio) as f:
            rate = int(f.samplerate)
            f.seek(int(round(utt.offset * rate)))
            return f.read(int(round(utt.duration * rate)), dtype="float32", always_2d=True), rate
    except FileNotFoundError:
        raise SpxError(f"audio file not found: {utt.audio}", where=where, hint="check the path in the manifest") from None
    except Exception:  # not for libsndfile (or not seekable): decode the whole file
        data, rate = _read_any(utt.audio, where)
    start = int(round(utt.offset * rate))
    return data[start:start + int(round(utt.duration * rate))], rate


def cache_key(utt: Utterance, sample_rate: int) -> str:
    """Content address of the decoded utterance: source, its size and mtime (of every file a pipe names),
    offset, duration, target rate."""
    if utt.is_piped:
        import shlex

        try:
            tokens = shlex.split(utt.audio.rstrip().removesuffix("|"))
        except ValueError:
            tokens = []
        stamps = [_stamp(t) for t in tokens if os.path.isfile(t)]
    else:
        stamps = [_stamp(utt.audio)]
    text = "\0".join([CACHE_VERSION, utt.audio, *stamps, repr(float(utt.offset)), repr(float(utt.duration)),
                      str(sample_rate)])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _stamp(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def cache_path(utt: Utterance, sample_rate: int, cache_dir: str | Path) -> Path:
    key = cache_key(utt, sample_rate)
    return Path(cache_dir) / key[:2] / f"{key}.wav"


def _materialize_one(args: tuple[Utterance, int, str, str | None]) -> tuple[float, bool]:
    """Decode one utterance into its cache path: (duration in seconds, whether this call wrote the file)."""
    import soundfile

    utt, sample_rate, target, where = args
    path = Path(target)
    if path.is_file():  # another bench cell wrote it meanwhile
        return soundfile.info(target).frames / sample_rate, False
    wav = decode_utterance(utt, sample_rate, where)
    np.clip(wav, -1.0, 32767 / 32768, out=wav)  # resampling may overshoot; PCM_16 must not wrap around
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}.", suffix=".wav")
    os.close(fd)
    try:
        soundfile.write(tmp, wav, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)  # atomic: a concurrent bench cell sees the whole file or none
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(wav) / sample_rate, True


def _materialize_safe(args: tuple[Utterance, int, str, str | None]) -> tuple[float, bool] | SpxError:
    try:
        return _materialize_one(args)
    except SpxError as exc:
        return exc
    except OSError as exc:  # writing the cache: full or read-only disk
        return SpxError(f"cannot write the audio cache file {args[2]}: {exc.strerror or exc}", where=args[3],
                        hint=f"free disk space, or point ${CACHE_ENV} at a writable folder")
    except Exception as exc:  # an unexpected failure of one row is still that row's error, reported with its line
        return SpxError(f"cannot materialize utterance {args[0].id!r} ({args[0].audio}): {exc}", where=args[3])


def materialize(utts: Sequence[Utterance], sample_rate: int, cache_dir: str | Path, workers: int = 2,
                wheres: Sequence[str | None] | None = None, progress: bool = True,
                stats: dict[str, int] | None = None) -> list[Utterance]:
    """Rows pointing at the cached 16-bit mono WAVs of `utts` (same order); `stats` gets 'written' and 'reused'.
    Cache hits are resolved here; only the misses go to the `workers` processes (each distinct one once)."""
    import soundfile

    cache = Path(cache_dir).resolve()
    wheres = list(wheres) if wheres is not None else [None] * len(utts)
    paths = []
    for utt, where in zip(utts, wheres):
        try:
            paths.append(cache_path(utt, sample_rate, cache))
        except OSError as exc:  # the file vanished since its header was read
            raise SpxError(f"cannot read {exc.filename}: {exc.strerror}", where=where) from None
    durations: dict[Path, float] = {}
    wrote: set[Path] = set()
    misses: dict[Path, int] = {}
    for i, path in enumerate(paths):
        if path in durations or path in misses:
            continue
        if path.is_file():
            durations[path] = soundfile.info(str(path)).frames / sample_rate
        else:
            misses[path] = i
    jobs = [(utts[i], sample_rate, str(path), wheres[i]) for path, i in misses.items()]
    if len(jobs) < _INLINE_BELOW or workers <= 1:
        results = [_materialize_safe(j) for j in _progress(jobs, len(jobs), progress)]
    else:
        # forkserver: the caller may hold threads (a bench's live display), which a fork would copy mid-lock
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            chunk = max(1, min(64, len(jobs) // (workers * 8)))
            results = list(_progress(pool.map(_materialize_safe, jobs, chunksize=chunk), len(jobs), progress))
    for path, res in zip(misses, results):
        if isinstance(res, SpxError):
            raise res
        durations[path] = res[0]
        if res[1]:
            wrote.add(path)
    out = []
    for utt, path in zip(utts, paths):
        if stats is not None:
            kind = "written" if path in wrote else "reused"
            stats[kind] = stats.get(kind, 0) + 1
            wrote.discard(path)  # a duplicate row of the same audio reuses the file written for the first
        out.append(replace(utt, audio=str(path), offset=0.0, duration=round(durations[path], 6),
                           sample_rate=sample_rate, channels=1, meta=dict(utt.meta)))
    return out


def _progress(items: Iterable, total: int, show: bool) -> Iterable:
    if not show or total < _INLINE_BELOW:
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("materializing audio"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task("audio", total=total)
        for item in items:
            yield item
            bar.advance(task)


def numbered_rows(path: str | Path) -> Iterator[tuple[int, Utterance]]:
    """(line number, row) of every row of a manifest (the header and blank lines skipped); same checks as
    `iter_manifest`."""
    from spx.manifests.io import _existing, parse_manifest_lines

    p = _existing(path)
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            for utt in parse_manifest_lines((raw,), p, True, lineno):
                yield lineno, utt


def _planned(path: Path, sample_rate: int, workers: int) -> Iterator[tuple[int, Utterance, tuple[str, ...] | SpxError]]:
    """(line, row, audio_plan or its SpxError) of every row; headers read in parallel threads."""
    def one(item: tuple[int, Utterance]) -> tuple[int, Utterance, tuple[str, ...] | SpxError]:
        lineno, utt = item
        try:
            return lineno, utt, audio_plan(utt, sample_rate, where=f"{path}:{lineno} (row {utt.id!r})")
        except SpxError as exc:
            return lineno, utt, exc

    return parallel_map(one, numbered_rows(path), workers=workers)


def conform_manifest(src: str | Path, dst: str | Path, sample_rate: int, cache_dir: str | Path,
                     workers: int = 2, progress: bool = True) -> dict[str, Any]:
    """Write `dst`: the rows of manifest `src`, each readable as is (the others materialized into `cache_dir`).

    Every row is checked (header read; pipe run, as it is materialized) before `dst` is written; the first that
    cannot be read raises one SpxError naming `src:line (row id)`. Streams: only the rows to materialize are held.
    """
    from spx.manifests import write_manifest

    src = Path(src)
    counts = {r: 0 for r in REASONS}
    rows = 0
    todo: list[tuple[int, Utterance]] = []
    for lineno, utt, plan in _planned(src, sample_rate, workers=4):
        if isinstance(plan, SpxError):
            raise plan
        rows += 1
        if plan:
            todo.append((lineno, utt))
            for r in plan:
                counts[r] += 1
    stats: dict[str, int] = {}
    done = materialize([u for _, u in todo], sample_rate, cache_dir, workers=workers, progress=progress,
                       wheres=[f"{src}:{n} (row {u.id!r})" for n, u in todo], stats=stats) if todo else []
    replaced = {n: new for (n, _), new in zip(todo, done)}
    write_manifest(dst, (replaced.get(n, u) for n, u in numbered_rows(src)))
    return {"source": str(src), "rows": rows, "as_is": rows - len(todo), "materialized": len(todo),
            "reasons": {r: n for r, n in counts.items() if n},
            "cache": str(Path(cache_dir).resolve()) if todo else None,
            "cache_written": stats.get("written", 0), "cache_reused": stats.get("reused", 0)}


def plan_manifest(path: str | Path, sample_rate: int, examples: int = 5, workers: int = 4) -> dict[str, Any]:
    """What `conform_manifest` does with each row of `path` at `sample_rate` mono; writes nothing, runs no pipe.
    Unreadable rows are counted under 'unreadable' (with their error) instead of raising."""
    path = Path(path)
    counts = {r: 0 for r in REASONS}
    rows = as_is = unreadable = 0
    first: list[dict[str, Any]] = []
    for lineno, utt, plan in _planned(path, sample_rate, workers):
        rows += 1
        if isinstance(plan, SpxError):
            unreadable += 1
            if len(first) < examples:
                first.append({"line": lineno, "id": utt.id, "error": plan.message})
            continue
        if not plan:
            as_is += 1
            continue
        for r in plan:
            counts[r] += 1
        if len(first) < examples:
            first.append({"line": lineno, "id": utt.id, "reasons": list(plan), "action": describe(plan, sample_rate)})
    return {"manifest": str(path), "sample_rate": sample_rate, "channels": 1, "rows": rows, "as_is": as_is,
            "materialized": rows - as_is - unreadable, "unreadable": unreadable,
            "reasons": {r: n for r, n in counts.items() if n}, "examples": first}


def describe(plan: Sequence[str], sample_rate: int) -> str:
    """What spx does with a row that has these reasons, in words."""
    steps = {"pipe": "run the command (no shell)", "codec": "decode (soundfile, else ffmpeg)",
             "segment": "cut the segment", "channels": "mix the channels to mono",
             "rate": f"resample to {sample_rate} Hz (soxr)"}
    return ", ".join(steps[r] for r in plan) + f"; write a {sample_rate} Hz mono 16-bit WAV to the audio cache"


def audio_summary(sample_rate: int, manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run dir's manifests/audio.json: the contract and, per manifest, what was read as is and materialized."""
    return {"sample_rate": sample_rate, "channels": 1,
            "rule": "read as is: plain WAV/FLAC files at sample_rate, mono, not a segment; everything else materialized "
                    "once (16-bit PCM mono WAV at sample_rate) into the shared cache, the same for every backend",
            "pipes": "run by spx at render time (no shell) and materialized; no backend runs them (ESPnet's kaldiio "
                     "would run them through a shell, every epoch)",
            "manifests": manifests}
