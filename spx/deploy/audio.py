"""Request audio -> mono float32 at the model's rate, through the same decoding as spx's manifests
(spx/manifests/materialize.py: soundfile, else ffmpeg; soxr resampling)."""
from __future__ import annotations

import numpy as np

from spx.manifests.materialize import _read_any


def decode_audio_bytes(data: bytes, sample_rate: int) -> tuple[np.ndarray, int]:
    """(waveform at sample_rate, the input's own rate); SpxError when it is not decodable audio."""
    from spx.errors import SpxError

    frames, rate = _read_any(data, where="request body")
    if frames.shape[0] == 0:
        raise SpxError("the audio has no samples", where="request body", hint="send a non-empty recording")
    wav = frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]
    if rate != sample_rate:
        import soxr

        wav = soxr.resample(wav, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(wav, dtype=np.float32), rate
