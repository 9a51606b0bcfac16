"""Decoding step of SpeechBrain whisper (child process): the exported model (the integration built from its base,
the exported weights through SpeechBrain's Pretrainer) decoded by S2SWhisperGreedySearcher / S2SWhisperBeamSearcher
through the shared decoding/timing protocol (child.decode_and_time) -> hyps.jsonl + speed.json. Also the family's
model loader (load_transcriber) for the bench's judge and `spx serve`.

`python -m spx.adapters.speechbrain.steps.whisper_decode RUN_DIR`
"""
from __future__ import annotations

import os
import sys

from spx.adapters.common import child
from spx.adapters.speechbrain.steps.decode import decode_run
from spx.adapters.speechbrain.steps.whisper_model import load_exported, transcriber


def exported_transcriber(rd, device: str, dtype: str):
    """(transcribe, what was loaded): the exported whisper model."""
    hparams, export = load_exported(rd, device)
    return transcriber(hparams, device, dtype), f"{export} (whisper, {hparams['decoding']}"


def load_transcriber(run_dir: str, device: str, dtype: str = "float32"):
    """The exported model as `transcribe(list of 16 kHz float arrays) -> texts`."""
    return exported_transcriber(child.load_run(run_dir)[1], device, dtype)[0]


def main(run_dir: str) -> None:
    decode_run(run_dir, exported_transcriber)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    child.main_guard(main)
    sys.exit(0)
