"""Training step of SpeechBrain whisper (child process): the generated hyperpyyaml + a Brain, as SpeechBrain's
CommonVoice recipe (train_with_whisper.py) fine-tunes Whisper: the integration's forward on the waveforms and the
decoder input (prefix + tokens), log-softmax, NLL on the next tokens; valid WER by S2SWhisperGreedySearcher.

`python -m spx.adapters.speechbrain.steps.whisper_train RUN_DIR`, or under torchrun (SpeechBrain DDP, gloo on CPU).
Resume is SpeechBrain's own: Checkpointer.recover_if_possible in Brain.on_fit_start.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import speechbrain as sb
from spx.adapters.common import child
from spx.adapters.speechbrain.steps import ssl_model, whisper_model
from spx.adapters.speechbrain.steps.train import (
    RANK, CTCBrain, audio_pipeline, finish_distributed, gather_ranks, loader_kwargs, log, make_scheduler, run_step,
    start_training, summary_fields,
)
from spx.adapters.speechbrain.whisper import EXPORT_INFO


class WhisperBrain(CTCBrain):
    """CTCBrain's optimizer, schedule, records and checkpoints, with Whisper's seq2seq forward and NLL loss."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        bos_tokens, _ = batch.tokens_bos
        enc_out, logits, _ = self.modules.whisper(wavs, bos_tokens)
        log_probs = self.hparams.log_softmax(logits)
        hyps = None
        if stage == sb.Stage.VALID:
            hyps = self.hparams.valid_search(enc_out.detach(), wav_lens)[0]
        return log_probs, hyps

    def compute_objectives(self, predictions, batch, stage):
        log_probs, hyps = predictions
        tokens_eos, tokens_eos_lens = batch.tokens_eos
        loss = self.hparams.nll_loss(log_probs, tokens_eos, length=tokens_eos_lens)
        if hyps is not None:
            texts = whisper_model.hyps_to_text(self.hparams.whisper_base.tokenizer, hyps)  # unwrapped under DDP
            self.wer_metric.append(batch.id, [h.split() for h in texts], [w.split() for w in batch.wrd])
        return loss


def datasets(hparams, tokenizer):
    from speechbrain.dataio.dataset import DynamicItemDataset

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens_bos", "tokens_eos")
    def text_pipeline(wrd):
        yield wrd
        yield from whisper_model.token_targets(tokenizer, wrd)

    out = [DynamicItemDataset.from_csv(csv_path=hparams[key]) for key in ("train_csv", "valid_csv")]
    sb.dataio.dataset.add_dynamic_item(out, audio_pipeline(hparams["sample_rate"]))
    sb.dataio.dataset.add_dynamic_item(out, text_pipeline)
    sb.dataio.dataset.set_output_keys(out, ["id", "sig", "wrd", "tokens_bos", "tokens_eos"])
    train, valid = out
    return train, valid.filtered_sorted(sort_key="duration")


def export_best(brain: WhisperBrain, hparams, rd, monitor: str, describe: dict) -> tuple[Path, Path, Path]:
    """checkpoints/export: the best checkpoint's whisper.ckpt (the whole integration module), hparams.yaml and
    spx_export.json (the base model the integration is built from)."""
    best = brain.checkpointer.find_checkpoint(min_key=monitor)
    last = max(brain.checkpointer.list_checkpoints(), key=lambda c: c.meta.get("epoch", 0) if c.meta else 0)
    export, tmp = rd / "checkpoints" / "export", rd / "checkpoints" / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(best.path / "whisper.ckpt", tmp / "whisper.ckpt")
    shutil.copy2(rd / "native" / "hparams.yaml", tmp / "hparams.yaml")
    method = hparams["finetune_method"]
    info = {"family": "whisper", "method": method, "base_model": hparams["pretrained_source"],
            "language": hparams["language"], "task": hparams["whisper_task"], "modules": {"whisper": "whisper.ckpt"},
            "whisper_weights": "LoRA adapters only (the base is base_model)" if method == "lora" else "full",
            "tokenizer": "the base model's own", "source_checkpoint": str(best.path), "meta": best.meta,
            "params": describe["params"], "speechbrain": sb.__version__}
    (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2))
    shutil.rmtree(export, ignore_errors=True)
    os.replace(tmp, export)
    return export, best.path, last.path


