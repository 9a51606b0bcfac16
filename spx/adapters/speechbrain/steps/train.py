"""Training step (child process): the generated hyperpyyaml + a SpeechBrain Brain over DynamicItemDatasets.

`python -m spx.adapters.speechbrain.steps.train RUN_DIR`, or under torchrun for data parallel (SpeechBrain DDP,
gloo on CPU). Resume is SpeechBrain's own: Checkpointer.recover_if_possible in Brain.on_fit_start.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

import speechbrain as sb
from spx.adapters.speechbrain.steps.loggers import record_epoch
from spx.adapters.common import child
from spx.adapters.speechbrain.conformer_ctc import EXPORT_INFO
from spx.adapters.speechbrain.steps.model import (
    MODULE_FILES, Tokenizer, apply_freeze, ctc_decoder, encode_log_probs, load_exported, load_hparams,
    make_tokenizer,
)
from spx.manifests import Utterance

RANK = int(os.environ.get("RANK", "0"))
WORLD = int(os.environ.get("WORLD_SIZE", "1"))


def log(msg: str) -> None:
    print(f"spx[rank {RANK}/{WORLD}]: {msg}", flush=True)


class CTCBrain(sb.Brain):
    """Conformer-CTC training: the Brain hooks the SpeechBrain recipes use, plus spx's normalized records."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        train = stage == sb.Stage.TRAIN
        if train and self.hparams.wav_augment is not None:
            wavs, wav_lens = self.hparams.wav_augment(wavs, wav_lens)
        epoch = self.hparams.epoch_counter.current
        p_ctc = encode_log_probs(self.modules, vars(self.hparams), wavs, wav_lens, epoch=epoch, train_augment=train)
        return p_ctc, wav_lens

    def compute_objectives(self, predictions, batch, stage):
        p_ctc, wav_lens = predictions
        tokens, tokens_lens = batch.tokens
        loss = self.hparams.ctc_cost(p_ctc, tokens, wav_lens, tokens_lens)
        if stage == sb.Stage.VALID:
            hyps = self.decode(p_ctc.float(), wav_lens)
            self.wer_metric.append(batch.id, [h.split() for h in hyps], [w.split() for w in batch.wrd])
        return loss

    def init_optimizers(self):
        # only trainable parameters: frozen ones never reach the optimizer (nor its weight decay)
        params = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = self.opt_class(params)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def on_fit_start(self):
        super().on_fit_start()  # DDP wrap, optimizer, recover_if_possible (resume)
        done = self.hparams.epoch_counter.current
        self.resumed_from_epoch = done
        if done:
            log(f"resumed from checkpoint {self.checkpointer.find_checkpoint().path} at epoch {done} "
                f"(optimizer step {self.optimizer_step})")
            if RANK == 0:
                rows = child.keep_curve_through(self.run_dir, done)
                self.prior_seconds = float(rows[-1]["time"]) if rows else 0.0
        if hasattr(self.scheduler, "set_initial"):
            self.scheduler.set_initial(self.optimizer)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step:
            self.scheduler(self.optimizer)
            self.rank_updates += 1
        self.rank_batches += 1

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.epoch_t0 = time.time()
        if stage != sb.Stage.TRAIN:
            self.wer_metric = sb.utils.metric_stats.ErrorRateStats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = float(stage_loss)
            log(f"epoch {epoch}: {self.rank_batches} batches so far on this rank, train_loss {self.train_loss:.4f}")
            return
        valid_loss = float(stage_loss)
        valid_wer = self.wer_metric.summarize("error_rate") / 100.0
        lr = self.optimizer.param_groups[0]["lr"]
        monitor = self.hparams.early_stopping_monitor
        if monitor is not None:
            self.hparams.epoch_counter.update_metric(valid_loss if monitor == "valid_loss" else valid_wer)
        key = monitor or "valid_loss"
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, "lr": lr, "optimizer_step": self.optimizer_step},
            train_stats={"loss": self.train_loss}, valid_stats={"loss": valid_loss, "WER": valid_wer * 100})
        # keep the last N checkpoints plus the best one by the monitored metric
        self.checkpointer.save_and_keep_only(meta={"valid_loss": valid_loss, "valid_wer": valid_wer, "epoch": epoch},
                                             min_keys=[key], num_to_keep=self.hparams.keep_checkpoints)
        if RANK == 0:
            (self.checkpointer.find_checkpoint().path / COMPLETE).touch()
        elapsed = time.time() - self.t0
        epochs_this_run = epoch - self.resumed_from_epoch
        eta = elapsed / max(1, epochs_this_run) * max(0, self.planned_epochs - epoch)
        record_epoch(self.run_dir, {"epoch": epoch, "step": self.optimizer_step, "train_loss": self.train_loss,
                                          "valid_loss": valid_loss, "valid_wer": valid_wer, "lr": lr,
                                          "time": round(elapsed + self.prior_seconds, 2)})
        child.progress(epoch=epoch, epochs=self.planned_epochs, step=self.optimizer_step, train_loss=self.train_loss,
                       valid_loss=valid_loss, valid_wer=valid_wer, eta_s=round(eta, 1))


