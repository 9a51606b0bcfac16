"""The kws_classifier modules built from native/config.yaml (or an export's config.yaml): SpeechBrain's Fbank,
InputNormalization, ECAPA_TDNN and Classifier. Child-process only (imports torch and SpeechBrain)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

MODULES = ("embedding_model", "classifier")  # the weights (sentence mean normalization keeps no statistics)


def read_config(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def build_modules(cfg: dict[str, Any]) -> dict[str, torch.nn.Module]:
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier
    from speechbrain.processing.features import InputNormalization

    f = cfg["features"]
    return {
        "compute_features": Fbank(sample_rate=f["sample_rate"], n_fft=f["n_fft"], n_mels=f["n_mels"],
                                  win_length=f["win_length"], hop_length=f["hop_length"]),
        "mean_var_norm": InputNormalization(**cfg["normalize"]),
        "embedding_model": ECAPA_TDNN(**cfg["embedding_model"]),
        "classifier": Classifier(**cfg["classifier"]),
    }


def forward_cosines(mods, wavs: torch.Tensor, lens: torch.Tensor, augment=None) -> torch.Tensor:
    """(batch, classes) cosine similarities of the utterance embeddings with the class weights."""
    feats = mods["compute_features"](wavs)
    if augment is not None:
        feats = augment(feats)
    feats = mods["mean_var_norm"](feats, lengths=lens)
    emb = mods["embedding_model"](feats, lens)
    return mods["classifier"](emb).squeeze(1)


def load_export(mods, export: Path, load_head: bool) -> list[str]:
    """Load an export's module weights; the class layer only when load_head (same classes)."""
    loaded = []
    for name in MODULES:
        if name == "classifier" and not load_head:
            continue
        mods[name].load_state_dict(torch.load(export / f"{name}.ckpt", map_location="cpu", weights_only=True))
        loaded.append(name)
    return loaded
