"""What a run ran with: versions (read from package metadata, no imports), git SHA, host, lock hash."""
from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import spx

PACKAGES = ("torch", "torchaudio", "speechbrain", "nemo-toolkit", "espnet", "lightning", "pytorch-lightning",
            "sentencepiece", "numpy", "lhotse", "jiwer", "whisper-normalizer", "omegaconf", "pydantic")
REPO_ROOT = Path(spx.__file__).resolve().parent.parent


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def git_sha() -> str | None:
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def lock_hash() -> str | None:
    lock = REPO_ROOT / "uv.lock"
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:16] if lock.exists() else None


def environment() -> dict:
    return {
        "spx_version": spx.__version__,
        "spx_git_sha": git_sha(),
        "uv_lock_sha256_16": lock_hash(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "host": platform.node(),
        "packages": package_versions(),
    }
