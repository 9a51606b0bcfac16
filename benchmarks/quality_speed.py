"""Seconds each quality metric takes per second of audio, on the demo corpus test recordings.

    uv run python benchmarks/quality_speed.py [N_UTTS]

Models are loaded (and warmed up on one utterance) before the clock; the clock then covers scoring N
utterances (default 10). Prints one line per metric: total seconds, seconds per audio second, per utterance.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    from spx.bench import quality as q
    from spx.bench.judge import Judge
    from spx.bench.quality_audio import load_wav
    from spx.manifests import read_manifest

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    utts = read_manifest(REPO / "spx" / "demo" / "corpus" / "test.jsonl")[:n]
    wavs = [load_wav(u.audio, q.MOS_SR)[0] for u in utts]
    refs = wavs[1:] + wavs[:1]  # pair each utterance with another recording (another voice or sentence)
    audio_s = sum(len(w) for w in wavs) / q.MOS_SR
    judge = Judge.from_setting(None)
    cases = {
        "dnsmos": lambda ws: q.dnsmos(ws),
        "distillmos": lambda ws: q.distillmos(ws),
        "mcd+f0 (one WORLD analysis + DTW)": lambda ws: [q.mcd_dtw(a, b, q.MOS_SR) for a, b in zip(ws, refs)],
        "speaker_similarity": lambda ws: [q.speaker_similarity(a, b) for a, b in zip(ws, refs)],
        "judge whisper tiny.en": lambda ws: judge.transcribe_arrays(ws),
    }
    print(f"{len(wavs)} utterances, {audio_s:.1f} s of audio, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, fn in cases.items():
        fn(wavs[:1])  # load + warm up
        t0 = time.perf_counter()
        fn(wavs)
        dt = time.perf_counter() - t0
        print(f"{name:36s} {dt:7.2f} s  {dt / audio_s:6.3f} s per audio s  {dt / len(wavs):6.3f} s per utt")


if __name__ == "__main__":
    main()
