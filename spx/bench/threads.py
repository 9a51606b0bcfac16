"""How many CPU threads the quality metrics' models use (a leaf: quality, judge and reference metrics share it)."""
from __future__ import annotations

import contextlib
import os

from spx.errors import SpxError

THREADS_ENV = "SPX_QUALITY_THREADS"


def quality_threads() -> int:
    """CPU threads each metric model uses: $SPX_QUALITY_THREADS, default 1. These models are small per call;
    on a busy machine more threads than free cores made them 5-15x slower (measured: benchmarks/quality_speed.py)."""
    raw = os.environ.get(THREADS_ENV, "1")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise SpxError(f"{THREADS_ENV}={raw!r} is not a positive integer", hint=f"e.g. {THREADS_ENV}=2")
    return n


@contextlib.contextmanager
def torch_threads():
    """Run torch code with quality_threads() intra-op threads, then restore the caller's setting."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(quality_threads())
    try:
        yield
    finally:
        torch.set_num_threads(old)
