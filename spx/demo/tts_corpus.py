"""Synthesize a small TTS demo corpus with flite (Debian package `flite`) and sox.

    python -m spx.demo.tts_corpus OUT_DIR [--train 100 --valid 10 --test 10 --voices slt --seed 0]

The TTS recipes name the default corpus as `spx-demo://tts/{train,valid,test}.jsonl`: spx makes it on first use
(spx/demo/resolve.py). This command makes another one (more sentences, several voices) for `data:` to point at.

One flite voice (default `slt`) gives a single-speaker corpus, several (`--voices slt,rms,awb`) a
multi-speaker one; every manifest row carries its speaker id. Sentences are 2-4 words from the ASR demo
vocabulary (spx/demo/generate.py WORDS), so a tiny Tacotron2 learns them in minutes. Audio: 16 kHz mono
FLAC, leading/trailing silence trimmed. Writes train/valid/test spx manifests beside the audio.
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from spx.demo.generate import WORDS
from spx.errors import SpxError
from spx.manifests import Utterance, write_manifest

SAMPLE_RATE = 16000
FLITE_VOICES = ("slt", "rms", "awb", "kal16")
DEBIAN_PACKAGE = {"flite": "flite", "sox": "sox", "soxi": "sox"}  # the tools this module runs


def check_tools() -> None:
    """One clear error (exit 2) naming the Debian package when a tool the corpus needs is missing."""
    for tool, package in DEBIAN_PACKAGE.items():
        if shutil.which(tool) is None:
            raise SpxError(f"{tool} not found: the TTS demo corpus is synthesized with flite and sox; "
                           f"install the Debian package: sudo apt-get install {package}")


def synthesize(text: str, voice: str, out: Path, tmp: Path) -> float:
    wav = tmp / "raw.wav"
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(wav)], check=True)
    subprocess.run(["sox", str(wav), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out), "gain", "-n", "-1",
                    "silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%", "reverse",
                    "pad", "0.05", "0.05"], check=True)
    info = subprocess.run(["soxi", "-D", str(out)], check=True, capture_output=True, text=True)
    return round(float(info.stdout.strip()), 4)


def generate_tts_corpus(out_dir: str | Path, n_train: int = 100, n_valid: int = 10, n_test: int = 10,
                        voices: tuple[str, ...] = ("slt",), seed: int = 0, min_words: int = 2,
                        max_words: int = 4) -> Path:
    """Write OUT_DIR/{train,valid,test}.jsonl and OUT_DIR/audio/*.flac; returns OUT_DIR."""
    check_tools()
    unknown = [v for v in voices if v not in FLITE_VOICES]
    if unknown:
        raise SpxError(f"unknown flite voice(s) {', '.join(unknown)}", hint=f"choose from {', '.join(FLITE_VOICES)}")
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    with tempfile.TemporaryDirectory() as tmpd:
        for split, count in (("train", n_train), ("valid", n_valid), ("test", n_test)):
            utts = []
            for i in range(count):
                voice = voices[i % len(voices)]
                while True:  # distinct sentences, so the test sentences are unseen in training
                    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
                    if text not in seen:
                        seen.add(text)
                        break
                uid = f"{voice}_{split}_{i:04d}"
                path = audio_dir / f"{uid}.flac"
                dur = synthesize(text, voice, path, Path(tmpd))
                utts.append(Utterance(id=uid, audio=f"audio/{uid}.flac", duration=dur, text=text, speaker=voice,
                                      language="en", sample_rate=SAMPLE_RATE, channels=1))
            write_manifest(out_dir / f"{split}.jsonl", utts, relative_to_manifest=True)
    return out_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--valid", type=int, default=10)
    ap.add_argument("--test", type=int, default=10)
    ap.add_argument("--voices", default="slt", help=f"comma-separated flite voices ({', '.join(FLITE_VOICES)})")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    try:
        generate_tts_corpus(a.out_dir, a.train, a.valid, a.test, tuple(a.voices.split(",")), a.seed)
    except SpxError as exc:
        print(f"error: {exc.one_line()}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        sys.exit(exc.exit_code)
    print(f"wrote {a.out_dir}/{{train,valid,test}}.jsonl")


if __name__ == "__main__":
    main()
