"""Mean training step time: the spx-rendered NeMo run vs a hand-written NeMo run of the same model.

Both run in this one process, on the same data (the run's native train.json), the same batch size,
threads and seed. The spx side is the real training entry point (spx.adapters.nemo.train.main on a
run dir rendered from the recipe, exp_manager and spx's callback included); the native side is what a
NeMo user writes by hand: EncDecCTCModel + a plain Lightning Trainer. Runs alternate (spx, native,
spx, native, ...) so load drift on a shared machine hits both alike (and which goes first alternates); the first `--skip` steps of each
run are not counted (allocator / autotuning warm-up).

    uv run python benchmarks/step_time_nemo.py [--recipe recipes/conformer_ctc.yaml] [--steps 20] [--rounds 2]

Prints the mean step time of each side, and the ratio spx / native (target <= 1.02).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def step_timer():
    import lightning.pytorch as pl

    class StepTimer(pl.Callback):
        """Wall time of each training step: batch start to batch end (forward, backward, optimizer)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.times.append(time.perf_counter() - self._t)

    return StepTimer()


def render(recipe: Path, steps: int, out: Path, extra: list[str]):
    from spx.runner import render_run
    from spx.spec import load_spec

    spec = load_spec(recipe, [f"training.max_steps={steps}", "resources.devices=1", "resources.accelerator=cpu",
                              "resources.threads=2", "training.num_workers=0", *extra])
    return render_run(spec, "nemo", out, force=True)


def run_spx(recipe: Path, steps: int, workdir: Path, extra: list[str]) -> list[float]:
    from spx.adapters.nemo import train

    rd = render(recipe, steps, workdir / f"spx-{time.monotonic_ns()}", extra)
    timer = step_timer()
    train.main(str(rd), [timer])
    return timer.times


def run_native(recipe: Path, steps: int, workdir: Path, extra: list[str]) -> list[float]:
    """A hand-written NeMo run: the user's own config dict, EncDecCTCModel and a plain Trainer."""
    import json

    import lightning.pytorch as pl
    import torch
    from omegaconf import OmegaConf

    from nemo.collections.asr.models import EncDecCTCModel
    from spx.spec import load_spec

    spec = load_spec(recipe, extra)
    rd = render(recipe, steps, workdir / f"data-{time.monotonic_ns()}", extra)  # for the same train.json only
    train_json = rd / "native" / "train.json"
    texts = [json.loads(l)["text"] for l in train_json.read_text().splitlines()]
    labels = sorted({c for t in texts for c in t})
    enc, feat, tr = spec.model.encoder, spec.features, spec.training
    ds = {"manifest_filepath": str(train_json), "sample_rate": feat.sample_rate, "labels": labels,
          "batch_size": tr.batch_size, "shuffle": True, "num_workers": 0, "parser": "base"}
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
    torch.set_num_threads(2)
    pl.seed_everything(tr.seed)
    timer = step_timer()
    trainer = pl.Trainer(devices=1, accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, gradient_clip_val=tr.grad_clip or 0.0, callbacks=[timer],
                         limit_val_batches=0, num_sanity_val_steps=0)
    model = EncDecCTCModel(cfg=cfg, trainer=trainer)
    trainer.fit(model)
    return timer.times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "conformer_ctc.yaml")
    ap.add_argument("--steps", type=int, default=20, help="training steps per run")
    ap.add_argument("--skip", type=int, default=3, help="first steps of each run left out of the mean")
    ap.add_argument("--rounds", type=int, default=2, help="alternating spx/native rounds")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. model.encoder.layers=4")
    args = ap.parse_args()
    if args.steps <= args.skip:
        ap.error("--steps must be larger than --skip")

    spx_times: list[float] = []
    native_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="spx-step-time-nemo-") as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            # alternate who goes first: the first run in a process pays one-time warm-up beyond --skip
            order = ("spx", "native") if r % 2 == 0 else ("native", "spx")
            for side in order:
                if side == "spx":
                    spx_times += run_spx(args.recipe, args.steps, work, args.overrides)[args.skip:]
                else:
                    native_times += run_native(args.recipe, args.steps, work, args.overrides)[args.skip:]
            print(f"round {r + 1}/{args.rounds}: spx {statistics.mean(spx_times) * 1000:.1f} ms, "
                  f"native {statistics.mean(native_times) * 1000:.1f} ms", file=sys.stderr, flush=True)
    spx_mean, native_mean = statistics.mean(spx_times), statistics.mean(native_times)
    print(f"recipe: {args.recipe} ({' '.join(args.overrides) or 'no overrides'})")
    print(f"steps counted: spx {len(spx_times)}, native {len(native_times)} (first {args.skip} of each run skipped)")
    print(f"spx-rendered NeMo run : {spx_mean * 1000:8.1f} ms/step (median {statistics.median(spx_times) * 1000:.1f})")
    print(f"hand-written NeMo run : {native_mean * 1000:8.1f} ms/step (median {statistics.median(native_times) * 1000:.1f})")
    print(f"ratio spx / native    : {spx_mean / native_mean:8.3f}  (target <= 1.02)")


if __name__ == "__main__":
    main()
