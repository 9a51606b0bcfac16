"""Benchmark: convert a 1M-line spx manifest into NeMo JSONL, SpeechBrain CSV and a Kaldi dir; same through lhotse.

Target on the 2-core dev machine: <= 10 s and <= 500 MB peak RSS for the spx conversion.
Each measured conversion runs in its own child process (peak RSS = the largest ru_maxrss of its processes, GNU
sort included; CPU = user + system seconds of all of them).

    uv run python benchmarks/manifest_convert_1m.py              # 1,000,000 lines
    uv run python benchmarks/manifest_convert_1m.py --lines 100000 --skip-lhotse
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "the a of and to in is was he for it with as his on be at by had are but from or have an they which one you were".split()


def generate(path: Path, lines: int, lhotse_dir: Path | None) -> None:
    """Synthetic manifest (no audio needed): 2,000 speakers, 5-20 word texts; the same content as lhotse JSONL."""
    rng = random.Random(0)
    words = WORDS + [f"w{i}" for i in range(2000)]
    rec_fh = sup_fh = None
    if lhotse_dir is not None:
        lhotse_dir.mkdir(parents=True, exist_ok=True)
        rec_fh = (lhotse_dir / "recordings.jsonl").open("w", encoding="utf-8")
        sup_fh = (lhotse_dir / "supervisions.jsonl").open("w", encoding="utf-8")
    with path.open("w", encoding="utf-8") as fh:
        fh.write('{"spx_manifest": 1}\n')
        for i in range(lines):
            spk = f"spk{rng.randrange(2000):04d}"
            uid = f"{spk}-utt{i:07d}"
            dur = round(rng.uniform(1.0, 20.0), 4)
            text = " ".join(rng.choices(words, k=rng.randint(5, 20)))
            audio = f"/corpus/audio/{spk}/{uid}.flac"
            fh.write(json.dumps({"id": uid, "audio": audio, "duration": dur, "text": text, "speaker": spk,
                                 "language": "en", "sample_rate": 16000, "channels": 1}) + "\n")
            if rec_fh is not None:
                rec_fh.write(json.dumps({"id": uid, "sources": [{"type": "file", "channels": [0], "source": audio}],
                                         "sampling_rate": 16000, "num_samples": round(dur * 16000), "duration": dur,
                                         "channel_ids": [0]}) + "\n")
                sup_fh.write(json.dumps({"id": uid, "recording_id": uid, "start": 0.0, "duration": dur, "channel": 0,
                                         "text": text, "speaker": spk, "language": "en"}) + "\n")
    if rec_fh is not None:
        rec_fh.close()
        sup_fh.close()


# ---------------------------------------------------------------- what the children run
def child_spx(manifest: str, workers: str, out: str) -> None:
    """What `spx manifest export kaldi M out/kaldi --also nemo=... --also speechbrain_csv=...` runs."""
    from spx.manifests.exporters import convert_manifest

    targets = {"nemo": f"{out}/nemo.json", "speechbrain_csv": f"{out}/sb.csv", "kaldi": f"{out}/kaldi"}
    print(convert_manifest(manifest, targets, workers=int(workers)))


def child_spx_one(manifest: str, fmt: str, out: str) -> None:
    from spx.manifests.exporters import convert
    from spx.manifests.io import iter_manifest

    target = {"nemo": f"{out}/nemo.json", "speechbrain_csv": f"{out}/sb.csv", "kaldi": f"{out}/kaldi"}[fmt]
    print(convert(iter_manifest(manifest), {fmt: target}))


def child_lhotse(lhotse_dir: str, out: str) -> None:
    """The same three outputs through lhotse: Recording/SupervisionSet -> CutSet -> NeMo JSONL and SpeechBrain CSV
    (written from the cuts); Kaldi dir by lhotse.kaldi.export_to_kaldi. (A lazy CutSet.from_manifests with
    supervisions grows quadratically here, so the sets are loaded eagerly, as lhotse's own recipes do.)"""
    import csv

    from lhotse import CutSet, load_manifest
    from lhotse.kaldi import export_to_kaldi

    recs = load_manifest(f"{lhotse_dir}/recordings.jsonl")
    sups = load_manifest(f"{lhotse_dir}/supervisions.jsonl")
    cuts = CutSet.from_manifests(recordings=recs, supervisions=sups)
    n = 0
    with open(f"{out}/nemo.json", "w", encoding="utf-8") as nemo, open(f"{out}/sb.csv", "w", encoding="utf-8", newline="") as sbf:
        sb = csv.writer(sbf)
        sb.writerow(["ID", "duration", "wav", "spk_id", "wrd"])
        for cut in cuts:
            sup = cut.supervisions[0]
            path = cut.recording.sources[0].source
            nemo.write(json.dumps({"audio_filepath": path, "duration": cut.duration, "text": sup.text, "lang": sup.language},
                                  ensure_ascii=False) + "\n")
            sb.writerow([cut.id, cut.duration, path, sup.speaker, sup.text])
            n += 1
    export_to_kaldi(recs, sups, f"{out}/kaldi", prefix_spk_id=False)
    print(n)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("--child-"):
        kind, *rest = sys.argv[1:]
        {"--child-spx": child_spx, "--child-spx-one": child_spx_one, "--child-lhotse": child_lhotse}[kind](*rest)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2, help="processes of the spx conversion (the machine has 2 cores)")
    ap.add_argument("--skip-lhotse", action="store_true")
    ap.add_argument("--per-format", action="store_true", help="also time each format alone")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spx-bench-manifest-"))
    try:
        manifest = work / "manifest.jsonl"
        t = time.perf_counter()
        generate(manifest, args.lines, None if args.skip_lhotse else work / "lhotse")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (wall times grow with other load)",
              flush=True)
        print(f"generated {args.lines:,} lines ({manifest.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s", flush=True)
        # RUSAGE_CHILDREN keeps the max over all children, so each conversion gets its own measuring process
        def run(label: str, child_args: list[str]) -> float:
            out = work / label.replace(" ", "_")
            out.mkdir()
            probe = [sys.executable, "-c",
                     "import resource,subprocess,sys,time; t=time.perf_counter(); "
                     "p=subprocess.run(sys.argv[1:]); s=time.perf_counter()-t; "
                     "r=resource.getrusage(resource.RUSAGE_CHILDREN); "
                     "print(f'{s:.3f} {r.ru_maxrss/1024:.1f} {r.ru_utime+r.ru_stime:.3f}', file=sys.stderr); "
                     "sys.exit(p.returncode)", sys.executable, __file__, *child_args, str(out)]
            proc = subprocess.run(probe, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
            seconds, peak, cpu = map(float, proc.stderr.strip().splitlines()[-1].split())
            # CPU seconds (all processes, GNU sort included) do not grow with other load the way wall time does;
            # the load average (1 min) after the run says how shared the machine was meanwhile
            print(f"{label:<36} {seconds:7.2f} s wall  {cpu:7.2f} s CPU   peak RSS {peak:6.0f} MB   "
                  f"load {os.getloadavg()[0]:4.1f}   ({proc.stdout.strip()} utterances)", flush=True)
            shutil.rmtree(out)
            return seconds

        spx_s = run(f"spx: nemo + sb_csv + kaldi ({args.workers} proc)", ["--child-spx", str(manifest), str(args.workers)])
        if args.workers != 1:
            run("spx: nemo + sb_csv + kaldi (1 proc)", ["--child-spx", str(manifest), "1"])
        if args.per_format:
            for fmt in ("nemo", "speechbrain_csv", "kaldi"):
                run(f"spx: {fmt} alone", ["--child-spx-one", str(manifest), fmt])
        if not args.skip_lhotse:
            lh_s = run("lhotse: nemo + sb_csv + kaldi", ["--child-lhotse", str(work / "lhotse")])
            print(f"lhotse / spx time ratio: {lh_s / spx_s:.2f}x")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
