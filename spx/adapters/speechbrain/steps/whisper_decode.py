"""Decoding step of SpeechBrain whisper (child process): the exported model (the integration built from its base,
the exported weights through SpeechBrain's Pretrainer) decoded by S2SWhisperGreedySearcher / S2SWhisperBeamSearcher
through the shared decoding/timing protocol (child.decode_and_time) -> hyps.jsonl + speed.json. Also the family's
model loader (load_transcriber) for the bench's judge and `spx serve`.

`python -m spx.adapters.speechbrain.steps.whisper_decode RUN_DIR`
"""
from __future__ import annotations

import os
import sys

import speechbrain as sb
from spx.adapters.common import child
from spx.adapters.speechbrain.steps.whisper_model import load_exported, transcriber


def load_transcriber(run_dir: str, device: str, dtype: str = "float32"):
    """The exported model as `transcribe(list of 16 kHz float arrays) -> texts`."""
    _, rd = child.load_run(run_dir)
    hparams, _ = load_exported(rd, device)
    return transcriber(hparams, device, dtype)


def main(run_dir: str) -> None:
    spec, rd = child.load_run(run_dir)
    threads = child.set_threads(spec)
    device = child.pick_device(spec)
    dtype = child.precision_dtype(spec, device)
    hparams, export = load_exported(rd, device)
    print(f"spx: decoding with {export} (whisper, {hparams['decoding']}, {device}, {dtype}, {threads} threads)",
          flush=True)
    speed = child.decode_and_time(rd, spec, transcriber(hparams, device, dtype), device, dtype)
    print(f"spx: decoded {speed['utterances']} utterances, {speed['audio_seconds']:.1f} s audio, "
          f"median {speed['median_decode_seconds']:.3f} s (speechbrain {sb.__version__})", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    child.main_guard(main)
    sys.exit(0)
