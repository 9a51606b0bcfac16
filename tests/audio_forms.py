"""The audio-forms test corpus: demo utterances in every form real corpora come in (issue 13's audio contract).

    python tests/audio_forms.py OUT_DIR     (the same corpus the tests make)

Session fixture `audio_forms` -> OUT_DIR, built once per test run (file lock in the run's shared temp folder) from the
embedded demo corpus (16 kHz mono FLAC) with sox and ffmpeg, in a few seconds. OUT_DIR holds:

  forms.jsonl       every row of every form (ids `<form>-<demo id>`); the Kaldi forms come through
                    `spx manifest import kaldi`, as a user would bring them
  reference.jsonl   the same ids, each row's reference: a 16 kHz mono 16-bit WAV of the same utterance (ref/)
  index.json        id -> {form, exact, reference, original}: `exact` rows hold the very samples of their reference
                    (lossless, no resampling: the toolkit must read them sample for sample); the others are
                    resampled or lossy, and their reference is their own decoded audio (soundfile's decoder, mean of
                    the channels, soxr at its highest quality to 16 kHz), so only the resampler may differ
  train.jsonl / valid.jsonl / test.jsonl   the forms split for an end-to-end run: it trains on one mix of forms
                    and decodes a test set in the others (TRAIN_FORMS, VALID_FORMS, TEST_FORMS)
  kaldi_segments/, kaldi_pipes/   the Kaldi data dirs the Kaldi forms were imported from
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shared_artifacts import build_once, shared_dir

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "spx" / "demo" / "corpus"
SR = 16000
PER_FORM = 2  # utterances per form: 12 forms, 24 rows, ~35 s of audio

# form -> True where the row holds the reference's very samples (lossless, at 16 kHz once decoded)
FORMS = {
    "wav8k": False, "wav22k": False, "wav48k": False,  # sox/ffmpeg resampled WAVs
    "mp3": False,            # 44.1 kHz MP3 (lossy and resampled)
    "opus": False,           # Ogg/Opus at 16 kHz (lossy)
    "flac": True,            # 24-bit FLAC
    "stereo": True,          # 16 kHz stereo WAV whose channel mean is the utterance (L = x + d, R = x - d)
    "segments": True,        # Kaldi segments (10 ms grid) into one long 16 kHz WAV of several utterances
    "segments_pipe": True,   # Kaldi segments into a long FLAC read through `sox ... -t wav - |`
    "pipe_sox": True,        # Kaldi wav.scp `sox x.flac -t wav - |`
    "pipe_ffmpeg": True,     # Kaldi wav.scp `ffmpeg -i x.flac -f wav - |`
    "pipe_sph": True,        # Kaldi wav.scp `sox x.sph -t wav - |` (NIST SPHERE, as sph2pipe reads it in LDC corpora)
}
TRAIN_FORMS = ("wav8k", "wav48k", "mp3", "stereo", "segments", "pipe_sox", "pipe_sph")
VALID_FORMS = ("flac",)
TEST_FORMS = ("wav22k", "opus", "segments_pipe", "pipe_ffmpeg")
SEGMENT_GAP_S = 0.3


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"{shlex.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"


def _ffmpeg(*args: str) -> list[str]:
    return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]


def _write_reference(path: Path, audio: np.ndarray, sr: int) -> None:
    """16 kHz mono 16-bit: int16 samples as they are; decoded float audio (channel mean) resampled by soxr."""
    if audio.dtype != np.int16:
        import soxr

        mono = audio.mean(axis=1) if audio.ndim == 2 else audio
        audio = mono if sr == SR else soxr.resample(mono, sr, SR, quality="VHQ")
    sf.write(path, audio, SR, subtype="PCM_16")


def _grid(samples: np.ndarray, step: int = SR // 100) -> np.ndarray:
    """Pad to a whole number of 10 ms, so Kaldi `segments` times (2 decimals) cut it sample-exactly."""
    return np.pad(samples, (0, -len(samples) % step))


def make_audio_forms(out: Path) -> Path:
    from spx.manifests import Utterance, iter_manifest, read_manifest, write_manifest

    demo = read_manifest(DEMO / "train.jsonl")
    sources = iter(demo)
    dirs = {name: out / name for name in ("audio", "ref", "kaldi_segments", "kaldi_pipes")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    rows: list[Utterance] = []
    index: dict[str, dict] = {}
    kaldi: dict[str, dict[str, list[str]]] = {k: {"wav.scp": [], "text": [], "utt2spk": [], "segments": []}
                                              for k in ("kaldi_segments", "kaldi_pipes")}

    def add(form: str, src: Utterance, reference: np.ndarray, ref_sr: int) -> str:
        uid = f"{form}-{src.id}"
        ref = dirs["ref"] / f"{uid}.wav"
        _write_reference(ref, reference, ref_sr)
        index[uid] = {"form": form, "exact": FORMS[form], "reference": str(ref), "original": src.audio}
        return uid

    def plain(form: str, src: Utterance, path: Path) -> None:
        decoded, sr = sf.read(path, dtype="int16" if FORMS[form] else "float64", always_2d=True)
        reference = ((decoded.astype(np.int32).sum(axis=1) // decoded.shape[1]).astype(np.int16) if FORMS[form]
                     else decoded)
        uid = add(form, src, reference, sr)
        info = sf.info(path)
        rows.append(Utterance(id=uid, audio=str(path), duration=info.frames / info.samplerate, text=src.text,
                              speaker=src.speaker, language="en", sample_rate=info.samplerate, channels=info.channels))

    def kaldi_row(kdir: str, uid: str, src: Utterance) -> None:
        kaldi[kdir]["text"].append(f"{uid} {src.text}")
        kaldi[kdir]["utt2spk"].append(f"{uid} {src.speaker}")

    for form in FORMS:
        batch = [next(sources) for _ in range(PER_FORM)]
        if form.startswith("segments"):
            recording = f"rec_{form}"
            pieces, t = [], 0
            gap = np.zeros(int(SEGMENT_GAP_S * SR), dtype=np.int16)
            for src in batch:
                samples = _grid(sf.read(src.audio, dtype="int16")[0])
                pieces += [gap, samples]
                start = t + len(gap)
                t = start + len(samples)
                uid = add(form, src, samples, SR)
                kaldi["kaldi_segments"]["segments"].append(f"{uid} {recording} {start / SR:.2f} {t / SR:.2f}")
                kaldi_row("kaldi_segments", uid, src)
            long = np.concatenate([*pieces, gap])
            if form == "segments":
                path = dirs["audio"] / f"{recording}.wav"
                sf.write(path, long, SR, subtype="PCM_16")
                entry = str(path)
            else:
                path = dirs["audio"] / f"{recording}.flac"
                sf.write(path, long, SR, subtype="PCM_16")
                entry = shlex.join(["sox", str(path), "-t", "wav", "-"]) + " |"
            kaldi["kaldi_segments"]["wav.scp"].append(f"{recording} {entry}")
            continue
        for src in batch:
            stem = dirs["audio"] / f"{form}-{src.id}"
            if form.startswith("pipe_"):
                uid = add(form, src, sf.read(src.audio, dtype="int16")[0], SR)
                sph = stem.with_suffix(".sph")
                if form == "pipe_sph":
                    _run(["sox", src.audio, str(sph)])
                cmd = {"pipe_sox": ["sox", src.audio, "-t", "wav", "-"],
                       "pipe_sph": ["sox", str(sph), "-t", "wav", "-"],
                       "pipe_ffmpeg": ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", src.audio, "-f", "wav", "-"]}[form]
                kaldi["kaldi_pipes"]["wav.scp"].append(f"{uid} {shlex.join(cmd)} |")
                kaldi_row("kaldi_pipes", uid, src)
                continue
            if form == "stereo":
                x = sf.read(src.audio, dtype="int16")[0].astype(np.int32)
                other = sf.read(demo[-1].audio, dtype="int16")[0].astype(np.int32) // 10
                d = np.resize(other, len(x))  # another voice, quietly: a left-channel-only read would hear it
                both = np.stack([x + d, x - d], axis=1)
                assert np.abs(both).max() <= 32767
                path = stem.with_suffix(".wav")
                sf.write(path, both.astype(np.int16), SR, subtype="PCM_16")
            elif form.startswith("wav"):
                rate = {"wav8k": "8000", "wav22k": "22050", "wav48k": "48000"}[form]
                path = stem.with_suffix(".wav")
                _run(["sox", src.audio, "-r", rate, "-b", "16", str(path)] if form != "wav48k"
                     else _ffmpeg("-i", src.audio, "-ar", rate, "-c:a", "pcm_s16le", str(path)))
            elif form == "mp3":
                path = stem.with_suffix(".mp3")
                _run(_ffmpeg("-i", src.audio, "-ar", "44100", "-c:a", "libmp3lame", "-b:a", "64k", str(path)))
            elif form == "opus":
                path = stem.with_suffix(".ogg")
                _run(_ffmpeg("-i", src.audio, "-c:a", "libopus", "-b:a", "32k", str(path)))
            else:  # flac
                path = stem.with_suffix(".flac")
                _run(["sox", src.audio, "-b", "24", str(path)])
            plain(form, src, path)

    manifests = []
    for kdir, files in kaldi.items():
        for name, lines in files.items():
            if lines:
                (dirs[kdir] / name).write_text("\n".join(lines) + "\n")
        imported = out / f"{kdir}.jsonl"
        _run([sys.executable, "-m", "spx", "manifest", "import", "kaldi", str(dirs[kdir]), str(imported),
              "--language", "en", "--allow-pipes"])
        manifests.append(imported)
    plain_rows = out / "plain.jsonl"
    write_manifest(plain_rows, rows)
    every = [u for m in (plain_rows, *manifests) for u in iter_manifest(m)]
    assert sorted(u.id for u in every) == sorted(index), "the Kaldi import lost or renamed rows"
    every.sort(key=lambda u: list(index).index(u.id))
    write_manifest(out / "forms.jsonl", every)
    write_manifest(out / "reference.jsonl", [
        Utterance(id=u.id, audio=index[u.id]["reference"], duration=sf.info(index[u.id]["reference"]).duration,
                  text=u.text, speaker=u.speaker, language="en", sample_rate=SR, channels=1) for u in every])
    for split, forms in (("train", TRAIN_FORMS), ("valid", VALID_FORMS), ("test", TEST_FORMS)):
        write_manifest(out / f"{split}.jsonl", [u for u in every if index[u.id]["form"] in forms])
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return out


@pytest.fixture(scope="session")
def audio_forms(tmp_path_factory) -> Path:
    return build_once(shared_dir(tmp_path_factory, "audio_forms"), make_audio_forms)


if __name__ == "__main__":
    make_audio_forms(Path(sys.argv[1]))
