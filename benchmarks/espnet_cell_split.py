"""Where the time of one ESPnet ASR cell goes: per child process, imports / stats / train / decode, and the whole cell.

    uv run python benchmarks/espnet_cell_split.py             # this checkout
    uv run python benchmarks/espnet_cell_split.py --before    # the commit before the one-process prepare+train change
    uv run python benchmarks/espnet_cell_split.py --both      # both, one after the other, then the two tables
    uv run python benchmarks/espnet_cell_split.py --ref REF   # any other git commit (a temporary `git worktree`)
    uv run python benchmarks/espnet_cell_split.py --imports   # only `import espnet2.tasks.asr`, per deferred module

It renders recipes/conformer_ctc.yaml for espnet (the default bench cell: 40 epochs, about 5 minutes on 2 idle
cores) and runs the run dir's steps itself, as `spx exec` does (same argv, cwd and environment), with
PYTHONPROFILEIMPORTTIME=1, so each child's interpreter reports how long its imports took (CPython's own
`-X importtime`, the same clock for every version). Every output line is time-stamped on arrival. Per process:
  imports  the sum of the child's top-level import times (lazy imports that load later are counted too)
  stats    tokenize_text + collect_stats + aggregate_stats_dirs: from the process start to the child's progress line
           that says the token list is done (`tokens=`), less the imports before it
  train    the rest of the process that trains (ESPnet's trainer, summary, interpreter exit)
  decode   the rest of the decode process (three timed decodes of the test set and a warm-up)
  other    what is left of a process that did only prepare (interpreter exit)
--imports measures each candidate of spx.adapters.espnet.steps.lazy_imports: a fresh interpreter imports espnet2.tasks.asr
(train) and espnet2.bin.asr_inference (decode) with nothing deferred, each name alone, all but each name, and all of
them (ROUNDS rounds, interleaved; medians of the interpreter's own import clock and of the wall time). One whole
import varies by +-2 s on a shared 2-core machine: use 3 rounds or more on a quiet one; the subtree of each deferred
module in a `-X importtime` listing says more precisely what deferring it avoids.
The held-out WER is printed too: the change must not move it (1-thread runs repeat themselves exactly).
Print the machine's load beside the figures: the table is only comparable at a similar load.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the last commit whose ESPnet ASR cell ran prepare, train and decode as three processes
BEFORE_REF = "b02812f"
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| (\S.*)$")  # depth 0: no spaces before the module name


def timed_lines(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, float, list[tuple[float, str]]]:
    """Run argv; return (start, end, [(arrival time, line)]) and append the output to `log`."""
    lines: list[tuple[float, str]] = []
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "a", encoding="utf-8") as fh:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.time(), line.rstrip("\n")))
            fh.write(line)
        rc = proc.wait()
    end = time.time()
    if rc != 0:
        tail = "\n".join(text for _, text in lines[-20:] if not IMPORT_LINE.match(text))
        raise SystemExit(f"{' '.join(argv)} failed (exit {rc}); log {log}:\n{tail}")
    return start, end, lines


def split_process(name: str, start: float, end: float, lines: list[tuple[float, str]]) -> dict[str, float]:
    imports = [(t, int(m.group(1)) / 1e6) for t, text in lines if (m := IMPORT_LINE.match(text))]
    total_imports = sum(s for _, s in imports)
    row = {"process": name, "wall": end - start, "imports": total_imports, "stats": 0.0, "train": 0.0, "decode": 0.0,
           "other": 0.0}
    prepared = next((t for t, text in lines if text.startswith("SPX_PROGRESS ") and '"tokens"' in text), None)
    rest = row["wall"] - total_imports
    if prepared is not None:
        row["stats"] = prepared - start - sum(s for t, s in imports if t <= prepared)
        rest -= row["stats"]
    kind = "decode" if name == "decode" else "train" if "train" in name else "other"
    row[kind] += rest
    return row


def measure(root: Path, work: Path, label: str, overrides: list[str]) -> dict:
    """Render and run the default ESPnet cell with the spx found at `root`; returns the per-process split."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}
    rd = work / f"run-{label}"
    subprocess.run([sys.executable, "-m", "spx", "run", "--backend", "espnet", str(root / "recipes/conformer_ctc.yaml"),
                    "--run-dir", str(rd), "--dry-run", *overrides], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    steps = json.loads((rd / "steps.json").read_text())
    load_before = os.getloadavg()
    t0 = time.time()
    rows = []
    for step in steps:
        child_env = {**env, **step.get("env", {}), "SPX_RUN_DIR": str(rd), "PYTHONPROFILEIMPORTTIME": "1"}
        start, end, lines = timed_lines(step["argv"], rd, child_env, rd / (step.get("log") or f"logs/{step['name']}.log"))
        rows.append(split_process(step["name"], start, end, lines))
        print(f"[{label}] {step['name']}: {end - start:.1f} s", flush=True)
    cell = time.time() - t0
    score = subprocess.run([sys.executable, "-c", "import sys; from spx.rundir import RunDir; from spx.runner import "
                            "finalize_run; print(finalize_run(RunDir(sys.argv[1]))['wer'])", str(rd)],
                           cwd=root, env=env, check=True, capture_output=True, text=True)
    return {"label": label, "rows": rows, "cell": cell, "wer": float(score.stdout.split()[-1]),
            "load": [round(x, 2) for x in (*load_before, *os.getloadavg())], "run_dir": str(rd)}


def table(result: dict) -> str:
    cols = ("wall", "imports", "stats", "train", "decode", "other")
    out = [f"{result['label']}: whole cell {result['cell']:.1f} s, held-out WER {result['wer']:.4f}, "
           f"load avg before {result['load'][:3]} after {result['load'][3:]}",
           f"  {'process':<9}" + "".join(f"{c:>9}" for c in cols)]
    for row in result["rows"]:
        out.append(f"  {row['process']:<9}" + "".join(f"{row[c]:9.1f}" for c in cols))
    out.append(f"  {'total':<9}" + "".join(f"{sum(r[c] for r in result['rows']):9.1f}" for c in cols))
    return "\n".join(out)


def import_costs(rounds: int) -> None:
    from spx.adapters.espnet.steps.lazy_imports import DEFERRED

    # each name alone, and all but it: a name another deferred module imports anyway (g2p_en -> nltk) shows its
    # saving only beside that one
    variants = [(), *[(name,) for name in DEFERRED], *[tuple(n for n in DEFERRED if n != name) for name in DEFERRED],
                DEFERRED]
    code = ("import importlib, sys; from spx.adapters.espnet.steps.lazy_imports import defer_unused_imports; "
            "defer_unused_imports(tuple(sys.argv[2:])); importlib.import_module(sys.argv[1])")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONPROFILEIMPORTTIME": "1"}
    for module in ("espnet2.tasks.asr", "espnet2.bin.asr_inference"):  # the train step's import, the decode step's
        seen: dict[tuple, list[tuple[float, float]]] = {v: [] for v in variants}
        for _ in range(rounds):
            for names in seen:
                t0 = time.time()
                proc = subprocess.run([sys.executable, "-c", code, module, *names], env=env, capture_output=True,
                                      text=True, check=True)
                imports = sum(int(m.group(1)) / 1e6 for line in proc.stderr.splitlines() if (m := IMPORT_LINE.match(line)))
                seen[names].append((imports, time.time() - t0))
        print(f"import {module}, {rounds} round(s), load avg {[round(x, 2) for x in os.getloadavg()]}")
        for names, runs in seen.items():
            imports, wall = (sorted(x[i] for x in runs)[len(runs) // 2] for i in (0, 1))
            print(f"  deferred {', '.join(names) or '(nothing)':<22} imports {imports:6.1f} s   wall {wall:6.1f} s")


def checkout(ref: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(into), ref], check=True,
                   stdout=subprocess.DEVNULL)
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--before", action="store_true", help=f"measure commit {BEFORE_REF} (three processes)")
    which.add_argument("--both", action="store_true", help=f"measure {BEFORE_REF}, then this checkout")
    which.add_argument("--ref", help="measure this git commit instead of the checkout")
    which.add_argument("--imports", type=int, nargs="?", const=3, metavar="ROUNDS",
                       help="measure only the imports of the train and decode steps per deferred module (default 3 rounds)")
    ap.add_argument("overrides", nargs="*", help="spec overrides for a quick look, e.g. training.epochs=2 (the "
                    "figures to report use none)")
    ap.add_argument("--keep", type=Path, help="work folder to keep (run dirs); default: a temp folder, removed")
    a = ap.parse_args()
    if a.imports:
        import_costs(a.imports)
        return
    work = a.keep or Path(tempfile.mkdtemp(prefix="spx-espnet-split-"))
    work.mkdir(parents=True, exist_ok=True)
    plan = [("before", BEFORE_REF)] if a.before else [("before", BEFORE_REF), ("after", None)] if a.both else \
        [(a.ref, a.ref)] if a.ref else [("this checkout", None)]
    results, trees = [], []
    try:
        for label, ref in plan:
            root = REPO if ref is None else checkout(ref, work / f"src-{len(trees)}")
            if ref is not None:
                trees.append(root)
            results.append(measure(root, work, label.replace(" ", "_"), a.overrides))
            print(table(results[-1]), flush=True)
    finally:
        for tree in trees:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if len(results) > 1:
        print("\n" + "\n\n".join(table(r) for r in results))
        b, n = results
        print(f"\nwhole cell {b['cell']:.1f} s -> {n['cell']:.1f} s ({n['cell'] - b['cell']:+.1f} s); imports "
              f"{sum(r['imports'] for r in b['rows']):.1f} s -> {sum(r['imports'] for r in n['rows']):.1f} s; "
              f"processes {len(b['rows'])} -> {len(n['rows'])}; WER {b['wer']:.4f} -> {n['wer']:.4f}")


if __name__ == "__main__":
    main()
