"""Child step `tts_train`: NeMo's FastPitchModel (internal aligner) or HifiGanModel (vocoder job) on a Lightning
Trainer with exp_manager.

    python -m spx.adapters.nemo.steps.tts_train RUN_DIR

Reads native/tts_config.yaml (FastPitch: pitch statistics filled in by tts_prepare; the model class is its
spx.model_class). exp_manager keeps the top-k checkpoints by val_loss and resumes from checkpoints/*-last.ckpt; the
best checkpoint's weights are exported to checkpoints/model.nemo. Writes curve.jsonl (train_loss = mean of the batch
losses: FastPitch's loss, HiFi-GAN's generator loss g_loss with its mel L1 beside it as train_mel_l1; valid_loss =
NeMo's val_loss) and train_summary.json.
"""
from __future__ import annotations

import json
import time

from spx.adapters.common import child
from spx.adapters.nemo.steps.lightning_helpers import export_best, fail, trainer_kwargs


def _model_class(name: str):
    from nemo.collections.tts.models import FastPitchModel, HifiGanModel

    return {"FastPitchModel": FastPitchModel, "HifiGanModel": HifiGanModel}[name]


def _init_from(model, source: str) -> dict:
    """Load a .nemo's weights into the same model class; the architecture (spec model sizes, n_mels) must match."""
    try:
        src = type(model).restore_from(source, map_location="cpu")
    except Exception as exc:  # a corrupt file, another model class: say which and stop
        fail(f"init_from {source!r} could not be loaded as a {type(model).__name__}: {type(exc).__name__}: {exc}")
    own, theirs = model.state_dict(), src.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in theirs.items()
                  if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in theirs]
    if mismatched or missing:
        fail(f"init_from {source!r} has a different architecture than the spec: "
              + "; ".join(mismatched[:4] + [f"missing {k}" for k in missing[:3]])
              + " (set the model sizes under model: and tts.n_mels to the source model's)")
    model.load_state_dict(theirs, strict=True)
    del src
    return {"source": source, "tensors_loaded": len(theirs)}


def main(run_dir: str) -> None:
    t_start = time.time()
    spec, rd = child.load_run(run_dir)
    threads = child.set_threads(spec)
    device = child.pick_device(spec)

    import lightning.pytorch as pl
    from omegaconf import OmegaConf, open_dict

    from nemo.utils.exp_manager import exp_manager

    cfg = OmegaConf.load(rd / "native" / "tts_config.yaml")
    spx_cfg = cfg.pop("spx")
    model_class = spx_cfg.get("model_class", "FastPitchModel")
    is_fastpitch = model_class == "FastPitchModel"
    # Lightning's global_step counts optimizer steps: HiFi-GAN steps two (discriminator, generator) per batch
    optimizer_steps_per_batch = 1 if is_fastpitch else 2
    if is_fastpitch and (cfg.model.pitch_mean is None or cfg.model.pitch_std is None):
        fail("model.pitch_mean/pitch_std are not set in native/tts_config.yaml: run the tts_prepare step first")
    pl.seed_everything(spx_cfg.seed, workers=True)
    trainer_args = trainer_kwargs(cfg, device)

    class SpxProgress(pl.Callback):
        """curve.jsonl row + progress line per epoch (before ModelCheckpoint saves, as in the ASR train step)."""

        def __init__(self) -> None:
            self.losses: list[float] = []
            self.first_epoch = 0
            self.t0 = time.time()

        def on_train_start(self, trainer, pl_module) -> None:
            self.first_epoch = trainer.current_epoch
            self.t0 = time.time()
            child.keep_curve_through(rd, trainer.current_epoch)
            if trainer.current_epoch > 0:
                print(f"spx: resumed from checkpoint at epoch {trainer.current_epoch} (step {trainer.global_step})",
                      flush=True)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.losses, self.mel_l1 = [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is None:  # HiFi-GAN optimizes by hand and returns nothing: read what it logged for this step
                loss = trainer.callback_metrics.get("g_loss")
                if "g_l1_loss" in trainer.callback_metrics:
                    self.mel_l1.append(float(trainer.callback_metrics["g_l1_loss"]))
            if loss is not None:
                self.losses.append(float(loss.detach()))

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            m = trainer.callback_metrics
            epoch = trainer.current_epoch + 1
            row = {"epoch": epoch, "step": trainer.global_step // optimizer_steps_per_batch,
                   "train_loss": sum(self.losses) / max(1, len(self.losses)),
                   "valid_loss": float(m["val_loss"]) if "val_loss" in m else None,
                   "valid_mel_loss": float(m["val_mel_loss"]) if "val_mel_loss" in m else None,
                   **({"train_mel_l1": sum(self.mel_l1) / len(self.mel_l1)} if self.mel_l1 else {}),
                   "lr": trainer.optimizers[0].param_groups[0]["lr"], "time": round(time.time() - t_start, 2)}
            child.append_curve(rd, row)
            done, total = epoch - self.first_epoch, trainer.max_epochs if trainer.max_epochs > 0 else None
            eta = (time.time() - self.t0) / done * (total - epoch) if total and done else None
            child.progress(phase="train", epoch=epoch, of=total, step=row["step"],
                           train_loss=round(row["train_loss"], 4), valid_loss=row["valid_loss"],
                           eta_s=round(eta, 1) if eta is not None else None)

    callback = SpxProgress()
    trainer = pl.Trainer(**trainer_args, callbacks=[callback])
    exp_manager(trainer, cfg.get("exp_manager"))
    model = _model_class(model_class)(cfg=cfg.model, trainer=trainer)
    init_info = _init_from(model, str(spx_cfg.init_from)) if spx_cfg.init_from else None
    with open_dict(cfg):
        cfg.model = model.cfg
    OmegaConf.save(cfg, rd / "native" / "tts_config.resolved.yaml")

    trainer.fit(model)

    export = export_best(trainer, model, rd.path, spx_cfg.exported_model)
    info = json.loads((rd / "native" / "tts_info.json").read_text())
    child.write_train_summary(
        rd, wall_seconds=round(time.time() - t_start, 2), epochs=trainer.current_epoch,
        steps=trainer.global_step // optimizer_steps_per_batch,
        params=child.count_params(model), peak_memory_mb=round(child.peak_memory_mb(device), 1), **export,
        effective_batch=spec.training.batch_size * spec.training.grad_accumulation,
        world_size=1, device=device, threads=threads, vocoder=info["vocoder_name"],
        init_from=init_info and init_info["source"], init_details=init_info,
        resumed=callback.first_epoch > 0, model_class=model_class,
        **({"pitch_mean": float(cfg.model.pitch_mean), "pitch_std": float(cfg.model.pitch_std)} if is_fastpitch else {}),
    )


if __name__ == "__main__":
    child.main_guard(main)
