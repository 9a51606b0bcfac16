"""Mean training step time: the spx-rendered ESPnet run vs a hand-written loop over the same ESPnet model.

    uv run python benchmarks/step_time_espnet.py [--epochs 3] [--keep DIR]

1. spx renders recipes/conformer_ctc.yaml for ESPnet and runs its `prepare` and `train` steps (ESPnet's trainer).
   Step time = ESPnet's own per-iteration clock (`train_time`: data + forward + backward + clip + optimizer),
   averaged over epochs 2..N (epoch 1 warms up).
2. In this process, the same model is built from the same native argv (ASRTask.build_model), fed by ESPnet's
   own iterator over the same data and batches, and trained by a hand-written loop: forward, backward,
   clip, AdamW step, scheduler step. Same clock, same epochs skipped.
Prints both means and the ratio spx/hand (target <= 1.02). Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def spx_step_times(rd: Path) -> list[float]:
    """ESPnet's per-epoch mean train_time (seconds per iteration) from the spx run's train.log."""
    out = []
    for line in (rd / "train.log").read_text().splitlines():
        m = re.search(r"(\d+)epoch results: \[train\] .*?train_time=([0-9.e+-]+)", line)
        if m:
            out.append(float(m.group(2)))
    return out


def hand_written(rd: Path, epochs: int) -> list[float]:
    import torch
    from espnet2.tasks.abs_task import scheduler_classes
    from espnet2.tasks.asr import ASRTask
    from espnet2.train.distributed_utils import DistributedOption, resolve_distributed_mode

    os.chdir(rd)
    native = json.loads((rd / "native/commands.json").read_text())
    argv = native["commands"]["asr_train"][1:] + ["--ngpu", "0", "--output_dir", str(rd / "hand_exp")]
    args = ASRTask.get_parser().parse_args(argv)
    resolve_distributed_mode(args)
    torch.manual_seed(args.seed)
    model = ASRTask.build_model(args)
    optimizer = torch.optim.AdamW(model.parameters(), **args.optim_conf)
    scheduler = scheduler_classes[args.scheduler.lower()](optimizer, **args.scheduler_conf)
    factory = ASRTask.build_iter_factory(args=args, distributed_option=DistributedOption(), mode="train")
    per_epoch = []
    model.train()
    for epoch in range(1, epochs + 1):
        times = []
        t0 = time.perf_counter()
        for _, batch in factory.build_iter(epoch):
            loss, _, weight = model(**batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            t1 = time.perf_counter()
            times.append(t1 - t0)
            t0 = t1
        per_epoch.append(statistics.mean(times))
        print(f"hand-written epoch {epoch}: {len(times)} steps, mean {per_epoch[-1]:.4f} s/step", flush=True)
    return per_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="run dir to use (kept); default: a temp dir")
    a = ap.parse_args()
    from spx.runner import render_run
    from spx.spec import load_spec

    rd = a.keep or Path(tempfile.mkdtemp(prefix="spx-espnet-steptime-")) / "run"
    spec = load_spec(REPO / "recipes/conformer_ctc.yaml", [f"training.epochs={a.epochs}"])
    render_run(spec, "espnet", rd, force=True)
    for step in json.loads((rd / "steps.json").read_text()):
        if step["name"] in ("prepare", "train"):
            log_path = rd / (step.get("log") or f"logs/{step['name']}.log")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as log:
                subprocess.run(step["argv"], cwd=rd, stdout=log, stderr=subprocess.STDOUT, check=True)
    spx = spx_step_times(rd)
    hand = hand_written(rd, a.epochs)
    warm = slice(1, None) if a.epochs > 1 else slice(None)
    s, h = statistics.mean(spx[warm]), statistics.mean(hand[warm])
    print(f"run dir: {rd}")
    print(f"spx-rendered ESPnet run : {s:.4f} s/step (per epoch: {', '.join(f'{x:.4f}' for x in spx)})")
    print(f"hand-written native loop: {h:.4f} s/step (per epoch: {', '.join(f'{x:.4f}' for x in hand)})")
    print(f"ratio spx/hand          : {s / h:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
