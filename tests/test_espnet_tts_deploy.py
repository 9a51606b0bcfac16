"""`spx export` / `spx serve` of an ESPnet FastSpeech2 run (issue 17, TTS): the session's FastSpeech2 (trained once
from the session's Tacotron2 teacher, tests/test_espnet_fastspeech2.py's `trained_fastspeech2`; no new training)
exported to ONNX (fp32 and onnxruntime int8) through spx.adapters.espnet.steps.tts_export, parity-checked against
Text2Speech's own mel (feat_gen_denorm) on the test sentences, and the fp32 export served by a real uvicorn process
on POST /v1/synthesize."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import read_jsonl, run_spx
from shared_artifacts import build_once, shared_dir
from test_deploy import Server
from test_espnet_fastspeech2 import trained_fastspeech2


@pytest.fixture(scope="session")
def fastspeech2_run(trained_tts, tts_corpus, tmp_path_factory):
    return trained_fastspeech2(trained_tts, tts_corpus, tmp_path_factory)  # the one training, shared


@pytest.fixture(scope="session")
def fs2_exported(fastspeech2_run, tmp_path_factory):
    """fs2_exported("onnx" | "onnx-int8") -> the export dir of the shared FastSpeech2 run (made once per test run)."""
    root = shared_dir(tmp_path_factory, "espnet_tts_exports")

    def get(kind: str) -> Path:
        fmt, _, quant = kind.partition("-")

        def build(folder: Path) -> None:
            run_spx("export", fastspeech2_run.path, "--format", fmt, *(["--quantize", quant] if quant else []),
                    "--out", folder, "--force", check=True, timeout=900)

        return build_once(root / kind, build)

    return get
