"""Audio reading for the quality metrics: mono float32, resampled with librosa (soxr), errors as SpxError.

Only numpy and soundfile at import time; librosa is imported when a resample is needed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from spx.errors import SpxError

AUDIO_SUFFIXES = (".wav", ".flac")


def load_wav(path: str | Path, sr: int | None = None, offset: float = 0.0,
             duration: float | None = None) -> tuple[np.ndarray, int]:
    """Mono float32 samples of `path` (the [offset, offset+duration) segment), resampled to `sr` when given."""
    import soundfile as sf

    p = str(path)
    if p.rstrip().endswith("|"):
        raise SpxError(f"piped audio commands are not supported by the quality metrics: {p!r}",
                       hint="export the audio to wav/flac files first")
    if not Path(p).is_file():
        raise SpxError(f"audio file not found: {p}", hint="check the path")
    try:
        info = sf.info(p)
        start = int(round(offset * info.samplerate))
        frames = int(round(duration * info.samplerate)) if duration is not None and offset else -1
        wav, file_sr = sf.read(p, start=start, frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise SpxError(f"cannot read audio {p}: {exc}", hint="use a wav or flac file soundfile can read") from None
    wav = wav.mean(axis=1)
    if wav.size == 0:
        raise SpxError(f"audio file has no samples: {p}", hint="remove it or regenerate it")
    return resample(wav, file_sr, sr or file_sr), sr or file_sr


def resample(wav: np.ndarray, from_sr: int, to_sr: int) -> np.ndarray:
    if from_sr == to_sr:
        return np.ascontiguousarray(wav, dtype=np.float32)
    import librosa

    return librosa.resample(np.asarray(wav, dtype=np.float32), orig_sr=from_sr, target_sr=to_sr).astype(np.float32)


def audio_files(folder: str | Path) -> list[Path]:
    """wav/flac files directly in `folder`, sorted by name."""
    d = Path(folder)
    if not d.is_dir():
        raise SpxError(f"not a directory: {d}", hint="pass a folder of .wav/.flac files")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise SpxError(f"no .wav or .flac files in {d}", hint="pass a folder of .wav/.flac files (not searched recursively)")
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise SpxError(f"two audio files share the name {f.stem!r} in {d}: {stems[f.stem].name}, {f.name}",
                           hint="utterance ids are file names without extension; keep one file per id")
        stems[f.stem] = f
    return files
