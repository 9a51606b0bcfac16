"""Backends. Each lives in spx/adapters/<name>/ and exposes ADAPTER; loaded lazily by name (spx.registry lists them)."""
from __future__ import annotations

import importlib

from spx.errors import SpxError
from spx.registry import BACKEND_NAMES, BACKENDS


def get_adapter(name: str):
    if name not in BACKENDS:
        raise SpxError(f"unknown backend {name!r}", hint=f"choose one of: {', '.join(BACKEND_NAMES)}")
    return importlib.import_module(BACKENDS[name].adapter_module).ADAPTER
