"""The TTS test corpus: a small single-speaker flite corpus (and a 2-speaker one for rendering checks).

    python -m tests.tts_corpus OUT_DIR     (the same corpus the tests make)
Session fixtures: `tts_corpus` (single speaker, slt) and `tts_multi_corpus` (slt + rms).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shared_artifacts import build_once, shared_dir
from spx.demo.tts_corpus import generate_tts_corpus

# ~100 s of training speech: a tiny Tacotron2 trains on it in a couple of minutes on 2 CPU cores
SIZES = {"n_train": 100, "n_valid": 10, "n_test": 8}


def make_tts_corpus(out_dir: Path, voices: tuple[str, ...] = ("slt",)) -> Path:
    return generate_tts_corpus(out_dir, voices=voices, **SIZES)


@pytest.fixture(scope="session")
def tts_corpus(tmp_path_factory) -> Path:
    return build_once(shared_dir(tmp_path_factory, "tts_corpus"), make_tts_corpus)


@pytest.fixture(scope="session")
def tts_multi_corpus(tmp_path_factory) -> Path:
    return build_once(shared_dir(tmp_path_factory, "tts_multi_corpus"),
                      lambda out: generate_tts_corpus(out, n_train=12, n_valid=4, n_test=4, voices=("slt", "rms")))


if __name__ == "__main__":
    make_tts_corpus(Path(sys.argv[1]))