def audio_pipeline(sample_rate: int):
    @sb.utils.data_pipeline.takes("id", "wav", "offset", "duration")
    @sb.utils.data_pipeline.provides("sig")
    def read(uid, wav, offset, duration):
        utt = Utterance(id=uid, audio=wav, duration=float(duration), offset=float(offset or 0.0))
        return torch.from_numpy(child.load_audio(utt, sample_rate))

    return read


def text_pipeline(tokenizer: Tokenizer):
    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens")
    def encode(wrd):
        yield wrd
        yield torch.LongTensor(tokenizer.encode(wrd))

    return encode


def datasets(hparams, tokenizer: Tokenizer):
    from speechbrain.dataio.dataset import DynamicItemDataset

    out = []
    for key in ("train_csv", "valid_csv"):
        ds = DynamicItemDataset.from_csv(csv_path=hparams[key])
        out.append(ds)
    sb.dataio.dataset.add_dynamic_item(out, audio_pipeline(hparams["sample_rate"]))
    sb.dataio.dataset.add_dynamic_item(out, text_pipeline(tokenizer))
    sb.dataio.dataset.set_output_keys(out, ["id", "sig", "wrd", "tokens"])
    train, valid = out
    # validation sorted by duration: less padding, same numbers every epoch
    valid = valid.filtered_sorted(sort_key="duration")
    return train, valid


def loader_kwargs(hparams, train):
    kw = {"num_workers": hparams["num_workers"]}
    if hparams["dynamic_batching"]:
        from speechbrain.dataio.sampler import DynamicBatchSampler

        kw["batch_sampler"] = DynamicBatchSampler(
            train, max_batch_length=hparams["max_batch_length_seconds"], num_buckets=hparams["num_buckets"],
            length_func=lambda x: x["duration"], shuffle=True, batch_ordering="random",
            max_batch_ex=None)
    else:
        kw["batch_size"] = hparams["batch_size"]
        kw["shuffle"] = True
    return kw


COMPLETE = "spx_complete"