def main(run_dir: str) -> None:
    t_start = time.time()
    spec, rd, hparams, device, threads, run_opts = start_training(run_dir, whisper_model.load_whisper_hparams,
                                                                  find_unused_parameters=True)

    whisper = hparams["whisper_base"]
    frozen = whisper_model.prepare(hparams)
    lora = hparams["finetune_method"] == "lora"
    before = ssl_model.base_digest(hparams["whisper"]) if lora else None
    tokenizer = whisper.tokenizer
    describe = {"model_type": whisper.model.config.model_type, "pretrained": hparams["pretrained_source"],
                "finetune_method": hparams["finetune_method"], "language": hparams["language"], "whisper_task": hparams["whisper_task"],
                "decoder_prefix": tokenizer.convert_ids_to_tokens(tokenizer.prefix_tokens),
                "freeze": hparams["freeze"], **whisper_model.param_report(hparams)}
    log(f"whisper from {hparams['pretrained_source']}: {describe['params']} parameters, {describe['trainable_params']} trainable"
        + (f" ({describe['lora_params']} LoRA)" if lora else "") + f"; decoder prefix {''.join(describe['decoder_prefix'])}")

    train, valid = datasets(hparams, tokenizer)
    hparams["train_logger"] = sb.utils.train_logger.FileTrainLogger(save_file=hparams["train_log"])
    brain = WhisperBrain(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                         run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.run_dir = rd
    brain.rank_batches = brain.rank_updates = 0
    brain.t0, brain.prior_seconds = time.time(), 0.0
    train_loader = brain.make_dataloader(train, stage=sb.Stage.TRAIN, **loader_kwargs(hparams, train))
    valid_loader = brain.make_dataloader(valid, stage=sb.Stage.VALID, ckpt_prefix=None,
                                         batch_size=hparams["valid_batch_size"], num_workers=hparams["num_workers"])
    accum = hparams["grad_accumulation_factor"]
    updates_per_epoch = math.ceil(len(train_loader) / accum)
    max_steps = hparams["optimizer_step_limit"]
    if max_steps:
        brain.planned_epochs = math.ceil(max_steps / updates_per_epoch)
        hparams["epoch_counter"].limit = brain.planned_epochs
        total = max_steps
    else:
        brain.planned_epochs = hparams["number_of_epochs"]
        total = updates_per_epoch * brain.planned_epochs
    brain.scheduler = make_scheduler(hparams, total)
    brain.checkpointer.add_recoverable("scheduler", brain.scheduler)
    log(f"{len(train)} train utterances, {len(train_loader)} batches/epoch on this rank, {total} updates planned")

    brain.fit(hparams["epoch_counter"], train_loader, valid_loader)

    if lora:  # the proof that LoRA left the pretrained weights as they were (bit for bit)
        describe.update(base_weights_sha256_before=before,
                        base_weights_sha256_after=ssl_model.base_digest(hparams["whisper"]))

    ranks = gather_ranks(brain)
    if RANK == 0:
        monitor = hparams["early_stopping_monitor"] or "valid_loss"
        exported = export_best(brain, hparams, rd, monitor, describe)
        child.write_train_summary(
            rd, **summary_fields(brain, hparams, t_start, device, threads, run_opts, ranks, exported, monitor),
            frozen_parameter_tensors=len(frozen), speechbrain=sb.__version__, **describe)
    finish_distributed()


def entry(run_dir: str) -> None:
    run_step(main, run_dir, ("fp16", "accelerator", "English-only"))


if __name__ == "__main__":
    child.main_guard(entry)
