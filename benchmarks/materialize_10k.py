"""Benchmark: the audio contract on 10k utterances of mixed formats (spx/manifests/materialize.py).

A few espeak-ng sentences are converted with sox/ffmpeg into 8/22.05/48 kHz WAV, MP3, FLAC (16 kHz: read as is), Opus,
stereo WAV, Kaldi segments of long recordings and piped `sox ... |` commands; hard links give each utterance its own
path (so each is decoded: the cache key is the path + size + mtime). `conform_manifest` then runs in a child process,
twice: the first run materializes everything (2 worker processes, as `spx run`), the second finds every file in the
cache. Printed: wall time, CPU time (user + system of all its processes: the fair figure on a shared machine, with
the 1-minute load average) and peak RSS (largest process: the child or one of its pool workers).

    uv run python benchmarks/materialize_10k.py                 # 10,000 utterances
    uv run python benchmarks/materialize_10k.py --utts 1000 --workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCES = ["the quick brown fox jumps over the lazy dog", "open the door and turn on the green light",
             "seven white cars left the station at noon", "she sells sea shells by the sea shore"]
FORMS = ["wav8k", "wav22k", "wav48k", "mp3", "flac16k", "opus", "stereo", "segment", "pipe"]


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def make_sources(d: Path) -> dict[str, list[tuple[Path, float]]]:
    """Per form, (file, seconds) of each sentence; for 'segment', the long recording and each sentence's length."""
    import soundfile as sf

    out: dict[str, list[tuple[Path, float]]] = {f: [] for f in FORMS}
    for i, text in enumerate(SENTENCES):
        base = d / f"s{i}_22k.wav"
        _run("espeak-ng", "-w", str(base), text)
        seconds = sf.info(str(base)).duration
        conv = {"wav8k": ["-r", "8000"], "wav48k": ["-r", "48000"], "flac16k": ["-r", "16000"], "stereo": ["-c", "2"]}
        for form, args in conv.items():
            dst = d / f"s{i}_{form}.{'flac' if form == 'flac16k' else 'wav'}"
            _run("sox", str(base), *args, str(dst))
            out[form].append((dst, seconds))
        out["wav22k"].append((base, seconds))
        for form, ext, args in (("mp3", "mp3", ["-ar", "44100", "-b:a", "64k"]), ("opus", "opus", ["-c:a", "libopus"])):
            dst = d / f"s{i}.{ext}"
            _run("ffmpeg", "-nostdin", "-v", "error", "-i", str(base), *args, str(dst))
            out[form].append((dst, seconds))
        out["pipe"].append((base, seconds))
    long_rec = d / "long_22k.wav"  # all sentences, 11 times: segments are cut from it
    _run("sox", *[str(d / f"s{i}_22k.wav") for i in range(len(SENTENCES))] * 11, str(long_rec))
    out["segment"] = [(long_rec, out["wav22k"][i][1]) for i in range(len(SENTENCES))]
    return out


def make_manifest(d: Path, n: int) -> Path:
    sources = make_sources(d)
    links = d / "links"
    links.mkdir()
    lengths = [s for _, s in sources["wav22k"]]
    rows = []
    for k in range(n):
        form = FORMS[k % len(FORMS)]
        i = (k // len(FORMS)) % len(SENTENCES)
        src, seconds = sources[form][i]
        uid = f"u{k:05d}_{form}"
        if form == "segment":  # the j-th copy of sentence i in the long recording: distinct segments
            j = 1 + (k // (len(FORMS) * len(SENTENCES))) % 10
            offset = round(j * sum(lengths) + sum(lengths[:i]), 4)
            copy = links / f"long_{k // (len(FORMS) * len(SENTENCES) * 10)}.wav"  # a new recording every 40 segments
            if not copy.exists():
                os.link(src, copy)
            rows.append({"id": uid, "audio": str(copy), "offset": offset, "duration": round(seconds, 4)})
            continue
        link = links / f"{uid}{src.suffix}"
        os.link(src, link)
        audio = f"sox {link} -t wav - |" if form == "pipe" else str(link)
        rows.append({"id": uid, "audio": audio, "duration": round(seconds, 4)})
    path = d / "mixed.jsonl"
    path.write_text('{"spx_manifest": 1}\n' + "".join(json.dumps(r) + "\n" for r in rows))
    return path


def measure(manifest: Path, out: Path, cache: Path, workers: int) -> tuple[float, float, dict]:
    """(wall seconds, peak RSS MB of the child or its largest pool worker, summary with cpu_s: user + system seconds
    of the child, its workers and the pipes' commands) of conform_manifest in a fresh child process."""
    code = ("import json, resource, sys; from spx.manifests.materialize import conform_manifest; "
            "s = conform_manifest(sys.argv[1], sys.argv[2], 16000, sys.argv[3], workers=int(sys.argv[4])); "
            # stop the forkserver (it reaped the pool workers) and reap it, so RUSAGE_CHILDREN holds the workers
            "from multiprocessing import forkserver; forkserver._forkserver._stop(); "
            "u = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]; "
            "s['peak_kib'] = max(r.ru_maxrss for r in u); s['cpu_s'] = sum(r.ru_utime + r.ru_stime for r in u); "
            "print(json.dumps(s))")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(manifest), str(out), str(cache), str(workers)],
                          stdout=subprocess.PIPE, text=True, check=True)
    wall = time.perf_counter() - t
    summary = json.loads(proc.stdout)
    return wall, summary["peak_kib"] / 1024, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utts", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temp folder, removed)")
    args = ap.parse_args()
    missing = [t for t in ("espeak-ng", "sox", "ffmpeg") if shutil.which(t) is None]
    if missing:
        sys.exit(f"needs {', '.join(missing)} (Debian packages)")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="spx_materialize_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        manifest = make_manifest(work, args.utts)
        print(f"corpus: {args.utts} utterances, forms {', '.join(FORMS)} ({time.perf_counter() - t:.1f} s to make)")
        cache = work / "cache"
        wall, peak, summary = measure(manifest, work / "out1.jsonl", cache, args.workers)
        audio_s = sum(json.loads(line)["duration"] for line in (work / "out1.jsonl").read_text().splitlines()[1:])
        print(f"first run:  {wall:.1f} s wall, {summary['cpu_s']:.1f} s CPU ({args.utts / wall:.0f} utt/s, "
              f"{audio_s / wall:.0f}x real time; load {os.getloadavg()[0]:.1f}), "
              f"peak RSS {peak:.0f} MB; as is {summary['as_is']}, materialized {summary['materialized']} "
              f"{summary['reasons']}, written {summary['cache_written']}")
        wall2, peak2, summary2 = measure(manifest, work / "out2.jsonl", cache, args.workers)
        print(f"second run: {wall2:.1f} s wall, {summary2['cpu_s']:.1f} s CPU (load {os.getloadavg()[0]:.1f}; all cache "
              f"hits: reused {summary2['cache_reused']}, "
              f"written {summary2['cache_written']}), peak RSS {peak2:.0f} MB")
        size = sum(p.stat().st_size for p in cache.rglob("*.wav"))
        print(f"cache: {size / 1e6:.0f} MB for {audio_s / 3600:.2f} h of 16 kHz mono 16-bit audio; workers {args.workers}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
