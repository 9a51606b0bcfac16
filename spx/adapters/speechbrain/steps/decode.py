"""Decoding step (child process): restore the exported model (SpeechBrain Pretrainer) and run the shared
decoding/timing protocol (child.decode_and_time) -> hyps.jsonl + speed.json.

`python -m spx.adapters.speechbrain.steps.decode RUN_DIR`
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import speechbrain as sb
from spx.adapters.common import child
from spx.adapters.speechbrain.steps.model import Tokenizer, char_tokenizer, load_exported, load_hparams, transcriber


def load_model(rd, device: str):
    """Modules from the run's hparams.yaml, weights and tokenizer from its exported model."""
    summary = json.loads((rd / "train_summary.json").read_text())
    export = Path(summary["exported_model"])
    info = json.loads((export / "spx_export.json").read_text())
    hparams = load_hparams(rd)
    load_exported(export, hparams, load_head=True)
    if info["tokenizer"] == "char":
        tokenizer = char_tokenizer(info["tokens"], export / "label_encoder.txt")
    else:
        import sentencepiece as spm

        model = next(f for f in info["tokenizer_files"] if f.endswith(".model"))
        sp = spm.SentencePieceProcessor()
        sp.load(str(export / model))
        tokenizer = Tokenizer("bpe", spm=sp)
    modules = torch.nn.ModuleDict(hparams["modules"]).to(device).eval()
    return modules, hparams, tokenizer, export


def exported_transcriber(rd, device: str, dtype: str):
    """(transcribe, what was loaded): the exported conformer_ctc model."""
    modules, hparams, tokenizer, export = load_model(rd, device)
    return transcriber(modules, hparams, tokenizer, device, dtype), f"{export} ({hparams['decoding']}"


def load_transcriber(run_dir: str, device: str, dtype: str = "float32"):
    """The exported model as `transcribe(list of 16 kHz float arrays) -> texts` (also the TTS judge's entry point)."""
    return exported_transcriber(child.load_run(run_dir)[1], device, dtype)[0]


def decode_run(run_dir: str, load) -> None:
    """The decode step of every SpeechBrain ASR family: `load(rd, device, dtype)` -> (transcribe, what was loaded)
    through the shared decoding/timing protocol (child.decode_and_time)."""
    spec, rd = child.load_run(run_dir)
    threads = child.set_threads(spec)
    device = child.pick_device(spec)
    dtype = child.precision_dtype(spec, device)
    fn, what = load(rd, device, dtype)
    print(f"spx: decoding with {what}, {device}, {dtype}, {threads} threads)", flush=True)
    speed = child.decode_and_time(rd, spec, fn, device, dtype)
    print(f"spx: decoded {speed['utterances']} utterances, {speed['audio_seconds']:.1f} s audio, "
          f"median {speed['median_decode_seconds']:.3f} s (speechbrain {sb.__version__})", flush=True)


def main(run_dir: str) -> None:
    decode_run(run_dir, exported_transcriber)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    child.main_guard(main)
    sys.exit(0)
