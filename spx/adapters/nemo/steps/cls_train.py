"""Child step `train` of the NeMo kws_classifier: NeMo's own training loop (Lightning Trainer + exp_manager) on
native/config.yaml with EncDecClassificationModel (MatchboxNet encoder).

Resume is NeMo's: exp_manager resume_if_exists picks up checkpoints/*last.ckpt. Fine-tuning: init_from's .nemo
weights load into the model (the decoder only when the class list is the same: NeMo's change_labels case);
freeze sets requires_grad False and keeps the frozen modules in eval mode.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from spx.adapters.common import child


def main(run_dir: str) -> None:
    t_start = time.time()
    spec, rd = child.load_run(run_dir)
    threads = child.set_threads(spec)
    device = child.pick_device(spec)
    child.precision_dtype(spec, device)

    import lightning.pytorch as pl
    import torch
    from omegaconf import OmegaConf

    from nemo.collections.asr.models import EncDecClassificationModel
    from nemo.utils.exp_manager import exp_manager

    cfg = OmegaConf.load(rd / "native" / "config.yaml")
    spx_cfg = cfg.pop("spx")
    pl.seed_everything(spx_cfg.seed, workers=True)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if trainer_kwargs.get("accelerator") == "auto":
        trainer_kwargs["accelerator"] = "gpu" if device == "cuda" else "cpu"
    frozen: list[tuple[str, torch.nn.Module]] = []

    class SpxProgress(pl.Callback):
        """curve.jsonl row + progress line per epoch; keeps frozen modules in eval mode."""

        def __init__(self) -> None:
            self.loss_sum, self.loss_count, self.first_epoch, self.t0 = 0.0, 0, 0, time.time()

        def on_train_start(self, trainer, pl_module) -> None:
            self.first_epoch, self.t0 = trainer.current_epoch, time.time()
            child.keep_curve_through(rd, trainer.current_epoch)
            if trainer.current_epoch > 0:
                print(f"spx: resumed from checkpoint at epoch {trainer.current_epoch} (step {trainer.global_step})",
                      flush=True)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.loss_sum, self.loss_count = 0.0, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            for _, mod in frozen:
                mod.eval()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None:
                self.loss_sum += float(loss.detach())
                self.loss_count += 1

        def on_validation_end(self, trainer, pl_module) -> None:
            # before ModelCheckpoint saves (Lightning calls checkpoint callbacks last): no checkpoint without its row
            if trainer.sanity_checking:
                return
            m = trainer.callback_metrics
            epoch = trainer.current_epoch + 1
            acc = m.get("val_acc_micro_top_1")
            row = {"epoch": epoch, "step": trainer.global_step,
                   "train_loss": self.loss_sum / self.loss_count if self.loss_count else None,
                   "valid_loss": float(m["val_loss"]) if "val_loss" in m else None,
                   "valid_acc": float(acc) if acc is not None else None,
                   "lr": trainer.optimizers[0].param_groups[0]["lr"], "time": round(time.time() - t_start, 2)}
            child.append_curve(rd, row)
            done = epoch - self.first_epoch
            total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
            eta = (time.time() - self.t0) / done * (total - epoch) if total and done else None
            child.progress(epoch=epoch, epochs=total, step=trainer.global_step, train_loss=row["train_loss"],
                           valid_loss=row["valid_loss"], valid_acc=row["valid_acc"],
                           eta_s=round(eta, 1) if eta is not None else None)

    callback = SpxProgress()
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[callback])
    exp_manager(trainer, cfg.get("exp_manager"))
    model = EncDecClassificationModel(cfg=cfg.model, trainer=trainer)

    init_info = None
    if spx_cfg.init_from:
        src = EncDecClassificationModel.restore_from(spx_cfg.init_from, map_location="cpu")
        same = list(src.cfg.labels) == list(cfg.model.labels)
        state = {k: v for k, v in src.state_dict().items() if same or not k.startswith("decoder.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("decoder.")]:
            raise SystemExit(f"init_from {spx_cfg.init_from}: a different architecture than the spec "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]}); set model.* to its sizes")
        init_info = {"source": spx_cfg.init_from, "tensors_loaded": len(state), "new_class_layer": not same}
        print(f"spx: initialized {len(state)} tensors from {spx_cfg.init_from}"
              + ("" if same else " (classes differ: new class layer)"), flush=True)
        del src
    for item in spx_cfg.freeze:
        # encoder = every block before the decoder; feature_extractor = the prologue (first) block
        frozen.append(("encoder", model.encoder) if item == "encoder" else
                      ("encoder.encoder.0", model.encoder.encoder[0]))
    for _, mod in frozen:
        for p in mod.parameters():
            p.requires_grad_(False)
    n_frozen = sum(p.numel() for _, mod in frozen for p in mod.parameters())
    if frozen:
        print(f"spx: frozen {', '.join(n for n, _ in frozen)} ({n_frozen} parameters)", flush=True)

    trainer.fit(model)

    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") or ""
    last = getattr(ckpt, "last_model_path", "") or ""
    if best and Path(best).is_file():
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    exported = Path(spx_cfg.exported_model)
    tmp = exported.with_name(".model.nemo.tmp")
    model.save_to(str(tmp))
    os.replace(tmp, exported)
    tr = spec.training
    child.write_train_summary(
        rd, wall_seconds=round(time.time() - t_start, 2), epochs=trainer.current_epoch, steps=trainer.global_step,
        params=child.count_params(model),
        trainable_params=int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        frozen_params=n_frozen, frozen_modules=[n for n, _ in frozen],
        peak_memory_mb=round(child.peak_memory_mb(device), 1), last_checkpoint=last or None,
        best_checkpoint=best or None, exported_model=str(exported),
        effective_batch=(tr.batch_size or 16) * tr.grad_accumulation, world_size=1, device=device, threads=threads,
        precision=str(trainer_kwargs["precision"]), init_from=init_info and init_info["source"], init_details=init_info,
        resumed=callback.first_epoch > 0,
        started_at_epoch=callback.first_epoch + 1, model_class="EncDecClassificationModel")
    (rd / "native" / "model_summary.json").write_text(json.dumps(
        {"class": "EncDecClassificationModel", "params": child.count_params(model),
         "classes": len(cfg.model.labels)}, indent=1))


if __name__ == "__main__":
    child.main_guard(main)