def quarantine_incomplete(ckpt_dir: Path) -> None:
    """SpeechBrain's Checkpointer writes CKPT.yaml before the module files, so a process killed while saving
    leaves a checkpoint that recover_if_possible would pick and fail on. spx marks every checkpoint once it is
    fully written; unmarked ones are moved aside (not deleted) before resuming."""
    for d in sorted(ckpt_dir.glob("CKPT+*")):
        if d.is_dir() and not (d / COMPLETE).exists():
            dest = ckpt_dir / "incomplete" / d.name
            dest.parent.mkdir(exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(d, dest)
            log(f"moved incomplete checkpoint {d.name} (killed while saving) to {dest}")


def plan_updates(brain, hparams, train, valid):
    """The train/valid loaders and the number of optimizer updates the run makes (optimizer_step_limit, else
    epochs x updates per epoch), with brain.planned_epochs and the epoch counter set to match."""
    train_loader = brain.make_dataloader(train, stage=sb.Stage.TRAIN, **loader_kwargs(hparams, train))
    valid_loader = brain.make_dataloader(valid, stage=sb.Stage.VALID, ckpt_prefix=None,
                                         batch_size=hparams["valid_batch_size"], num_workers=hparams["num_workers"])
    updates_per_epoch = math.ceil(len(train_loader) / hparams["grad_accumulation_factor"])
    max_steps = hparams["optimizer_step_limit"]
    if max_steps:
        brain.planned_epochs = math.ceil(max_steps / updates_per_epoch)
        hparams["epoch_counter"].limit = brain.planned_epochs
        total = max_steps
    else:
        brain.planned_epochs = hparams["number_of_epochs"]
        total = updates_per_epoch * brain.planned_epochs
    log(f"{len(train)} train utterances, {len(train_loader)} batches/epoch on this rank, {updates_per_epoch} "
        f"updates/epoch, {total} updates planned")
    return train_loader, valid_loader, total


def gather_ranks(brain) -> list[dict]:
    """Every rank says how much it did; rank 0 records it (proof that all ranks took part)."""
    ranks = child.gather_rank_counts(brain.rank_batches, brain.rank_updates)
    log(f"done: {brain.rank_batches} batches, {brain.rank_updates} updates on this rank")
    return ranks


def summary_fields(brain, hparams, t_start: float, device: str, threads: int, run_opts: dict, ranks: list,
                   exported: tuple, monitor: str) -> dict:
    """The train_summary.json fields every SpeechBrain train step writes the same way; `exported` is
    export_best's (export, best checkpoint, last checkpoint)."""
    export, best, last = exported
    bs, accum = hparams["batch_size"], hparams["grad_accumulation_factor"]
    return dict(
        wall_seconds=round(time.time() - t_start, 2), epochs=hparams["epoch_counter"].current,
        steps=brain.optimizer_step, peak_memory_mb=round(child.peak_memory_mb(device), 1), last_checkpoint=str(last),
        best_checkpoint=str(best), best_metric=monitor, exported_model=str(export),
        effective_batch=(bs * WORLD * accum) if bs and not hparams["dynamic_batching"] else None,
        world_size=WORLD, ranks=ranks, distributed_backend=run_opts["distributed_backend"] if WORLD > 1 else None,
        resumed_from_epoch=brain.resumed_from_epoch,
        early_stopped=bool(getattr(hparams["epoch_counter"], "should_stop", False)), device=device,
        precision=hparams["precision"], threads=threads)


def finish_distributed() -> None:
    """Every rank waits for rank 0's records, then leaves the DDP group."""
    if WORLD > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run_step(main, run_dir: str, clear_errors: tuple[str, ...] = ("fp16", "accelerator")) -> None:
    """main(run_dir); a RuntimeError naming one of `clear_errors` (environment or spec problems the child detects)
    ends as one clear last line and exit 2, any other propagates."""
    try:
        main(run_dir)
    except RuntimeError as exc:
        if any(marker in str(exc) for marker in clear_errors):
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        raise


def make_scheduler(hparams, total_steps: int):
    """The per-update LR schedule from hparams' `lr_annealing` partial, given the planned number of updates."""
    partial = hparams["lr_annealing"]
    name = getattr(partial, "func", partial).__name__
    kwargs = {"WarmupAnnealing": {"total_steps": total_steps},
              "LinearWarmupScheduler": {"num_training_steps": total_steps}}.get(name, {})
    return partial(**kwargs)


def export_best(brain: CTCBrain, hparams, tokenizer: Tokenizer, rd, monitor: str) -> tuple[Path, Path, Path]:
    """checkpoints/export: the best checkpoint's module files + hparams + tokenizer; what init_from takes."""
    ckpts = brain.checkpointer.list_checkpoints()
    best = brain.checkpointer.find_checkpoint(min_key=monitor)
    last = max(ckpts, key=lambda c: c.meta.get("epoch", 0) if c.meta else 0)
    export = rd / "checkpoints" / "export"
    tmp = rd / "checkpoints" / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in MODULE_FILES:
        shutil.copy2(best.path / f"{name}.ckpt", tmp / f"{name}.ckpt")
    shutil.copy2(rd / "native" / "hparams.yaml", tmp / "hparams.yaml")
    tok_dir = Path(hparams["tokenizer_dir"])
    tok_files = sorted(p.name for p in tok_dir.iterdir() if p.is_file() and (p.suffix in (".model", ".vocab") or p.name == "label_encoder.txt"))
    for f in tok_files:
        shutil.copy2(tok_dir / f, tmp / f)
    info = {"format": "speechbrain checkpoint modules (Pretrainer loadables) exported by spx",
            "modules": {n: f"{n}.ckpt" for n in MODULE_FILES}, "tokenizer": tokenizer.kind,
            "tokens": tokenizer.tokens, "vocab_size": hparams["vocab_size"], "tokenizer_files": tok_files,
            "source_checkpoint": str(best.path), "meta": best.meta, "speechbrain": sb.__version__}
    (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2))
    shutil.rmtree(export, ignore_errors=True)
    os.replace(tmp, export)
    return export, best.path, last.path


