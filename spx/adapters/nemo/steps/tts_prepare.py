"""Child step `tts_prepare`: NeMo's supplementary data and the pitch statistics FastPitch normalizes with.

    python -m spx.adapters.nemo.steps.tts_prepare RUN_DIR

Builds NeMo's own TTSDataset from native/tts_config.yaml (train and validation, pitch not normalized yet), which
computes each utterance's pitch contour with librosa.pyin and caches it under native/sup_data/pitch; then the
mean/std of the voiced training frames go into model.pitch_mean / model.pitch_std of the config (and
native/pitch_stats.json), as NeMo's `extract_sup_data.py` + `compute_speaker_stats` recipe steps do.
"""
from __future__ import annotations

import json
import os
import time

from spx.adapters.common import child


def prepare(run_dir: str) -> None:
    spec, rd = child.load_run(run_dir)
    child.set_threads(spec)
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = rd / "native" / "tts_config.yaml"
    cfg = OmegaConf.load(path)
    tokenizer = instantiate(cfg.model.text_tokenizer)
    started = time.time()
    voiced = []
    for split in ("train_ds", "validation_ds"):
        ds_cfg = OmegaConf.to_container(cfg.model[split].dataset, resolve=False)
        for key in ("pitch_mean", "pitch_std"):
            ds_cfg.pop(key)
        ds_cfg.update(pitch_norm=False, pitch_fmin=cfg.model.pitch_fmin, pitch_fmax=cfg.model.pitch_fmax,
                      sup_data_types=["pitch"])
        dataset = instantiate(OmegaConf.create(ds_cfg), text_tokenizer=tokenizer)
        for i in range(len(dataset)):
            pitch = dataset[i][8]  # TTSDataset.__getitem__: (audio, audio_len, text, text_len, log_mel, ..., pitch, ...)
            if split == "train_ds":
                voiced.append(pitch[pitch > 0])
            if (i + 1) % 20 == 0 or i + 1 == len(dataset):
                child.progress(phase="pitch", split=split, done=i + 1, of=len(dataset),
                               seconds=round(time.time() - started, 1))
    frames = torch.cat(voiced)
    if frames.numel() < 10:
        raise RuntimeError("pyin found (almost) no voiced frames in the training audio: is it speech at "
                           f"{cfg.model.sample_rate} Hz?")
    stats = {"pitch_mean": float(frames.mean()), "pitch_std": float(frames.std()), "voiced_frames": int(frames.numel()),
             "pitch_fmin": float(cfg.model.pitch_fmin), "pitch_fmax": float(cfg.model.pitch_fmax)}
    cfg.model.pitch_mean = stats["pitch_mean"]
    cfg.model.pitch_std = stats["pitch_std"]
    tmp = path.with_suffix(".tmp")
    OmegaConf.save(cfg, tmp)
    os.replace(tmp, path)
    (rd / "native" / "pitch_stats.json").write_text(json.dumps(stats, indent=1))
    child.progress(phase="pitch_stats", **stats, seconds=round(time.time() - started, 1))


if __name__ == "__main__":
    child.main_guard(prepare)
