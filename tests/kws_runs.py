"""The KWS session fixtures: `kws_corpus` (the spx-demo://kws corpus, same generator and sizes) and `trained_kws`
(recipes/kws.yaml trained on it, one run per backend), made once per test run in the run's shared folder and
used by the classification, export and hf tests (tests/conftest.py imports them)."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared_artifacts import build_once, shared_dir
from spx.demo.kws_corpus import generate_kws_corpus
from spx.demo.resolve import KWS_DEMO

KWS_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "kws.yaml"


def data_overrides(corpus: Path) -> list[str]:
    return [f"data.{split}={corpus / f'{split}.jsonl'}" for split in ("train", "valid", "test")]


@pytest.fixture(scope="session")
def kws_corpus(tmp_path_factory) -> Path:
    return build_once(shared_dir(tmp_path_factory, "kws_corpus"), lambda out: generate_kws_corpus(out, **KWS_DEMO))


@pytest.fixture(scope="session")
def trained_kws(tmp_path_factory, kws_corpus):
    """trained_kws('nemo') -> run dir of recipes/kws.yaml trained on the KWS corpus (once per test run)."""
    from conftest import run_spx

    def get(backend: str) -> Path:
        rd = shared_dir(tmp_path_factory, "kws_runs") / backend
        build_once(rd, lambda out: run_spx("run", "--backend", backend, KWS_RECIPE, "--run-dir", out, "--force",
                                           *data_overrides(kws_corpus), check=True))
        return rd

    return get
