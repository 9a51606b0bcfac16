"""Metrics against a reference recording: MCD with DTW, F0 RMSE, speaker similarity.

MCD and F0 come from one WORLD analysis (pyworld DIO + StoneMask F0, CheapTrick envelope) and a
mel-cepstrum (pysptk sp2mc, all-pass constant for the sample rate). The two mel-cepstra sequences
(c0 excluded) are aligned by DTW (librosa) and both MCD and F0 RMSE are read along that one path.
Heavy imports happen inside the functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FRAME_PERIOD_MS = 5.0
MCD_CONST = 10.0 / math.log(10.0) * math.sqrt(2.0)


def mcep_order(sr: int) -> int:
    """Mel-cepstrum order by sample rate (the usual choices: 24 at 16 kHz, 34 at 22.05/24 kHz, 39 above)."""
    return 24 if sr <= 16000 else 34 if sr <= 24000 else 39


@dataclass
class WorldFeatures:
    f0: np.ndarray     # (frames,) Hz, 0 where unvoiced
    mcep: np.ndarray   # (frames, order+1)


def world_features(wav: np.ndarray, sr: int) -> WorldFeatures:
    import pysptk
    import pyworld

    x = np.ascontiguousarray(wav, dtype=np.float64)
    f0, t = pyworld.dio(x, sr, frame_period=FRAME_PERIOD_MS)
    f0 = pyworld.stonemask(x, f0, t, sr)
    sp = pyworld.cheaptrick(x, f0, t, sr)
    mcep = pysptk.sp2mc(sp, order=mcep_order(sr), alpha=pysptk.util.mcepalpha(sr))
    return WorldFeatures(f0=f0, mcep=mcep)


def dtw_path(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(steps, 2) frame index pairs of the minimum-Euclidean-cost alignment of a (n, d) and b (m, d)."""
    import librosa

    _, wp = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")
    return wp[::-1]


def compare_world(gen: WorldFeatures, ref: WorldFeatures) -> dict[str, float | None]:
    """MCD (dB), F0 RMSE (Hz, frames voiced in both) and voicing decision error along one DTW path."""
    a, b = gen.mcep[:, 1:], ref.mcep[:, 1:]
    path = dtw_path(a, b)
    ia, ib = path[:, 0], path[:, 1]
    diff = a[ia] - b[ib]
    mcd = float(MCD_CONST * np.mean(np.sqrt(np.sum(diff * diff, axis=1))))
    fa, fb = gen.f0[ia], ref.f0[ib]
    voiced = (fa > 0) & (fb > 0)
    f0_rmse = float(np.sqrt(np.mean((fa[voiced] - fb[voiced]) ** 2))) if voiced.any() else None
    vde = float(np.mean((fa > 0) != (fb > 0)))
    return {"mcd": mcd, "f0_rmse": f0_rmse, "vde": vde, "dtw_frames": int(len(path)), "f0_voiced_frames": int(voiced.sum())}


def mcd_f0(gen: np.ndarray, ref: np.ndarray, sr: int) -> dict[str, float | None]:
    return compare_world(world_features(gen, sr), world_features(ref, sr))


def mcd_dtw(gen: np.ndarray, ref: np.ndarray, sr: int) -> float:
    """Mel-cepstral distortion in dB between two signals at the same rate, after DTW alignment."""
    return mcd_f0(gen, ref, sr)["mcd"]


def f0_rmse(gen: np.ndarray, ref: np.ndarray, sr: int) -> float | None:
    """F0 RMSE in Hz over DTW-aligned frames voiced in both; None when no frame is voiced in both."""
    return mcd_f0(gen, ref, sr)["f0_rmse"]


# ---------------------------------------------------------------- speaker similarity (resemblyzer)
SPEAKER_SR = 16000
_ENCODER = None


def speaker_encoder():
    global _ENCODER
    if _ENCODER is None:
        import warnings

        with warnings.catch_warnings():  # webrtcvad imports the deprecated pkg_resources
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            from resemblyzer import VoiceEncoder

        _ENCODER = VoiceEncoder(device="cpu", verbose=False)
    return _ENCODER


def speaker_embedding(wav: np.ndarray, sr: int) -> np.ndarray | None:
    """L2-normed 256-d d-vector (resemblyzer's bundled GE2E encoder), None when no speech is left after its VAD trim."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        from resemblyzer import preprocess_wav

    x = np.asarray(wav, dtype=np.float32)
    if not np.any(x):  # digital silence: its volume normalization would divide by zero
        return None
    x = preprocess_wav(x, source_sr=sr)
    if len(x) < SPEAKER_SR // 10:
        return None
    from spx.bench.threads import torch_threads

    with torch_threads():
        return speaker_encoder().embed_utterance(x)


def speaker_similarity(gen: np.ndarray, ref: np.ndarray, sr: int = SPEAKER_SR) -> float | None:
    """Cosine similarity of the d-vectors of two recordings (1 = same voice); None if one has no speech."""
    ea, eb = speaker_embedding(gen, sr), speaker_embedding(ref, sr)
    if ea is None or eb is None:
        return None
    return float(np.dot(ea, eb) / (np.linalg.norm(ea) * np.linalg.norm(eb)))
