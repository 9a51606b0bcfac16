"""Child step `tts_prepare` of SpeechBrain FastSpeech2: pitch and energy targets from the training audio.

    python -m spx.adapters.speechbrain.steps.tts_fastspeech2_prepare RUN_DIR

As SpeechBrain's LJSpeech FastSpeech2 recipe prepares them (ljspeech_prepare.py for FastSpeech2WithAlignment):
pitch with torchaudio's detect_pitch_frequency (frame_time = hop / sample rate, median window 3, min/max f0 from
the hparams), its last value repeated to get one value per mel frame; energy = the L2 norm of each mel frame,
min-max normalized per utterance (FastSpeech2.mel_spectrogram). Where the recipe normalizes the pitch with fixed
LJSpeech statistics, spx uses the mean/std of the training frames (native/pitch_stats.json). Writes
native/sup_data/{pitch,energy}/<split>_<row>_<id>.npy (pitch in Hz) for the train and valid rows.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio

from spx.adapters.common.child import load_audio, load_run, main_guard, progress, set_threads
from spx.adapters.speechbrain.fastspeech2 import training_rows
from spx.adapters.speechbrain.steps.tts_train import load_hparams
from spx.manifests import read_manifest
from spx.yamlio import atomic_write_json


def split_rows(spec) -> dict[str, list]:
    return {"train": training_rows(spec), "valid": read_manifest(spec.data.valid)}


def sup_file(native: Path, kind: str, split: str, index: int, utt_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", utt_id)
    return native / "sup_data" / kind / f"{split}_{index:05d}_{safe}.npy"


def mel_and_energy(hp: dict, wav: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_mels, frames) natural-log mel and (frames,) energy, SpeechBrain FastSpeech2's features."""
    return hp["mel_spectrogram"](audio=torch.from_numpy(wav))


def pitch_contour(hp: dict, wav: np.ndarray, n_frames: int) -> torch.Tensor:
    """Pitch in Hz, one value per mel frame (detect_pitch_frequency yields one frame fewer: repeat the last)."""
    pitch = torchaudio.functional.detect_pitch_frequency(
        torch.from_numpy(wav).unsqueeze(0), hp["sample_rate"], frame_time=hp["hop_length"] / hp["sample_rate"],
        win_length=hp["pitch_median_win"], freq_low=hp["pitch_fmin"], freq_high=hp["pitch_fmax"])[0]
    if pitch.numel() < n_frames:
        pitch = torch.cat([pitch, pitch[-1:].expand(n_frames - pitch.numel())])
    return pitch[:n_frames]


def prepare(run_dir: str) -> None:
    spec, rd = load_run(run_dir)
    set_threads(spec)
    native = rd / "native"
    hp = load_hparams(rd)
    started = time.time()
    train_frames = []
    for split, rows in split_rows(spec).items():
        for i, u in enumerate(rows):
            wav = load_audio(u, hp["sample_rate"])
            mel, energy = mel_and_energy(hp, wav)
            pitch = pitch_contour(hp, wav, mel.size(1))
            for kind, values in (("pitch", pitch), ("energy", energy)):
                path = sup_file(native, kind, split, i, u.id)
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, values.numpy().astype(np.float32))
            if split == "train":
                train_frames.append(pitch)
            if (i + 1) % 25 == 0 or i + 1 == len(rows):
                progress(phase="pitch_energy", split=split, done=i + 1, of=len(rows),
                         seconds=round(time.time() - started, 1))
    frames = torch.cat(train_frames)
    stats = {"pitch_mean": float(frames.mean()), "pitch_std": float(frames.std()), "frames": int(frames.numel()),
             "pitch_fmin": hp["pitch_fmin"], "pitch_fmax": hp["pitch_fmax"],
             "method": "torchaudio detect_pitch_frequency"}
    if not stats["pitch_std"] > 0:
        raise RuntimeError(f"the pitch of the training audio does not vary (std {stats['pitch_std']}): is it speech?")
    atomic_write_json(native / "pitch_stats.json", stats)
    progress(phase="pitch_stats", **{k: v for k, v in stats.items() if k != "method"},
             seconds=round(time.time() - started, 1))


if __name__ == "__main__":
    main_guard(prepare)
