"""The one transcript cleaning: training targets on every backend, and the text an exported TTS model takes (its
engine runs without spx's child helpers)."""
from __future__ import annotations

import re

_KEEP = re.compile(r"[^a-z0-9' ]+")


def clean_transcript(text: str, lowercase: bool = True) -> str:
    """Training targets: the same cleaning on every backend so their vocabularies match."""
    t = text.lower() if lowercase else text
    t = _KEEP.sub(" ", t) if lowercase else t
    return " ".join(t.split())
