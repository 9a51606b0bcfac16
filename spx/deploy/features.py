"""The exported artefact's feature extractor: numpy and scipy.fft only (no torch, no toolkit), so an ONNX export is
served with onnxruntime, numpy and scipy alone.

The exported graphs take log-mel features, as each toolkit's own export route does (NeMo's Exportable and
espnet_onnx both export the network after the frontend). The frontend is the same recipe on every toolkit with
different settings: [pre-emphasis] -> framing (centred, padded) -> window -> |FFT|^2 -> mel matrix -> log ->
[per-utterance normalisation]. Its settings and arrays (window, mel matrix) are read from the toolkit's own modules
at export time (frontend.json + frontend.npz), and the export's parity check compares these features with the
toolkit's on the test set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FRONTEND_JSON = "frontend.json"
FRONTEND_NPZ = "frontend.npz"


@dataclass
class LogMelFrontend:
    """settings: sample_rate, n_fft, hop_length, center, pad_mode ("constant"|"reflect"), preemph (float|None),
    log ({"type": "add", "guard": g} | {"type": "clamp", "floor": f} | {"type": "db", "amin", "top_db",
    "multiplier"}), normalize (None|"per_feature"), valid_frames ("all" | "len_div_hop": NeMo counts len // hop
    frames and zeroes the last), layout ("BDT" | "BTD": how the graph takes them).
    window: [n_fft] (the toolkit's window, centred and zero-padded to n_fft as torch.stft does); mel: [n_mels, n_freq]."""

    settings: dict[str, Any]
    window: np.ndarray
    mel: np.ndarray

    @property
    def sample_rate(self) -> int:
        return int(self.settings["sample_rate"])

    def save(self, out_dir: Path) -> None:
        (out_dir / FRONTEND_JSON).write_text(json.dumps(self.settings, indent=2) + "\n")
        np.savez(out_dir / FRONTEND_NPZ, window=self.window.astype(np.float32), mel=self.mel.astype(np.float32))

    @classmethod
    def load(cls, export_dir: Path) -> "LogMelFrontend":
        arrays = np.load(export_dir / FRONTEND_NPZ)
        return cls(json.loads((export_dir / FRONTEND_JSON).read_text()), arrays["window"], arrays["mel"])

    def __call__(self, wav: np.ndarray) -> tuple[np.ndarray, int]:
        """One waveform -> (features [frames, n_mels] float32, valid frame count)."""
        return self.features([wav])[0]

    def features(self, wavs: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """Waveforms -> [(features [frames, n_mels] float32, valid frame count)], float32 throughout. One FFT call
        per utterance over a strided view of its frames: scipy's pocketfft transforms the rows with SIMD (numpy's
        does one row at a time); one utterance's frames stay in the cache, where one call over a whole batch's
        frames did not and ran slower."""
        from scipy import fft as sfft

        s = self.settings
        n_fft, hop = int(s["n_fft"]), int(s["hop_length"])
        preemph = np.float32(s["preemph"]) if s.get("preemph") else None
        pad_mode = "reflect" if s["pad_mode"] == "reflect" else "constant"
        log, normalize = s["log"], s.get("normalize")
        if log["type"] not in ("add", "clamp", "db"):
            raise ValueError(f"unknown log type {log['type']!r} in {FRONTEND_JSON}")
        if normalize and normalize != "per_feature":
            raise ValueError(f"unknown normalize {normalize!r} in {FRONTEND_JSON}")
        mel_t = self.mel.T
        out = []
        for wav in wavs:
            x = np.asarray(wav, dtype=np.float32)
            n_samples = len(x)
            if preemph is not None:
                x = np.concatenate([x[:1], x[1:] - preemph * x[:-1]])
            if s["center"]:
                x = np.pad(x, (n_fft // 2, n_fft // 2), mode=pad_mode)
            if len(x) < n_fft:
                x = np.pad(x, (0, n_fft - len(x)))
            n_frames = 1 + (len(x) - n_fft) // hop
            frames = np.lib.stride_tricks.as_strided(x, (n_frames, n_fft), (x.strides[0] * hop, x.strides[0]),
                                                     writeable=False) * self.window
            spec = sfft.rfft(frames, n=n_fft, axis=-1, overwrite_x=True)
            feats = (spec.real ** 2 + spec.imag ** 2) @ mel_t
            if log["type"] == "add":
                feats = np.log(feats + np.float32(log["guard"]))
            elif log["type"] == "clamp":
                feats = np.log(np.maximum(feats, np.float32(log["floor"])))
            else:
                feats = log["multiplier"] * np.log10(np.maximum(feats, np.float32(log["amin"])))
                feats = np.maximum(feats, feats.max() - log["top_db"])
            valid = n_frames if s.get("valid_frames", "all") == "all" else max(n_samples // hop, 1)
            if normalize:
                v = feats[:valid]
                mean = v.mean(axis=0)
                std = np.sqrt(((v - mean) ** 2).sum(axis=0) / max(valid - 1, 1)) + np.float32(1e-5)
                feats = (feats - mean) / std
                feats[valid:] = 0.0
            out.append((feats.astype(np.float32, copy=False), valid))
        return out

    def batch(self, wavs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Waveforms -> (features padded with zeros, in the graph's layout, valid frame counts int64)."""
        out = self.features(wavs)
        t_max = max(f.shape[0] for f, _ in out)
        n_mels = out[0][0].shape[1]
        feats = np.zeros((len(out), t_max, n_mels), dtype=np.float32)
        for i, (f, _) in enumerate(out):
            feats[i, : f.shape[0]] = f
        lengths = np.array([n for _, n in out], dtype=np.int64)
        if self.settings.get("layout", "BTD") == "BDT":
            feats = np.ascontiguousarray(feats.transpose(0, 2, 1))
        return feats, lengths


def centred_window(window: np.ndarray, n_fft: int) -> np.ndarray:
    """torch.stft's placement of a win_length window inside n_fft."""
    left = (n_fft - len(window)) // 2
    return np.pad(np.asarray(window, dtype=np.float32), (left, n_fft - len(window) - left))


@dataclass
class WaveformFrontend:
    """The frontend of a graph that takes the raw waveform (Transformers' wav2vec2/HuBERT/WavLM, whose convolutional
    feature encoder is inside the graph): the feature extractor's per-utterance normalisation and padding.

    settings: kind "waveform", sample_rate, do_normalize (zero mean, unit variance over the utterance's own samples,
    with `epsilon` under the square root: Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm), padding_value (what
    fills a padded batch), attention_mask (whether the graph masks the padding: it builds the mask from the lengths
    input; recorded for the reader, the numpy side is the same either way)."""

    settings: dict[str, Any]

    @property
    def sample_rate(self) -> int:
        return int(self.settings["sample_rate"])

    def save(self, out_dir: Path) -> None:
        (out_dir / FRONTEND_JSON).write_text(json.dumps(self.settings, indent=2) + "\n")

    @classmethod
    def load(cls, export_dir: Path) -> "WaveformFrontend":
        return cls(json.loads((Path(export_dir) / FRONTEND_JSON).read_text()))

    def __call__(self, wav: np.ndarray) -> tuple[np.ndarray, int]:
        """One waveform -> (the graph's input [samples] float32, valid sample count)."""
        x = np.asarray(wav, dtype=np.float32)
        if self.settings["do_normalize"]:
            x = (x - x.mean()) / np.sqrt(x.var() + np.float32(self.settings["epsilon"]))
        return x.astype(np.float32), len(x)

    def batch(self, wavs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Waveforms -> (normalised waveforms [B, samples] padded with padding_value, sample counts int64)."""
        out = [self(w)[0] for w in wavs]
        batch = np.full((len(out), max(len(x) for x in out)), np.float32(self.settings["padding_value"]),
                        dtype=np.float32)
        for i, x in enumerate(out):
            batch[i, : len(x)] = x
        return batch, np.array([len(x) for x in out], dtype=np.int64)


@dataclass
class WhisperLogMelFrontend:
    """Whisper's log-mel (Transformers' WhisperFeatureExtractor, SpeechBrain's Whisper integration, openai/whisper):
    the waveform zero-padded or trimmed to n_samples (30 s), centred STFT (reflect padding, periodic Hann window of
    n_fft), |X|^2 of every frame but the last, the model's own mel filterbank (frontend.npz `mel` [n_mels, n_freq]),
    log10 of max(., 1e-10), floored at its maximum - 8, then (x + 4) / 4. Output [n_mels, n_samples / hop] (the
    encoder's input layout); float64 inside, as the feature extractor's numpy path.

    settings: kind "whisper_log_mel", sample_rate, n_fft, hop_length, n_samples."""

    settings: dict[str, Any]
    mel: np.ndarray

    @property
    def sample_rate(self) -> int:
        return int(self.settings["sample_rate"])

    def save(self, out_dir: Path) -> None:
        (out_dir / FRONTEND_JSON).write_text(json.dumps(self.settings, indent=2) + "\n")
        np.savez(out_dir / FRONTEND_NPZ, mel=self.mel.astype(np.float32))

    @classmethod
    def load(cls, export_dir: Path) -> "WhisperLogMelFrontend":
        export_dir = Path(export_dir)
        return cls(json.loads((export_dir / FRONTEND_JSON).read_text()), np.load(export_dir / FRONTEND_NPZ)["mel"])

    def __call__(self, wav: np.ndarray) -> tuple[np.ndarray, int]:
        """One waveform -> (features [n_mels, frames] float32, frames holding audio)."""
        from scipy import fft as sfft

        s = self.settings
        n_fft, hop, n_samples = int(s["n_fft"]), int(s["hop_length"]), int(s["n_samples"])
        x = np.asarray(wav, dtype=np.float64)[:n_samples]
        valid = min(len(x) // hop, n_samples // hop)
        x = np.pad(x, (0, n_samples - len(x)))
        x = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect")
        n_frames = 1 + (len(x) - n_fft) // hop
        frames = np.lib.stride_tricks.as_strided(x, (n_frames, n_fft), (x.strides[0] * hop, x.strides[0]),
                                                 writeable=False)[:-1]  # every frame but the last, as Whisper
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
        spec = sfft.rfft(frames * window, n=n_fft, axis=-1)
        power = spec.real ** 2 + spec.imag ** 2                     # [frames, n_freq]
        log_spec = np.log10(np.maximum(self.mel.astype(np.float64) @ power.T, 1e-10))  # [n_mels, frames]
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        return ((log_spec + 4.0) / 4.0).astype(np.float32), valid

    def batch(self, wavs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Waveforms -> (features [B, n_mels, frames], frames holding audio int64): every item is 30 s long."""
        out = [self(w) for w in wavs]
        return np.stack([f for f, _ in out]), np.array([n for _, n in out], dtype=np.int64)


FRONTENDS = {"log_mel": LogMelFrontend, "waveform": WaveformFrontend, "whisper_log_mel": WhisperLogMelFrontend}


def load_frontend(export_dir: str | Path) -> "LogMelFrontend | WaveformFrontend | WhisperLogMelFrontend":
    """The export's frontend, by frontend.json's "kind" (files without one are log-mel: the exports before it)."""
    export_dir = Path(export_dir)
    kind = json.loads((export_dir / FRONTEND_JSON).read_text()).get("kind", "log_mel")
    if kind not in FRONTENDS:
        raise ValueError(f"{export_dir / FRONTEND_JSON}: unknown frontend kind {kind!r} (known: {', '.join(FRONTENDS)})")
    return FRONTENDS[kind].load(export_dir)
