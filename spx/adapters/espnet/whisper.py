"""ESPnet whisper: refused, with the reason. ESPnet's own path (`encoder: whisper` / `decoder: whisper`,
espnet2/asr/encoder/whisper_encoder.py) imports openai-whisper, and with the PyPI release the lock accepts it fails:
`from whisper.audio import N_MELS` (gone from openai-whisper since its 2023 releases) and the tokenizer API ESPnet's
whisper token list calls (espnet#5792); it also loads official model names only (`assert whisper_model in
whisper.available_models()`, then `whisper.load_model` downloads OpenAI's *.pt), never a Transformers folder or a
hub name like openai/whisper-small, which is what model.pretrained names. `spx bench` marks espnet unsupported for
whisper with this reason; the hf backend fine-tunes Whisper."""
from __future__ import annotations

from typing import Any

from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec

TASK = "asr"
NAME = "whisper"
INIT_FROM = "nothing (ESPnet's whisper path is not available)"
INFERENCE = None
EXPORT = None
EXPORT_REFUSED = "ESPnet runs no whisper job here (below), so there is nothing to export"
WHY = ("ESPnet's whisper encoder/decoder need openai-whisper, whose PyPI release breaks ESPnet's imports (`N_MELS`) "
       "and tokenizer calls (espnet#5792), and load official OpenAI model names only, not the Transformers "
       "folder/hub name model.pretrained gives")


def check(spec: Spec) -> None:
    raise SpxError(f"ESPnet cannot fine-tune whisper here: {WHY}", where="model.family",
                   hint="run model.family whisper on the hf backend")


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    check(spec)
    return []


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {}
