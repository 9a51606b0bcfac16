"""Mean training step time: the spx-rendered NeMo run vs a hand-written NeMo run of the same model.

Both run in this one process, on the same data (the run's native train.json), the same batch size,
threads, seed and logging interval (trainer.log_every_n_steps decides how often NeMo computes the
training-batch WER, so both sides use the rendered value). The spx side is the real training entry point
(spx.adapters.nemo.steps.train.main on a run dir rendered from the recipe, exp_manager and spx's callback
included); the native side is what a NeMo user writes by hand: EncDecCTCModel + a plain Lightning Trainer.

A step is one whole loop iteration, from one on_train_batch_start to the next in the same epoch: data
loading, forward, backward, optimizer and every callback hook of that side. Steps that span an epoch end
(validation, checkpointing) are not steps. Both samplers get the same seeded generator and the global RNGs
(which NeMo's speed perturbation draws from) are reseeded as fit starts, so both sides see the same batches
in the same order (checked: the run stops with an error otherwise).
`--warmup-rounds` untimed rounds run first (per-shape kernel and allocator caches are filled by the first
run in a process, which was always the spx side); then runs alternate (spx, native, native, spx, ...) so
load drift on a shared machine hits both alike; the first `--skip` steps of each run are not counted.
On a loaded machine use `--threads 1`: two OpenMP threads that wait for each other's core make every
figure several times slower and noisier.

    uv run python benchmarks/step_time_nemo.py [--recipe recipes/conformer_ctc.yaml] [--steps 20] [--rounds 4]

Prints per side the mean and median wall time and the mean CPU time (all threads) per step, the ratio
spx / native (target <= 1.02) of each, the spread of the per-round ratios, and the ratio of the per-step
minima over rounds (the same batch at each step index, so the least-disturbed run of it; robust to load).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def step_timer(seed: int):
    import random

    import lightning.pytorch as pl
    import numpy as np
    import torch

    class StepTimer(pl.Callback):
        """Whole loop iterations: wall and process CPU time from one batch start to the next in the same epoch."""

        def __init__(self) -> None:
            self.wall: list[float] = []
            self.cpu: list[float] = []
            self.batch_shapes: list[tuple] = []
            self._last: tuple[int, int, float, float] | None = None
            self.threads = 0

        def on_train_start(self, trainer, pl_module) -> None:
            self.threads = torch.get_num_threads()

        def on_fit_start(self, trainer, pl_module) -> None:
            # the shuffle must not depend on what each side drew from the global RNG before (model init,
            # exp_manager): both samplers get their own generator, and the global RNG is reseeded for the rest
            sampler = pl_module._train_dl.sampler
            if not isinstance(sampler, torch.utils.data.RandomSampler):
                raise RuntimeError("expected a shuffling RandomSampler on the train loader, "
                                   f"got {type(sampler).__name__}")
            sampler.generator = torch.Generator().manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            now = (trainer.current_epoch, batch_idx, time.perf_counter(), time.process_time())
            if self._last is not None and self._last[:2] == (now[0], now[1] - 1):
                self.wall.append(now[2] - self._last[2])
                self.cpu.append(now[3] - self._last[3])
            self._last = now
            self.batch_shapes.append(tuple(batch[0].shape))

    return StepTimer()


def render(recipe: Path, steps: int, out: Path, extra: list[str]):
    from spx.runner import render_run
    from spx.spec import load_spec

    spec = load_spec(recipe, [f"training.max_steps={steps}", "resources.devices=1", "resources.accelerator=cpu",
                              "training.num_workers=0", *extra])
    return render_run(spec, "nemo", out, force=True)


def run_spx(recipe: Path, steps: int, workdir: Path, extra: list[str]):
    from spx.adapters.nemo.steps import train
    from spx.spec import load_spec

    rd = render(recipe, steps, workdir / f"spx-{time.monotonic_ns()}", extra)
    timer = step_timer(load_spec(rd / "spec.yaml", []).training.seed)
    train.main(str(rd), [timer])
    return timer


def run_native(recipe: Path, steps: int, workdir: Path, extra: list[str]):
    """A hand-written NeMo run: the user's own config dict, EncDecCTCModel and a plain Trainer."""
    import json

    import lightning.pytorch as pl
    import torch
    from omegaconf import OmegaConf

    from nemo.collections.asr.models import EncDecCTCModel
    from spx.spec import load_spec

    spec = load_spec(recipe, extra)
    # rendered for the same train.json, logging interval and thread count only
    rd = render(recipe, steps, workdir / f"data-{time.monotonic_ns()}", extra)
    rendered = OmegaConf.load(rd / "native" / "config.yaml")
    log_every_n_steps, threads = int(rendered.trainer.log_every_n_steps), int(rendered.spx.threads)
    train_json = rd / "native" / "train.json"
    texts = [json.loads(l)["text"] for l in train_json.read_text().splitlines()]
    labels = sorted({c for t in texts for c in t})
    enc, feat, tr = spec.model.encoder, spec.features, spec.training
    ds = {"manifest_filepath": str(train_json), "sample_rate": feat.sample_rate, "labels": labels,
          "batch_size": tr.batch_size, "shuffle": True, "num_workers": 0, "parser": "base"}
    aug = spec.augmentation
    if getattr(aug, "noise", None):
        sys.exit("error: the hand-written side has no noise augmentation; run this benchmark without it")
    if aug.speed_perturb:  # NeMo's speed perturbation: evenly spaced rates, one drawn per utterance
        rates = sorted(aug.speed_perturb)
        ds["augmentor"] = {"speed": {"prob": 1.0, "sr": feat.sample_rate, "resample_type": "fft",
                                     "min_speed_rate": rates[0], "max_speed_rate": rates[-1], "num_rates": len(rates)}}
    cfg = OmegaConf.create({
        "sample_rate": feat.sample_rate, "labels": labels, "train_ds": ds, "log_prediction": False,
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": feat.sample_rate, "features": feat.n_mels, "n_fft": feat.n_fft,
                         "window_size": feat.win_length_ms / 1000, "window_stride": feat.hop_length_ms / 1000,
                         "normalize": "per_feature", "pad_to": 0},
        "spec_augment": {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 2,
                         "freq_width": 15, "time_masks": 2, "time_width": 25},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": feat.n_mels,
                    "n_layers": enc.layers, "d_model": enc.d_model, "n_heads": enc.heads,
                    "ff_expansion_factor": enc.ff_expansion, "conv_kernel_size": enc.conv_kernel,
                    "subsampling": "striding", "subsampling_factor": enc.subsampling, "dropout": enc.dropout,
                    "dropout_pre_encoder": enc.dropout, "dropout_emb": 0.0, "dropout_att": enc.dropout},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": enc.d_model,
                    "num_classes": len(labels), "vocabulary": labels},
        "optim": {"name": tr.optimizer.name, "lr": tr.optimizer.lr, "betas": list(tr.optimizer.betas),
                  "weight_decay": tr.optimizer.weight_decay,
                  "sched": {"name": "CosineAnnealing", "warmup_steps": tr.scheduler.warmup_steps,
                            "min_lr": tr.scheduler.min_lr}},
    })
    torch.set_num_threads(threads)
    pl.seed_everything(tr.seed)
    timer = step_timer(tr.seed)
    trainer = pl.Trainer(devices=1, accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, gradient_clip_val=tr.grad_clip or 0.0, callbacks=[timer],
                         limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=log_every_n_steps)
    model = EncDecCTCModel(cfg=cfg, trainer=trainer)
    trainer.fit(model)
    return timer


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "conformer_ctc.yaml")
    ap.add_argument("--steps", type=int, default=20, help="training steps per run (keep below one epoch)")
    ap.add_argument("--skip", type=int, default=3, help="first steps of each run left out of the mean")
    ap.add_argument("--rounds", type=int, default=4, help="timed spx+native rounds")
    ap.add_argument("--warmup-rounds", type=int, default=1, help="untimed spx+native rounds first")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads of both sides; 1 keeps the CPU-time figures clean on a loaded machine "
                         "(no OpenMP thread spinning while its partner waits for a core)")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. model.encoder.layers=4")
    args = ap.parse_args()
    if args.steps <= args.skip + 1:
        ap.error("--steps must be larger than --skip + 1 (a step ends where the next begins)")

    overrides = [f"resources.threads={args.threads}", *args.overrides]
    runners = {"spx": run_spx, "native": run_native}
    timed: dict[str, list] = {"spx": [], "native": []}  # one StepTimer per timed run
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="spx-step-time-nemo-") as tmp:
        work = Path(tmp)
        for r in range(args.warmup_rounds + args.rounds):
            # alternate who goes first, so neither side always runs right after the other's teardown
            order = ("spx", "native") if r % 2 == 0 else ("native", "spx")
            timers = {side: runners[side](args.recipe, args.steps, work, overrides) for side in order}
            if timers["spx"].batch_shapes != timers["native"].batch_shapes:
                sys.exit(f"error: the two sides trained on different batches: spx {timers['spx'].batch_shapes} "
                         f"vs native {timers['native'].batch_shapes}")
            for side, timer in timers.items():
                if timer.threads != args.threads:
                    sys.exit(f"error: {side} run trained with {timer.threads} torch threads, not {args.threads}")
                if len(timer.wall) < args.steps - 1:
                    sys.exit(f"error: {side} run timed {len(timer.wall)} steps, expected {args.steps - 1} "
                             "(--steps must stay within one epoch)")
            s_mean, n_mean = (statistics.mean(timers[k].wall[args.skip:]) for k in ("spx", "native"))
            figures = f"spx {ms(s_mean)} ms, native {ms(n_mean)} ms, ratio {s_mean / n_mean:.3f}"
            if r < args.warmup_rounds:
                print(f"warm-up round {r + 1}/{args.warmup_rounds} (not counted): {figures}",
                      file=sys.stderr, flush=True)
                continue
            for side, timer in timers.items():
                timed[side].append(timer)
            print(f"round {r - args.warmup_rounds + 1}/{args.rounds}: {figures}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    def counted(side: str, kind: str) -> list[float]:
        return [t for timer in timed[side] for t in getattr(timer, kind)[args.skip:]]

    def per_step_minima(side: str, kind: str) -> list[float]:
        return [min(steps) for steps in zip(*(getattr(timer, kind)[args.skip:] for timer in timed[side]))]

    round_ratios = [statistics.mean(s.wall[args.skip:]) / statistics.mean(n.wall[args.skip:])
                    for s, n in zip(timed["spx"], timed["native"])]
    wall = {side: counted(side, "wall") for side in timed}
    cpu = {side: counted(side, "cpu") for side in timed}
    minima = {kind: {side: sum(per_step_minima(side, kind)) for side in timed} for kind in ("wall", "cpu")}
    print(f"recipe: {args.recipe} ({' '.join(overrides)}); {args.threads} torch threads per side")
    print(f"steps counted: {len(wall['spx'])} per side ({args.rounds} rounds x {args.steps - 1 - args.skip}; "
          f"first {args.skip} of each run skipped; {args.warmup_rounds} warm-up rounds)")
    print(f"load average (1 min): {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    for side, label in (("spx", "spx-rendered NeMo run"), ("native", "hand-written NeMo run")):
        print(f"{label} : {ms(statistics.mean(wall[side])):>8} ms/step wall "
              f"(median {ms(statistics.median(wall[side]))}), {ms(statistics.mean(cpu[side]))} ms/step CPU")
    ratios = [
        (statistics.mean(wall["spx"]) / statistics.mean(wall["native"]), "wall mean  (target <= 1.02)"),
        (statistics.median(wall["spx"]) / statistics.median(wall["native"]), "wall median"),
        (statistics.mean(cpu["spx"]) / statistics.mean(cpu["native"]), "CPU mean"),
        (minima["wall"]["spx"] / minima["wall"]["native"], "wall, per-step minima over rounds"),
        (minima["cpu"]["spx"] / minima["cpu"]["native"], "CPU, per-step minima over rounds"),
    ]
    for i, (ratio, what) in enumerate(ratios):
        print(f"{'ratio spx / native    :' if i == 0 else ' ' * 23} {ratio:8.3f} {what}")
    print(f"per-round wall ratios : {' '.join(f'{x:.3f}' for x in round_ratios)} "
          f"(spread {min(round_ratios):.3f}..{max(round_ratios):.3f})")


if __name__ == "__main__":
    main()
