"""Child step `train` of the SpeechBrain kws_classifier: a Brain over DynamicItemDatasets training ECAPA-TDNN +
Classifier with additive-angular-margin softmax (SpeechBrain's VoxLingua107 / speaker-id recipe shape).

Resume is SpeechBrain's own: the Checkpointer (modules, optimizer, LR schedule, epoch counter) is recovered in
Brain.on_fit_start. Fine-tuning: init_from's export loads into the modules before training (the class layer only
when the class list is the same); freeze sets requires_grad False and keeps frozen modules in eval mode.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

import speechbrain as sb
from spx.adapters.common import child
from spx.adapters.common.classify import lr_lambda
from spx.adapters.speechbrain.steps.cls_model import MODULES, build_modules, forward_cosines, load_export, read_config
from spx.manifests import Utterance

COMPLETE = "spx_complete"  # marks a checkpoint whose files are all written (see quarantine_incomplete)


def log(msg: str) -> None:
    print(f"spx: {msg}", flush=True)


class ClassifierBrain(sb.Brain):
    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        augment = self.spec_augment if stage == sb.Stage.TRAIN else None
        return forward_cosines(self.modules, wavs, lens, augment)

    def compute_objectives(self, cosines, batch, stage):
        targets = batch.label_id.data[:, 0].to(self.device)
        loss = self.loss_fn(cosines.unsqueeze(1), targets.unsqueeze(1))
        if stage != sb.Stage.TRAIN:
            self.correct += int((cosines.argmax(-1) == targets).sum())
            self.seen += len(targets)
        return loss

    def init_optimizers(self):
        params = [p for p in self.modules.parameters() if p.requires_grad]  # frozen ones never reach the optimizer
        self.optimizer = self.opt_class(params)
        self.optimizers_dict = {"opt_class": self.optimizer}
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
            self.checkpointer.add_recoverable("scheduler", self.scheduler)

    def on_fit_start(self):
        super().on_fit_start()  # optimizer, then recover_if_possible (resume)
        done = self.epoch_counter.current
        self.resumed_from_epoch = done
        if done:
            log(f"resumed from checkpoint {self.checkpointer.find_checkpoint().path} at epoch {done} "
                f"(optimizer step {self.optimizer_step})")
        rows = child.keep_curve_through(self.run_dir, done)
        self.prior_seconds = float(rows[-1]["time"]) if rows else 0.0

    def on_fit_batch_start(self, batch, should_step):
        for mod in self.frozen:
            mod.eval()  # frozen: no dropout, no batch-norm statistics updates

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step:
            self.scheduler.step()
            self.updates_here += 1

    def on_stage_start(self, stage, epoch=None):
        self.correct, self.seen = 0, 0

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = float(stage_loss)
            return
        valid_loss, valid_acc = float(stage_loss), self.correct / max(self.seen, 1)
        lr = self.optimizer.param_groups[0]["lr"]
        self.checkpointer.save_and_keep_only(meta={"valid_loss": valid_loss, "valid_acc": valid_acc, "epoch": epoch},
                                             min_keys=["valid_loss"], num_to_keep=self.keep)
        (self.checkpointer.find_checkpoint().path / COMPLETE).touch()
        elapsed = time.time() - self.t0 + self.prior_seconds
        child.append_curve(self.run_dir, {"epoch": epoch, "step": self.optimizer_step, "train_loss": self.train_loss,
                                          "valid_loss": valid_loss, "valid_acc": valid_acc, "lr": lr,
                                          "time": round(elapsed, 2)})
        done_here = max(epoch - self.resumed_from_epoch, 1)
        eta = (time.time() - self.t0) / done_here * max(self.planned_epochs - epoch, 0)
        child.progress(epoch=epoch, epochs=self.planned_epochs, step=self.optimizer_step, train_loss=self.train_loss,
                       valid_loss=valid_loss, valid_acc=valid_acc, eta_s=round(eta, 1))


def datasets(cfg, classes: list[str]):
    from speechbrain.dataio.dataset import DynamicItemDataset

    index = {c: i for i, c in enumerate(classes)}
    rate = cfg["features"]["sample_rate"]

    @sb.utils.data_pipeline.takes("id", "wav", "offset", "duration")
    @sb.utils.data_pipeline.provides("sig")
    def audio(uid, wav, offset, duration):
        utt = Utterance(id=uid, audio=wav, duration=float(duration), offset=float(offset or 0.0))
        return torch.from_numpy(child.load_audio(utt, rate))

    @sb.utils.data_pipeline.takes("label")
    @sb.utils.data_pipeline.provides("label_id")
    def label(value):
        return torch.LongTensor([index[value]])  # 1-d: SpeechBrain's collate pads tensors with a length

    out = [DynamicItemDataset.from_csv(csv_path=cfg[k]) for k in ("train_csv", "valid_csv")]
    sb.dataio.dataset.add_dynamic_item(out, audio)
    sb.dataio.dataset.add_dynamic_item(out, label)
    sb.dataio.dataset.set_output_keys(out, ["id", "sig", "label_id"])
    return out[0], out[1].filtered_sorted(sort_key="duration")


def quarantine_incomplete(ckpt_dir: Path) -> None:
    """A process killed while the Checkpointer wrote leaves a checkpoint recover_if_possible would pick and fail on;
    unmarked ones are moved aside (not deleted) before resuming."""
    for d in sorted(ckpt_dir.glob("CKPT+*")):
        if d.is_dir() and not (d / COMPLETE).exists():
            dest = ckpt_dir / "incomplete" / d.name
            dest.parent.mkdir(exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(d, dest)
            log(f"moved incomplete checkpoint {d.name} (killed while saving) to {dest}")


def export_best(brain: ClassifierBrain, cfg, rd) -> tuple[Path, Path, Path]:
    """checkpoints/export: the best checkpoint's weights + config.yaml + classes.txt (what init_from and the
    decoder load)."""
    best = brain.checkpointer.find_checkpoint(min_key="valid_loss")
    last = max(brain.checkpointer.list_checkpoints(), key=lambda c: (c.meta or {}).get("epoch", 0))
    export = Path(cfg["export_folder"])
    tmp = export.with_name(".export.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in MODULES:
        shutil.copy2(best.path / f"{name}.ckpt", tmp / f"{name}.ckpt")
    shutil.copy2(rd / "native" / "config.yaml", tmp / "config.yaml")
    shutil.copy2(rd / "native" / "classes.txt", tmp / "classes.txt")
    (tmp / "export_info.json").write_text(json.dumps({"source_checkpoint": str(best.path), "meta": best.meta,
                                                      "speechbrain": sb.__version__}, indent=1))
    shutil.rmtree(export, ignore_errors=True)
    os.replace(tmp, export)
    return export, best.path, last.path


def main(run_dir: str) -> None:
    t_start = time.time()
    spec, rd = child.load_run(run_dir)
    threads = child.set_threads(spec)
    device = child.pick_device(spec)
    child.precision_dtype(spec, device)
    sb.utils.seed.seed_everything(spec.training.seed, verbose=False)
    cfg = read_config(rd / "native" / "config.yaml")
    classes = cfg["classes"]
    ckpt_dir = Path(cfg["save_folder"])
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    quarantine_incomplete(ckpt_dir)
    mods = build_modules(cfg)

    init_info = None
    if cfg["init_from"]:
        export = Path(cfg["init_from"])
        theirs = (export / "classes.txt").read_text(encoding="utf-8").split()
        loaded = load_export(mods, export, load_head=theirs == classes)
        init_info = {"source": str(export), "loaded": loaded, "new_class_layer": theirs != classes}
        log(f"initialized {', '.join(loaded)} from {export}" + ("" if theirs == classes else
                                                                  " (classes differ: new class layer)"))
    frozen_names = []
    for item in cfg["freeze"]:
        frozen_names += ["embedding_model"] if item == "encoder" else ["embedding_model.blocks.0"]
    frozen = [mods["embedding_model"] if n == "embedding_model" else mods["embedding_model"].blocks[0]
              for n in frozen_names]
    for mod in frozen:
        for p in mod.parameters():
            p.requires_grad_(False)
    n_frozen = sum(p.numel() for mod in frozen for p in mod.parameters())
    if frozen:
        log(f"frozen: {', '.join(frozen_names)} ({n_frozen} parameters)")

    train, valid = datasets(cfg, classes)
    t = spec.training
    epoch_counter = sb.utils.epoch_loop.EpochCounter(limit=t.epochs or 1)
    checkpointer = sb.utils.checkpoints.Checkpointer(
        ckpt_dir, recoverables={"embedding_model": mods["embedding_model"], "classifier": mods["classifier"],
                                "counter": epoch_counter})
    o = t.optimizer
    opt_kwargs = {"lr": o.lr, "weight_decay": o.weight_decay}
    opt_class = {"adam": lambda p: torch.optim.Adam(p, betas=o.betas, **opt_kwargs),
                 "adamw": lambda p: torch.optim.AdamW(p, betas=o.betas, **opt_kwargs),
                 "sgd": lambda p: torch.optim.SGD(p, momentum=0.9, **opt_kwargs)}[o.name]
    run_opts = {"device": device, "max_grad_norm": t.grad_clip or 0.0, "grad_accumulation_factor": t.grad_accumulation,
                "noprogressbar": True}
    brain = ClassifierBrain(modules=mods, opt_class=opt_class, run_opts=run_opts, checkpointer=checkpointer)
    loader_kw = {"batch_size": t.batch_size or 16, "num_workers": t.num_workers}
    train_loader = brain.make_dataloader(train, stage=sb.Stage.TRAIN, shuffle=True, **loader_kw)
    valid_loader = brain.make_dataloader(valid, stage=sb.Stage.VALID, ckpt_prefix=None, **loader_kw)
    updates_per_epoch = math.ceil(len(train_loader) / t.grad_accumulation)
    if t.max_steps:
        epoch_counter.limit = math.ceil(t.max_steps / updates_per_epoch)
    brain.planned_epochs = epoch_counter.limit
    brain.lr_factor = lr_lambda(spec, updates_per_epoch * epoch_counter.limit)
    from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

    brain.loss_fn = LogSoftmaxWrapper(AdditiveAngularMargin(**cfg["loss"]))
    sa = cfg["spec_augment"]
    brain.spec_augment = None
    if sa and (sa["freq_masks"] or sa["time_masks"]):
        from speechbrain.augment.freq_domain import SpectrogramDrop

        drops = []
        if sa["freq_masks"] and sa["freq_width"]:
            drops.append(SpectrogramDrop(drop_length_low=0, drop_length_high=sa["freq_width"], drop_count_low=1,
                                         drop_count_high=sa["freq_masks"], dim=2))
        if sa["time_masks"] and sa["time_width"]:
            drops.append(SpectrogramDrop(drop_length_low=0, drop_length_high=sa["time_width"], drop_count_low=1,
                                         drop_count_high=sa["time_masks"], dim=1))
        brain.spec_augment = lambda feats: _chain(drops, feats)
    brain.epoch_counter, brain.keep, brain.run_dir, brain.frozen = epoch_counter, cfg["keep_checkpoints"], rd, frozen
    brain.t0, brain.updates_here, brain.prior_seconds = time.time(), 0, 0.0
    log(f"device {device}, {threads} threads; {len(train)} train clips, {len(classes)} classes, "
        f"{updates_per_epoch} updates/epoch, {epoch_counter.limit} epochs")

    brain.fit(epoch_counter, train_loader, valid_loader)

    export, best, last = export_best(brain, cfg, rd)
    model_params = sum(child.count_params(mods[n]) for n in MODULES)
    child.write_train_summary(
        rd, wall_seconds=round(time.time() - t_start, 2), epochs=epoch_counter.current, steps=brain.optimizer_step,
        params=model_params,
        trainable_params=int(sum(p.numel() for n in MODULES for p in mods[n].parameters() if p.requires_grad)),
        frozen_parameters=n_frozen, frozen_modules=frozen_names,
        peak_memory_mb=round(child.peak_memory_mb(device), 1), last_checkpoint=str(last), best_checkpoint=str(best),
        exported_model=str(export), effective_batch=(t.batch_size or 16) * t.grad_accumulation, world_size=1,
        updates_this_process=brain.updates_here, resumed_from_epoch=brain.resumed_from_epoch or None,
        device=device, threads=threads, init_from=init_info and init_info["source"], init_details=init_info,
        speechbrain=sb.__version__)
    (rd / "native" / "model_summary.json").write_text(json.dumps(
        {"class": "speechbrain ECAPA_TDNN + Classifier", "params": model_params, "classes": len(classes)}, indent=1))


def _chain(drops, feats):
    for drop in drops:
        feats = drop(feats)
    return feats


if __name__ == "__main__":
    child.main_guard(main)
