"""Train SpeechBrain's Tacotron2 from the generated hyperpyyaml (child process).

    python -m spx.adapters.speechbrain.steps.tts_train RUN_DIR

Mel targets are computed once up front (the corpus is small); a Brain subclass trains with the Tacotron2
Loss (mel MSE + gate BCE + guided attention); the Checkpointer keeps the best checkpoints by valid loss
and resumes an interrupted run (recover_if_possible). Writes curve.jsonl and train_summary.json.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from hyperpyyaml import load_hyperpyyaml
import speechbrain as sb

from spx.adapters.speechbrain.steps.loggers import record_epoch
from spx.adapters.common.child import (count_params, keep_curve_through, load_audio, load_run, main_guard,
                                       peak_memory_mb, pick_device, progress, set_threads, write_train_summary)
from spx.adapters.speechbrain.steps.tts_model import compute_mel, encode_text, load_native
from spx.manifests import read_manifest


def load_hparams(rd) -> dict:
    info = load_native(rd / "native")
    with open(rd / "native" / "tts_hparams.yaml", encoding="utf-8") as fh:
        return load_hyperpyyaml(fh, overrides=info.get("backend_overrides") or None)


def start_job(run_dir: str):
    """What every SpeechBrain TTS/vocoder train step starts with: (spec, rd, device, threads, native info, hparams),
    torch seeded from the spec."""
    spec, rd = load_run(run_dir)
    device = pick_device(spec)
    threads = set_threads(spec)
    torch.manual_seed(spec.training.seed)
    return spec, rd, device, threads, load_native(rd / "native"), load_hparams(rd)


def note_resume(brain: sb.Brain) -> int:
    """Call after Brain.on_fit_start recovered the last checkpoint: the epochs already done (0 on a fresh start),
    with curve.jsonl trimmed to them and brain.resumed_from_epoch set (train_summary.json records it)."""
    done = brain.hparams.epoch_counter.current
    keep_curve_through(brain.run_dir, done)
    if done:
        print(f"spx: resumed from checkpoint at epoch {done} (optimizer step {brain.optimizer_step})", flush=True)
    brain.resumed_from_epoch = done
    return done


def build_items(manifest: str, info: dict, lowercase: bool) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    items = []
    for u in read_manifest(manifest):
        ids = encode_text(u.text or "", info["symbols"], lowercase)
        if not ids:
            raise RuntimeError(f"{manifest}: row {u.id!r} has no characters to speak (text {u.text!r})")
        mel = compute_mel(load_audio(u, info["mel"]["sample_rate"]), info["mel"])
        items.append((torch.tensor(ids), mel, info["speakers"].get(u.speaker, 0) if info["speakers"] else 0))
    return items


def collate(batch):
    """Pad text/mels, sort by text length (the encoder packs sequences), gate target = 1 from the last frame."""
    batch = sorted(batch, key=lambda it: len(it[0]), reverse=True)
    text_lengths = torch.tensor([len(t) for t, _, _ in batch])
    n_mels, max_frames = batch[0][1].size(0), max(m.size(1) for _, m, _ in batch)
    text = torch.zeros(len(batch), int(text_lengths[0]), dtype=torch.long)
    mel = torch.zeros(len(batch), n_mels, max_frames)
    gate = torch.zeros(len(batch), max_frames)
    mel_lengths = torch.zeros(len(batch), dtype=torch.long)
    for i, (t, m, _) in enumerate(batch):
        text[i, : len(t)] = t
        mel[i, :, : m.size(1)] = m
        gate[i, m.size(1) - 1:] = 1
        mel_lengths[i] = m.size(1)
    speakers = torch.tensor([s for _, _, s in batch])
    return text, text_lengths, mel, gate, mel_lengths, speakers


class TacotronBrain(sb.Brain):
    multi_speaker = False

    def compute_forward(self, batch, stage):
        text, text_lengths, mel, _gate, mel_lengths, speakers = [x.to(self.device) for x in batch]
        inputs = (text, text_lengths, mel, mel.size(2), mel_lengths)
        if self.multi_speaker:
            inputs = (*inputs, speakers)
        return self.modules.model(inputs)

    def compute_objectives(self, predictions, batch, stage):
        _text, text_lengths, mel, gate, mel_lengths, _ = [x.to(self.device) for x in batch]
        return self.hparams.criterion(predictions, (mel, gate), text_lengths, mel_lengths, self.current_epoch).loss

    def on_fit_start(self):
        super().on_fit_start()  # builds the optimizer and recovers the last checkpoint (resume)
        note_resume(self)
        # the stop token is one positive frame per utterance: weight it like ESPnet's Tacotron2 (bce_pos_weight 5)
        self.hparams.criterion.bce_loss = torch.nn.BCEWithLogitsLoss(
            pos_weight=torch.tensor(self.hparams.gate_pos_weight, device=self.device))
        self.current_epoch = 0
        self.set_lr()

    def on_stage_start(self, stage, epoch=None):
        if epoch is not None:
            self.current_epoch = epoch
        self.stage_started = time.time()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step:
            self.set_lr()
        if self.hparams.max_steps and self.optimizer_step >= self.hparams.max_steps:
            self.hparams.epoch_counter.current = self.hparams.epoch_counter.limit  # stop after this epoch

    def set_lr(self):
        """Linear warmup, then cosine decay to min_lr over the planned steps (training.scheduler)."""
        hp = self.hparams
        if hp.scheduler == "constant":
            return
        step, warm = self.optimizer_step, max(hp.warmup_steps, 1)
        if step < warm:
            lr = hp.lr * (step + 1) / warm
        else:
            frac = min(1.0, (step - warm) / max(1, self.total_steps - warm))
            lr = hp.min_lr + 0.5 * (hp.lr - hp.min_lr) * (1 + math.cos(math.pi * frac))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            # checkpoint first: a run killed in between resumes this epoch instead of logging it twice
            self.checkpointer.save_and_keep_only(meta={"loss": stage_loss}, min_keys=["loss"],
                                                 num_to_keep=self.hparams.keep_checkpoints)
            record_epoch(self.run_dir, {"epoch": epoch, "step": self.optimizer_step, "train_loss": self.train_loss,
                                        "valid_loss": stage_loss, "lr": lr, "time": time.time()})
            progress(phase="train", epoch=epoch, of=self.hparams.epochs, train_loss=round(self.train_loss, 4),
                     valid_loss=round(stage_loss, 4))


def train(run_dir: str) -> None:
    spec, rd, device, threads, info, hp = start_job(run_dir)
    started = time.time()
    train_items = build_items(spec.data.train, info, spec.tokenizer.lowercase)
    valid_items = build_items(spec.data.valid, info, spec.tokenizer.lowercase)
    progress(phase="features", train=len(train_items), valid=len(valid_items), seconds=round(time.time() - started, 1))
    gen = torch.Generator().manual_seed(spec.training.seed)
    train_loader = torch.utils.data.DataLoader(train_items, batch_size=hp["batch_size"], shuffle=True,
                                               collate_fn=collate, generator=gen, num_workers=spec.training.num_workers)
    valid_loader = torch.utils.data.DataLoader(valid_items, batch_size=hp["batch_size"], collate_fn=collate)

    per_epoch = math.ceil(len(train_items) / hp["batch_size"] / spec.training.grad_accumulation)

    def prepare(brain: TacotronBrain) -> None:
        brain.multi_speaker = bool(info["speakers"])
        brain.train_loss = float("nan")
        brain.total_steps = spec.training.max_steps or per_epoch * hp["epochs"]

    fit_and_summarize(TacotronBrain, spec, rd, hp, info, (train_loader, valid_loader), started, device, threads,
                      prepare, model_class="Tacotron2")


def fit_and_summarize(brain_class: type, spec, rd, hp: dict, info: dict, loaders: tuple, started: float, device: str,
                      threads: int, prepare: Callable[[sb.Brain], None], **summary_fields: Any) -> sb.Brain:
    """What every SpeechBrain acoustic-model train step does once its data is ready: init_from (strict), the Brain,
    fit (resuming from the last checkpoint), and train_summary.json naming the best checkpoint by valid loss."""
    if info["init_from"]:
        state = torch.load(info["init_from"], map_location="cpu")
        hp["model"].load_state_dict(state)  # strict: a mismatched architecture fails here, loudly
        progress(phase="init_from", checkpoint=info["init_from"])
    run_opts = {"device": device, "noprogressbar": True, "max_grad_norm": spec.training.grad_clip or 1e9,
                "grad_accumulation_factor": spec.training.grad_accumulation}
    brain = brain_class(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp, run_opts=run_opts,
                        checkpointer=hp["checkpointer"])
    brain.run_dir = rd
    prepare(brain)
    brain.fit(hp["epoch_counter"], *loaders)

    ckpt = hp["checkpointer"]
    best = ckpt.find_checkpoint(min_key="loss")
    last = ckpt.find_checkpoint()
    write_train_summary(
        rd, wall_seconds=round(time.time() - started, 2), epochs=hp["epoch_counter"].current,
        steps=brain.optimizer_step, params=count_params(hp["model"]), peak_memory_mb=round(peak_memory_mb(device), 1),
        last_checkpoint=str(last.path) if last else None, best_checkpoint=str(best.path) if best else None,
        exported_model=str(best.path / "model.ckpt") if best else None,
        effective_batch=hp["batch_size"] * spec.training.grad_accumulation, world_size=1, device=device,
        threads=threads, vocoder=info["vocoder_name"], init_from=info["init_from"],
        resumed=brain.resumed_from_epoch > 0, **summary_fields,
    )
    return brain


if __name__ == "__main__":
    main_guard(train)
