"""Training step of SpeechBrain ssl_ctc (child process): the generated hyperpyyaml + a Brain, as SpeechBrain's
LibriSpeech CTC recipe fine-tunes a Transformers SSL encoder: two optimizers (pretrained model, new head), the
pretrained one left out (freeze_optimizers) and its forward run without gradients for
finetune.freeze_pretrained_steps updates, LoRA through speechbrain.nnet.adapters.

`python -m spx.adapters.speechbrain.steps.ssl_train RUN_DIR`, or under torchrun (SpeechBrain DDP, gloo on CPU).
Resume is SpeechBrain's own: Checkpointer.recover_if_possible in Brain.on_fit_start (a LoRA run's checkpoints hold
the adapters and the head only: AdaptedModel saves its trainable parameters).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import speechbrain as sb
from spx.adapters.common import child
from spx.adapters.speechbrain.ssl_ctc import EXPORT_INFO
from spx.adapters.speechbrain.steps import ssl_model
from spx.adapters.speechbrain.steps.model import ctc_decoder, make_tokenizer
from spx.adapters.speechbrain.steps.train import (
    RANK, CTCBrain, datasets, finish_distributed, gather_ranks, log, make_scheduler, plan_updates, run_step,
    start_training, summary_fields,
)


class SslCTCBrain(CTCBrain):
    """CTCBrain's records and checkpoints, with the pretrained encoder's forward, two optimizers and two schedules."""

    def held(self) -> bool:
        return self.optimizer_step < self.hparams.freeze_pretrained_steps

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        hold = stage == sb.Stage.TRAIN and self.held()
        return ssl_model.log_probs(self.modules, vars(self.hparams), wavs, wav_lens, hold_encoder=hold), wav_lens

    def init_optimizers(self):
        # only trainable parameters reach an optimizer: frozen ones (and LoRA's base) never do
        pretrained = [p for p in self.modules.ssl.parameters() if p.requires_grad]
        self.optimizer = self.hparams.head_opt_class(list(self.modules.ctc_lin.parameters()))
        self.optimizers_dict = {"head_optimizer": self.optimizer}
        self.pretrained_optimizer = self.hparams.pretrained_opt_class(pretrained) if pretrained else None
        if self.pretrained_optimizer is not None:
            self.optimizers_dict["pretrained_optimizer"] = self.pretrained_optimizer
        for name, opt in self.optimizers_dict.items():
            self.checkpointer.add_recoverable(name, opt)

    def freeze_optimizers(self, optimizers):
        # the recipes' hook: the pretrained model waits while the new head warms up
        if self.held():
            return {k: v for k, v in optimizers.items() if k != "pretrained_optimizer"}
        return optimizers

    def on_fit_start(self):
        super().on_fit_start()
        if self.pretrained_optimizer is not None and hasattr(self.pretrained_scheduler, "set_initial"):
            self.pretrained_scheduler.set_initial(self.pretrained_optimizer)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step:  # both schedules follow the global update count (the held part's lr resumes mid-schedule)
            self.scheduler(self.optimizer)
            if self.pretrained_optimizer is not None:
                self.pretrained_scheduler(self.pretrained_optimizer)
            self.rank_updates += 1
        self.rank_batches += 1


def export_best(brain: SslCTCBrain, hparams, tokenizer, rd, monitor: str, describe: dict) -> tuple[Path, Path, Path]:
    """checkpoints/export: the best checkpoint's ssl.ckpt (a LoRA run: the adapter weights only, the base stays the
    pretrained source) and ctc_lin.ckpt, the tokenizer, hparams, spx_export.json; merged/ (a Transformers folder
    with the LoRA folded in) when merge_lora."""
    best = brain.checkpointer.find_checkpoint(min_key=monitor)
    last = max(brain.checkpointer.list_checkpoints(), key=lambda c: c.meta.get("epoch", 0) if c.meta else 0)
    export, tmp = rd / "checkpoints" / "export", rd / "checkpoints" / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("ssl", "ctc_lin"):
        shutil.copy2(best.path / f"{name}.ckpt", tmp / f"{name}.ckpt")
    shutil.copy2(rd / "native" / "hparams.yaml", tmp / "hparams.yaml")
    tok_dir = Path(hparams["tokenizer_dir"])
    tok_files = sorted(p.name for p in tok_dir.iterdir()
                       if p.is_file() and (p.suffix in (".model", ".vocab") or p.name == "label_encoder.txt"))
    for f in tok_files:
        shutil.copy2(tok_dir / f, tmp / f)
    method = hparams["finetune_method"]
    info = {"family": "ssl_ctc", "method": method, "model_type": describe["model_type"],
            "base_model": hparams["pretrained_source"], "modules": {"ssl": "ssl.ckpt", "ctc_lin": "ctc_lin.ckpt"},
            "ssl_weights": "LoRA adapters only (the base is base_model)" if method == "lora" else "full",
            "tokenizer": tokenizer.kind, "tokens": tokenizer.tokens, "vocab_size": hparams["vocab_size"],
            "tokenizer_files": tok_files, "source_checkpoint": str(best.path), "meta": best.meta,
            "speechbrain": sb.__version__}
    if method == "lora" and hparams["merge_lora"]:
        ssl = hparams["ssl"]
        ssl.loader(best.path / "ssl.ckpt", True)  # the best adapters (the modules hold the last epoch's)
        ssl_model.merged_model(ssl).save_pretrained(str(tmp / "merged"))
        hparams["ssl_base"].feature_extractor.save_pretrained(str(tmp / "merged"))
        info["merged"] = "merged"
    (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2))
    shutil.rmtree(export, ignore_errors=True)
    os.replace(tmp, export)
    return export, best.path, last.path


def main(run_dir: str) -> None:
    t_start = time.time()
    # DDP: wav2vec2's masked_spec_embed is a parameter no forward uses without SpecAugment
    spec, rd, hparams, device, threads, run_opts = start_training(run_dir, ssl_model.load_ssl_hparams,
                                                                  find_unused_parameters=True)

    init_dir = Path(hparams["init_from"]) if hparams["init_from"] else None
    tokenizer = make_tokenizer(hparams, spec, init_dir, hparams["init_load_head"])
    details = ssl_model.prepare(hparams, init_dir, hparams["init_load_head"])
    hf = ssl_model.hf_model(hparams)
    lora = hparams["finetune_method"] == "lora"
    describe = {"model_type": hf.config.model_type, "pretrained": hparams["pretrained_source"],
                "finetune_method": hparams["finetune_method"], "tokenizer": tokenizer.kind,
                "vocab_size": hparams["output_neurons"], **ssl_model.param_report(hparams)}
    log(f"{describe['model_type']} from {hparams['pretrained_source']} ({type(hparams['ssl_base']).__name__}): "
        f"{describe['params']} parameters, {describe['trainable_params']} trainable"
        + (f" ({describe['lora_params']} LoRA)" if lora else "")
        + (f"; init from {init_dir} ({', '.join(details['loaded'])})" if init_dir else ""))
    before = ssl_model.base_digest(hparams["ssl"]) if lora else None

    train, valid = datasets(hparams, tokenizer)
    hparams["train_logger"] = sb.utils.train_logger.FileTrainLogger(save_file=hparams["train_log"])
    brain = SslCTCBrain(modules=hparams["modules"], hparams=hparams, run_opts=run_opts,
                        checkpointer=hparams["checkpointer"])
    brain.run_dir, brain.decode = rd, ctc_decoder(hparams, tokenizer)
    brain.rank_batches = brain.rank_updates = 0
    brain.t0, brain.prior_seconds = time.time(), 0.0
    train_loader, valid_loader, total = plan_updates(brain, hparams, train, valid)
    brain.scheduler = make_scheduler({"lr_annealing": hparams["lr_annealing_head"]}, total)
    brain.pretrained_scheduler = make_scheduler({"lr_annealing": hparams["lr_annealing_pretrained"]}, total)
    brain.checkpointer.add_recoverable("scheduler_head", brain.scheduler)
    brain.checkpointer.add_recoverable("scheduler_pretrained", brain.pretrained_scheduler)

    brain.fit(hparams["epoch_counter"], train_loader, valid_loader)

    if lora:  # the proof that LoRA left the pretrained weights as they were (bit for bit)
        describe.update(base_weights_sha256_before=before, base_weights_sha256_after=ssl_model.base_digest(
            hparams["ssl"]))
    ranks = gather_ranks(brain)
    if RANK == 0:
        monitor = hparams["early_stopping_monitor"] or "valid_loss"
        exported = export_best(brain, hparams, tokenizer, rd, monitor, describe)
        child.write_train_summary(
            rd, **summary_fields(brain, hparams, t_start, device, threads, run_opts, ranks, exported, monitor),
            init_from=str(init_dir) if init_dir else None, init_details=details or None, speechbrain=sb.__version__,
            **describe)
    finish_distributed()


def entry(run_dir: str) -> None:
    run_step(main, run_dir, ("fp16", "accelerator", "spec_augment"))


if __name__ == "__main__":
    child.main_guard(entry)
