"""Shared fixtures. Trained models are made once per session and shared by every test that needs one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "conformer_ctc.yaml"
DEMO = REPO / "spx" / "demo" / "corpus"


def run_spx(*args: str, cwd: Path | None = None, timeout: float = 1800, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `spx` CLI in a child process (as a user would)."""
    proc = subprocess.run([sys.executable, "-m", "spx", *map(str, args)], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"spx {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def demo_corpus() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory) -> Path:
    """One bench output folder for the session: backend tests train into its cells, the bench test reuses them."""
    return tmp_path_factory.mktemp("bench")


def cell_dir(bench_dir: Path, recipe_stem: str, backend: str) -> Path:
    return bench_dir / "runs" / f"{recipe_stem}-{backend}"


@pytest.fixture(scope="session")
def trained_run(bench_dir):
    """trained_run('nemo') -> run dir of the tiny conformer_ctc trained on the demo corpus (once per session)."""
    cache: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in cache:
            rd = cell_dir(bench_dir, RECIPE.stem, backend)
            status = rd / "status.json"
            if not (status.exists() and json.loads(status.read_text()).get("state") == "finished"):
                run_spx("run", "--backend", backend, RECIPE, "--run-dir", rd, "--force", check=True)
            cache[backend] = rd
        return cache[backend]

    return get
