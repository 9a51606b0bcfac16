"""Synthesize the multi-speaker English demo corpus with espeak-ng (Debian package `espeak-ng`) and sox.

    python -m spx.demo.generate OUT_DIR [--train 240 --valid 30 --test 40 --seed 0]

Speakers are espeak-ng voice x variant x speaking-rate combinations; the test speakers are held out
of training and validation. Training and validation utterances vary each speaker's pitch (-p 30..70) and rate
(+-20 wpm), as a person's voice varies; test utterances use the held-out voices as they are. Sentences are 3-5 words from a small command vocabulary, so tiny models
learn it in minutes. Audio: 16 kHz mono FLAC. Writes train/valid/test spx manifests beside the audio.
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

from spx.manifests import Utterance, write_manifest

WORDS = ("zero one two three four five six seven eight nine "
         "red green blue yellow black white left right up down stop go "
         "open close turn on off light door window").split()

TRAIN_VOICES = [
    ("en-us", "m1", 150), ("en-us", "f2", 165), ("en-us", "m3", 175), ("en-us", "f4", 140),
    ("en-gb", "m2", 160), ("en-gb", "f1", 170), ("en-gb", "m4", 145), ("en-gb", "f3", 180),
    ("en-gb-x-rp", "m5", 155), ("en-gb-x-rp", "f5", 165), ("en-gb-scotland", "m6", 150),
    ("en-gb-scotland", "f2", 170), ("en-029", "m7", 160), ("en-029", "f1", 150),
    ("en-us-nyc", "m2", 170), ("en-us-nyc", "f4", 155),
]
TEST_VOICES = [("en-us", "f3", 160), ("en-gb", "m7", 155), ("en-gb-x-rp", "f4", 170), ("en-029", "m3", 165)]


def speaker_name(voice: tuple[str, str, int]) -> str:
    lang, variant, rate = voice
    return f"{lang}_{variant}_{rate}"


def synthesize(text: str, voice: tuple[str, str, int], out: Path, tmp: Path, pitch: int = 50, rate_delta: int = 0) -> float:
    lang, variant, rate = voice
    wav = tmp / "raw.wav"
    subprocess.run(["espeak-ng", "-v", f"{lang}+{variant}", "-p", str(pitch), "-s", str(rate + rate_delta), "-w", str(wav),
                    text], check=True)
    # 16 kHz mono, trim leading/trailing silence, pad 0.1 s each side
    subprocess.run(["sox", str(wav), "-r", "16000", "-c", "1", "-b", "16", str(out), "gain", "-n", "-1",
                    "silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%", "reverse",
                    "pad", "0.1", "0.1"], check=True)
    info = subprocess.run(["soxi", "-D", str(out)], check=True, capture_output=True, text=True)
    return round(float(info.stdout.strip()), 4)


def generate(out_dir: Path, n_train: int = 240, n_valid: int = 30, n_test: int = 40, seed: int = 0) -> None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install espeak-ng sox")
    rng = random.Random(seed)
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    splits = {"train": (n_train, TRAIN_VOICES), "valid": (n_valid, TRAIN_VOICES), "test": (n_test, TEST_VOICES)}
    with tempfile.TemporaryDirectory() as tmpd:
        for split, (count, voices) in splits.items():
            utts = []
            for i in range(count):
                voice = voices[i % len(voices)]
                vary = split != "test"
                pitch = rng.randint(30, 70) if vary else 50
                rate_delta = rng.randint(-20, 20) if vary else 0
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 5)))
                uid = f"{split}_{i:04d}"
                path = audio_dir / f"{uid}.flac"
                dur = synthesize(text, voice, path, Path(tmpd), pitch, rate_delta)
                utts.append(Utterance(id=uid, audio=f"audio/{uid}.flac", duration=dur, text=text,
                                      speaker=speaker_name(voice), language="en", sample_rate=16000, channels=1))
            write_manifest(out_dir / f"{split}.jsonl", utts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--valid", type=int, default=30)
    ap.add_argument("--test", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    generate(a.out_dir, a.train, a.valid, a.test, a.seed)


if __name__ == "__main__":
    main()
