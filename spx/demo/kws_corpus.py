"""Synthesize a small keyword-spotting demo corpus (Speech-Commands style) with espeak-ng, flite and sox.

    python -m spx.demo.kws_corpus OUT_DIR [--per-class 20 --valid-per-class 4 --test-per-class 6 --seed 0]

The classification recipes name the default corpus as `spx-demo://kws/{train,valid,test}.jsonl`: spx makes it on
first use (spx/demo/resolve.py). Classes, as in Speech Commands v0.01's 12-class task: ten keywords, `_unknown_`
(other words, some of them close to a keyword: "dog"/"down", "now"/"no") and `_silence_` (background noise with no
speech). Each manifest row carries its class in `label` and the spoken word in `text`.

Speakers are espeak-ng voice+variant combinations plus the flite voices; test speakers (voices and variants) are held
out of training and validation. Training and validation clips vary each speaker's pitch and rate, as a person's voice
varies; test clips keep the held-out voices as they are. Every clip gets a low noise floor at a random level, so
`_silence_` is not simply digital zero. Audio: 16 kHz mono FLAC, about 0.5-1 s per clip.
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from spx.errors import SpxError
from spx.manifests import Utterance, write_manifest

SAMPLE_RATE = 16000
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "tree", "wow", "now", "top", "seven", "one",
                 "sheila", "marvin", "nine", "zero", "three", "four", "five", "learn")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
CLASSES = (*KEYWORDS, UNKNOWN, SILENCE)

# (engine, voice, variant, words per minute); test speakers differ from training ones in voice and variant
TRAIN_SPEAKERS = [
    ("espeak", "en-us", "m1", 150), ("espeak", "en-us", "f2", 165), ("espeak", "en-gb", "m3", 160),
    ("espeak", "en-gb", "f1", 170), ("espeak", "en-gb-x-rp", "m5", 155), ("espeak", "en-gb-scotland", "f2", 160),
    ("espeak", "en-029", "m7", 150), ("espeak", "en-us-nyc", "f4", 155), ("espeak", "en-gb-x-gbclan", "m2", 165),
    ("espeak", "en-us", "f5", 145), ("flite", "slt", "", 0), ("flite", "rms", "", 0),
]
TEST_SPEAKERS = [
    ("espeak", "en-us", "f3", 160), ("espeak", "en-gb", "m7", 155), ("espeak", "en-gb-x-rp", "f4", 170),
    ("espeak", "en-029", "m4", 165), ("espeak", "en-gb-x-gbcwmd", "f1", 150), ("flite", "awb", "", 0),
]
NOISES = ("whitenoise", "pinknoise", "brownnoise")
DEBIAN_PACKAGE = {"espeak-ng": "espeak-ng", "flite": "flite", "sox": "sox"}  # the tools this module runs


def check_tools() -> None:
    """One clear error (exit 2) naming the Debian package when a tool the corpus needs is missing."""
    for tool, package in DEBIAN_PACKAGE.items():
        if shutil.which(tool) is None:
            raise SpxError(f"{tool} not found: the keyword-spotting demo corpus is synthesized with espeak-ng, flite "
                           f"and sox; install the Debian package: sudo apt-get install {package}")


def speaker_name(speaker: tuple[str, str, str, int]) -> str:
    engine, voice, variant, rate = speaker
    return f"flite_{voice}" if engine == "flite" else f"{voice}_{variant}_{rate}"


def _speak(word: str, speaker: tuple[str, str, str, int], wav: Path, rng: random.Random | None) -> None:
    engine, voice, variant, rate = speaker
    if engine == "flite":
        subprocess.run(["flite", "-voice", voice, "-t", word, "-o", str(wav)], check=True)
        return
    pitch = rng.randint(30, 70) if rng else 50
    wpm = rate + (rng.randint(-25, 25) if rng else 0)
    subprocess.run(["espeak-ng", "-v", f"{voice}+{variant}", "-p", str(pitch), "-s", str(wpm), "-w", str(wav), word],
                   check=True)


def _clip(label: str, word: str, speaker, out: Path, tmp: Path, rng: random.Random, vary: bool) -> float:
    """One clip: the word (trimmed, 0.1 s padding) over a noise floor, or 1 s of noise for _silence_."""
    def noise(seconds: float, lo: float, hi: float) -> list[str]:  # sox: synth LENGTH TYPE, then a volume
        return ["synth", f"{seconds:.4f}", NOISES[rng.randrange(len(NOISES))], "vol", f"{rng.uniform(lo, hi):.4f}"]

    if label == SILENCE:
        subprocess.run(["sox", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out), *noise(1.0, 0.01, 0.1)],
                       check=True)
        return 1.0
    raw, speech = tmp / "raw.wav", tmp / "speech.wav"
    _speak(word, speaker, raw, rng if vary else None)
    subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(speech), "gain", "-n",
                    f"-{rng.randint(1, 8) if vary else 3}", "silence", "1", "0.02", "0.5%", "reverse", "silence", "1",
                    "0.02", "0.5%", "reverse", "pad", "0.1", "0.1"], check=True)
    seconds = float(subprocess.run(["soxi", "-D", str(speech)], check=True, capture_output=True, text=True).stdout)
    floor = tmp / "floor.wav"
    subprocess.run(["sox", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(floor),
                    *noise(seconds, 0.002, 0.01)], check=True)
    subprocess.run(["sox", "-m", str(speech), str(floor), str(out)], check=True)
    return round(seconds, 4)


def generate_kws_corpus(out_dir: str | Path, per_class: int = 20, valid_per_class: int = 4, test_per_class: int = 6,
                        seed: int = 0) -> Path:
    """Write OUT_DIR/{train,valid,test}.jsonl and OUT_DIR/audio/*.flac; returns OUT_DIR."""
    check_tools()
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    splits = (("train", per_class, TRAIN_SPEAKERS), ("valid", valid_per_class, TRAIN_SPEAKERS),
              ("test", test_per_class, TEST_SPEAKERS))
    with tempfile.TemporaryDirectory() as tmpd:
        for split, count, speakers in splits:
            utts = []
            for label in CLASSES:
                for i in range(count):
                    speaker = speakers[(i + CLASSES.index(label)) % len(speakers)]
                    word = rng.choice(UNKNOWN_WORDS) if label == UNKNOWN else ("" if label == SILENCE else label)
                    uid = f"{split}_{label.strip('_')}_{i:03d}"
                    dur = _clip(label, word, speaker, audio_dir / f"{uid}.flac", Path(tmpd), rng, split != "test")
                    utts.append(Utterance(id=uid, audio=f"audio/{uid}.flac", duration=dur, text=word or None,
                                          label=label, speaker=None if label == SILENCE else speaker_name(speaker),
                                          language="en", sample_rate=SAMPLE_RATE, channels=1))
            rng.shuffle(utts)
            write_manifest(out_dir / f"{split}.jsonl", utts, relative_to_manifest=True)
    return out_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--per-class", type=int, default=20, help="training clips per class")
    ap.add_argument("--valid-per-class", type=int, default=4)
    ap.add_argument("--test-per-class", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    try:
        generate_kws_corpus(a.out_dir, a.per_class, a.valid_per_class, a.test_per_class, a.seed)
    except SpxError as exc:
        print(f"error: {exc.one_line()}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        sys.exit(exc.exit_code)
    print(f"wrote {a.out_dir}/{{train,valid,test}}.jsonl")


if __name__ == "__main__":
    main()
