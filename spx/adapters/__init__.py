"""Backends. Each lives in spx/adapters/<name>/ and exposes ADAPTER; loaded lazily by name."""
from __future__ import annotations

import importlib

from spx.errors import SpxError

BACKENDS = ("nemo", "speechbrain", "espnet")


def get_adapter(name: str):
    if name not in BACKENDS:
        raise SpxError(f"unknown backend {name!r}", hint=f"choose one of: {', '.join(BACKENDS)}")
    return importlib.import_module(f"spx.adapters.{name}").ADAPTER
