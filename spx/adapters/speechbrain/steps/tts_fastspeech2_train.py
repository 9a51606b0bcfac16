"""Child step `tts_train`: SpeechBrain's FastSpeech2WithAlignment from the generated hyperpyyaml.

    python -m spx.adapters.speechbrain.steps.tts_fastspeech2_train RUN_DIR

Mels (FastSpeech2.mel_spectrogram) are computed once up front; pitch (normalized with native/pitch_stats.json) and
energy come from the tts_prepare step. Batches are made by SpeechBrain's TextMelCollateWithAlignment; a Brain subclass
trains with LossWithAlignment (the aligner learns the character durations inside the model: forward-sum + binary
alignment losses); the Checkpointer keeps the best checkpoints by valid loss and resumes an interrupted run
(recover_if_possible, with the LR schedule). Writes curve.jsonl and train_summary.json.
"""
from __future__ import annotations

import json
import time

import numpy as np
import speechbrain as sb
import torch

from spx.adapters.speechbrain.steps.loggers import record_epoch
from spx.adapters.common.child import load_audio, main_guard, progress
from spx.adapters.speechbrain.steps.tts_fastspeech2_prepare import mel_and_energy, split_rows, sup_file
from spx.adapters.speechbrain.steps.tts_model import encode_text
from spx.adapters.speechbrain.steps.tts_train import fit_and_summarize, note_resume, start_job


def build_items(rd, spec, hp: dict, info: dict, split: str, rows: list, pitch_stats: dict) -> list[dict]:
    """Dataset items in the layout TextMelCollateWithAlignment reads: mel_text_pair = (ids, mel, pitch, energy)."""
    items = []
    for i, u in enumerate(rows):
        ids = encode_text(u.text or "", info["symbols"], spec.tokenizer.lowercase)
        if not ids:
            raise RuntimeError(f"{split} row {u.id!r} has no characters to speak (text {u.text!r})")
        mel, _ = mel_and_energy(hp, load_audio(u, hp["sample_rate"]))
        targets = {}
        for kind in ("pitch", "energy"):
            path = sup_file(rd / "native", kind, split, i, u.id)
            if not path.exists():
                raise RuntimeError(f"{path} is missing: run the tts_prepare step first")
            targets[kind] = torch.from_numpy(np.load(path))
            if targets[kind].numel() != mel.size(1):
                raise RuntimeError(f"{path} has {targets[kind].numel()} frames, the mel of {u.id!r} {mel.size(1)}: "
                                   "the features changed since tts_prepare; run it again")
        pitch = (targets["pitch"] - pitch_stats["pitch_mean"]) / pitch_stats["pitch_std"]
        items.append({"mel_text_pair": (torch.tensor(ids), mel, pitch, targets["energy"]), "label": u.text,
                      "wav": u.audio})
    return items


class FastSpeech2Brain(sb.Brain):
    def compute_forward(self, batch, stage):
        tokens, _input_lengths, mel, pitch, energy, _mel_lengths, _labels, _wavs = batch
        return self.modules.model(tokens.to(self.device), mel.to(self.device), pitch.to(self.device),
                                  energy.to(self.device))

    def compute_objectives(self, predictions, batch, stage):
        _tokens, input_lengths, mel, pitch, energy, mel_lengths, _labels, _wavs = batch
        targets = tuple(x.to(self.device) for x in (mel, pitch, energy, mel_lengths, input_lengths))
        losses = self.hparams.criterion(predictions, targets, self.hparams.epoch_counter.current)
        sums = self.loss_sums.setdefault(stage, {})
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        self.loss_batches[stage] = self.loss_batches.get(stage, 0) + 1
        return losses["total_loss"]

    def on_fit_start(self):
        super().on_fit_start()  # builds the optimizer and recovers the last checkpoint (resume)
        note_resume(self)
        self.hparams.lr_annealing.set_initial(self.optimizer)

    def on_stage_start(self, stage, epoch=None):
        self.loss_sums.pop(stage, None)
        self.loss_batches.pop(stage, None)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step:
            self.hparams.lr_annealing(self.optimizer)
        if self.hparams.max_steps and self.optimizer_step >= self.hparams.max_steps:
            self.hparams.epoch_counter.current = self.hparams.epoch_counter.limit  # stop after this epoch

    def stage_losses(self, stage) -> dict[str, float]:
        n = max(1, self.loss_batches.get(stage, 0))
        return {k: v / n for k, v in self.loss_sums.get(stage, {}).items()}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = float(stage_loss)
            self.train_parts = self.stage_losses(stage)
            return
        if stage == sb.Stage.VALID:
            valid_parts = self.stage_losses(stage)
            lr = self.optimizer.param_groups[0]["lr"]
            # checkpoint first: a run killed in between resumes this epoch instead of logging it twice
            self.checkpointer.save_and_keep_only(meta={"loss": float(stage_loss)}, min_keys=["loss"],
                                                 num_to_keep=self.hparams.keep_checkpoints)
            record_epoch(self.run_dir, {
                "epoch": epoch, "step": self.optimizer_step, "train_loss": self.train_loss,
                "valid_loss": float(stage_loss), "lr": lr, "time": time.time(),
                "valid_mel_loss": valid_parts.get("mel_loss"), "valid_duration_loss": valid_parts.get("dur_loss"),
                "valid_aligner_loss": valid_parts.get("aligner_loss"),
                "train_parts": {k: round(v, 4) for k, v in self.train_parts.items()}})
            progress(phase="train", epoch=epoch, of=self.hparams.epochs, train_loss=round(self.train_loss, 4),
                     valid_loss=round(float(stage_loss), 4), valid_mel_loss=round(valid_parts.get("mel_loss", 0), 4))


def train(run_dir: str) -> None:
    spec, rd, device, threads, info, hp = start_job(run_dir)
    stats_path = rd / "native" / "pitch_stats.json"
    if not stats_path.exists():
        raise RuntimeError(f"{stats_path} is missing: run the tts_prepare step first")
    pitch_stats = json.loads(stats_path.read_text())
    started = time.time()
    splits = {split: build_items(rd, spec, hp, info, split, rows, pitch_stats)
              for split, rows in split_rows(spec).items()}
    progress(phase="features", train=len(splits["train"]), valid=len(splits["valid"]),
             seconds=round(time.time() - started, 1))
    gen = torch.Generator().manual_seed(spec.training.seed)
    train_loader = torch.utils.data.DataLoader(splits["train"], batch_size=hp["batch_size"], shuffle=True,
                                               collate_fn=hp["collate_fn"], generator=gen,
                                               num_workers=spec.training.num_workers)
    valid_loader = torch.utils.data.DataLoader(splits["valid"], batch_size=hp["batch_size"],
                                               collate_fn=hp["collate_fn"])

    def prepare(brain: FastSpeech2Brain) -> None:
        brain.train_loss, brain.train_parts = float("nan"), {}
        brain.loss_sums, brain.loss_batches = {}, {}

    fit_and_summarize(FastSpeech2Brain, spec, rd, hp, info, (train_loader, valid_loader), started, device, threads,
                      prepare, model_class="FastSpeech2WithAlignment", pitch_mean=pitch_stats["pitch_mean"],
                      pitch_std=pitch_stats["pitch_std"])


if __name__ == "__main__":
    main_guard(train)
