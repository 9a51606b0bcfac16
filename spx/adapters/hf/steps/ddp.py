"""Small DDP helpers for the hf steps (child process)."""
from __future__ import annotations

import time
from pathlib import Path


def wait_for(path: Path, timeout: float = 600.0) -> None:
    """Wait until rank 0 has written `path` (before the Trainer's process group exists)."""
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise RuntimeError(f"{path} did not appear within {timeout:.0f} s (rank 0 failed?)")
        time.sleep(0.2)