def start_training(run_dir: str, load, find_unused_parameters: bool = False):
    """What every SpeechBrain train step does first: the run's spec, threads, device (this rank's GPU), seed, the
    hparams (`load(rd)`), incomplete checkpoints moved aside, the DDP group. Returns (spec, rd, hparams, device,
    threads, run_opts)."""
    spec, rd = child.load_run(run_dir)
    threads = child.set_threads(spec)
    device = child.pick_device(spec)
    child.precision_dtype(spec, device)  # refuses fp16 on CPU clearly
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    os.environ.setdefault("SB_GLOBAL_SEED", str(spec.training.seed))
    sb.utils.seed.seed_everything(spec.training.seed, verbose=False)
    hparams = load(rd)
    if RANK == 0:  # before the DDP rendezvous, so no other rank lists checkpoints meanwhile
        quarantine_incomplete(Path(hparams["save_folder"]))
    backend = "gloo" if device == "cpu" else hparams["distributed_backend"]
    run_opts = {"device": device, "distributed_backend": backend}
    if find_unused_parameters:  # a pretrained model can hold parameters no forward uses
        run_opts["find_unused_parameters"] = WORLD > 1
    sb.utils.distributed.ddp_init_group(run_opts)
    log(f"device {device}, {threads} threads, distributed backend {backend if WORLD > 1 else 'none'}")
    return spec, rd, hparams, device, threads, run_opts


def main(run_dir: str) -> None:
    t_start = time.time()
    spec, rd, hparams, device, threads, run_opts = start_training(run_dir, load_hparams)

    init_dir = Path(hparams["init_from"]) if hparams["init_from"] else None
    tokenizer = make_tokenizer(hparams, spec, init_dir, hparams["init_load_head"])
    if init_dir is not None:
        loaded = load_exported(init_dir, hparams, hparams["init_load_head"])
        log(f"initialized {', '.join(loaded)} from {init_dir}"
            + ("" if hparams["init_load_head"] else " (vocabulary differs: new CTC head)"))
    frozen = apply_freeze(hparams, hparams["freeze"])
    if frozen:
        log(f"frozen: {len(frozen)} parameter tensors ({', '.join(hparams['freeze'])})")
        (rd / "native" / "frozen_parameters.json").write_text(json.dumps(frozen, indent=1))

    train, valid = datasets(hparams, tokenizer)
    hparams["train_logger"] = sb.utils.train_logger.FileTrainLogger(save_file=hparams["train_log"])
    brain = CTCBrain(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                     run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.run_dir = rd
    brain.decode = ctc_decoder(hparams, tokenizer)
    brain.rank_batches = 0
    brain.rank_updates = 0
    brain.t0 = time.time()
    brain.prior_seconds = 0.0
    train_loader, valid_loader, total = plan_updates(brain, hparams, train, valid)
    brain.scheduler = make_scheduler(hparams, total)
    brain.checkpointer.add_recoverable("scheduler", brain.scheduler)

    brain.fit(hparams["epoch_counter"], train_loader, valid_loader)

    ranks = gather_ranks(brain)
    if RANK == 0:
        monitor = hparams["early_stopping_monitor"] or "valid_loss"
        exported = export_best(brain, hparams, tokenizer, rd, monitor)
        child.write_train_summary(
            rd, **summary_fields(brain, hparams, t_start, device, threads, run_opts, ranks, exported, monitor),
            params=child.count_params(hparams["model"]),
            trainable_params=int(sum(p.numel() for p in hparams["model"].parameters() if p.requires_grad)),
            effective_batch_seconds=(hparams["max_batch_length_seconds"] * WORLD * hparams["grad_accumulation_factor"])
            if hparams["dynamic_batching"] else None, frozen_parameters=len(frozen),
            init_from=str(init_dir) if init_dir else None, speechbrain=sb.__version__)
    finish_distributed()


def entry(run_dir: str) -> None:
    run_step(main, run_dir)


if __name__ == "__main__":
    child.main_guard(entry)
