"""Benchmark: the README's first command, the whole default `spx bench` (3 backends: train + decode + report).

Targets (issue 4): <= 600 s wall on the 2-core dev machine, each backend <= 15% held-out WER. Runs
`spx bench` as a user would, into a fresh folder (--force), and prints the wall time and per-cell figures
read back from results.json. Extra arguments go to `spx bench` unchanged (e.g. `-o features.n_mels=40`,
`--jobs 1`). Run it on an otherwise idle machine: the figure is only as quiet as the cores.

    uv run python benchmarks/bench_default.py [--out DIR] [-- spx bench arguments]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_WALL_S = 600.0
TARGET_WER = 0.15


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="bench output folder [default: a new temp folder]")
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments passed to `spx bench`")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="spx-bench-default-"))
    extra = [a for a in args.bench_args if a != "--"]
    cmd = [sys.executable, "-m", "spx", "bench", "--out", str(out), "--force", *extra]
    print("running:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    rc = subprocess.run(cmd, check=False).returncode
    wall = time.perf_counter() - start
    results_file = out / "results.json"
    if not results_file.exists():
        print(f"spx bench exited with {rc} and wrote no {results_file}: see its output above")
        return 1
    results = json.loads(results_file.read_text(encoding="utf-8"))
    print(f"\nwhole bench: {wall:.0f} s wall (target <= {TARGET_WALL_S:.0f} s), exit code {rc}, report in {out}")
    ok = rc == 0 and wall <= TARGET_WALL_S
    for row in results["rows"]:
        wer = row.get("wer")
        rtfx_median = (row.get("speed") or {}).get("rtfx")
        print(f"  {row['backend']:12s} {row['state']:9s} WER {wer if wer is None else f'{wer:.3f}'}"
              f"  train {row.get('train_wall_s') or 0:.0f} s  epochs {row.get('epochs')}"
              f"  RTFx {rtfx_median if rtfx_median is None else f'{rtfx_median:.0f}'}")
        ok = ok and wer is not None and wer <= TARGET_WER
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
