"""What the test run builds once and shares: a folder common to all xdist workers, built under a file lock."""
from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder common to all xdist workers of this test run (the session's temp folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/popen-gwK -> pytest-N, shared by the workers
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_once(folder: Path, build) -> Path:
    """Run build(folder) once per test run, whichever worker asks first; the others wait for it."""
    with FileLock(str(folder) + ".lock"):
        done = Path(str(folder) + ".done")
        if not done.exists():
            build(folder)
            done.touch()
    return folder
