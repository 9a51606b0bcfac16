"""Child step `tts_train` of the SpeechBrain HiFi-GAN vocoder job: HifiganGenerator against HifiganDiscriminator.

    python -m spx.adapters.speechbrain.steps.vocoder_train RUN_DIR

The audio of the train/valid manifests is loaded once up front (the text is not used). Each batch is a random crop of
`segment_size` samples per utterance (validation: the middle crop of each file, speech rather than the leading silence,
the same every epoch); its
log-mel (the hparams' mel_spectrogram, the acoustic models' mel) goes through the generator. A Brain subclass steps its
two optimizers by hand per batch, as SpeechBrain's recipe does: the discriminator on the generator's detached output,
then the generator (mel L1 x 45 + adversarial + feature matching) against the discriminator just updated; each with
its own warmup + cosine/constant schedule and, when training.grad_clip is set, its own gradient-norm clip. The valid
loss is the mel L1 of the generator alone; the Checkpointer keeps the best by it and resumes an interrupted run. At
the end the best generator is exported to checkpoints/export/ (hyperparams.yaml + generator.ckpt + spx_vocoder.json),
the folder speechbrain.inference.vocoders.HIFIGAN loads. Writes curve.jsonl and train_summary.json.
"""
from __future__ import annotations

import math
import os
import shutil
import time

import speechbrain as sb
import torch

from spx.adapters.speechbrain.steps.loggers import record_epoch
from spx.adapters.common.child import (count_params, load_audio, main_guard, peak_memory_mb, progress,
                                       write_train_summary)
from spx.adapters.speechbrain.steps.tts_train import note_resume, start_job
from spx.adapters.speechbrain.helpers import VOCODER_CLASS, VOCODER_EXPORT_INFO
from spx.adapters.speechbrain.hifigan import audio_rows
from spx.yamlio import atomic_write_json


class Crops:
    """Collate waveforms into (batch, 1, size) crops: random ones (seeded) for training, the middle for validation.
    A file a few samples short of the crop (manifest durations are rounded) is zero-padded, as SpeechBrain's recipe
    does."""

    def __init__(self, size: int, seed: int | None):
        self.size = size
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, wavs: list[torch.Tensor]) -> torch.Tensor:
        crops = []
        for wav in wavs:
            room = wav.numel() - self.size
            random = self.generator is not None and room > 0
            start = int(torch.randint(0, room + 1, (1,), generator=self.generator)) if random else max(0, room // 2)
            crop = wav[start:start + self.size]
            crops.append(torch.nn.functional.pad(crop, (0, self.size - crop.numel())))
        return torch.stack(crops).unsqueeze(1)


class HifiGanBrain(sb.Brain):
    def init_optimizers(self):
        """One optimizer per network (SpeechBrain's recipe form), both checkpointed."""
        hp = self.hparams
        self.optimizers_dict = {
            "generator": hp.opt_class_generator(self.modules.generator.parameters()),
            "discriminator": hp.opt_class_discriminator(self.modules.discriminator.parameters()),
        }
        for name, opt in self.optimizers_dict.items():
            self.checkpointer.add_recoverable(f"optimizer_{name}", opt)

    def on_fit_start(self):
        super().on_fit_start()  # builds the optimizers and recovers the last checkpoint (resume)
        note_resume(self)
        for name, opt in self.optimizers_dict.items():
            self.annealing(name).set_initial(opt)

    def annealing(self, name: str):
        return getattr(self.hparams, f"lr_annealing_{name}")

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        return self.hparams.mel_spectrogram(audio=wav.squeeze(1))  # (batch, n_mels, frames)

    def update(self, name: str, loss: torch.Tensor) -> None:
        """Backward, clip (training.grad_clip) and step one network's optimizer, then its schedule."""
        opt = self.optimizers_dict[name]
        opt.zero_grad(set_to_none=True)
        self.check_loss_isfinite(loss)
        loss.backward()
        if math.isfinite(self.max_grad_norm):
            torch.nn.utils.clip_grad_norm_(getattr(self.modules, name).parameters(), self.max_grad_norm)
        opt.step()
        self.annealing(name)(opt)

    def fit_batch(self, batch):
        wav = batch.to(self.device)
        generator, discriminator = self.modules.generator, self.modules.discriminator
        fake = generator(self.log_mel(wav))[:, :, : wav.size(2)]  # (frames x hop) is one hop longer than the crop
        # the discriminator first, on the generator's output as it is now
        scores_fake, _ = discriminator(fake.detach())
        scores_real, _ = discriminator(wav)
        d_losses = self.hparams.discriminator_loss(scores_fake, scores_real)
        self.update("discriminator", d_losses["D_loss"])
        # then the generator against the updated discriminator; its weights need no gradients in this pass
        discriminator.requires_grad_(False)
        try:
            scores_fake, feats_fake = discriminator(fake)
            with torch.no_grad():
                _, feats_real = discriminator(wav)  # feature-matching targets
            g_losses = self.hparams.generator_loss(sb.Stage.TRAIN, fake, wav, scores_fake, feats_fake, feats_real)
            self.update("generator", g_losses["G_loss"])
        finally:
            discriminator.requires_grad_(True)
        self.optimizer_step += 1  # one step = one update of each network (optimizer_step_limit counts these)
        self.record(sb.Stage.TRAIN, {**g_losses, **d_losses})
        return g_losses["G_loss"].detach().cpu()

    @torch.no_grad()
    def evaluate_batch(self, batch, stage):
        wav = batch.to(self.device)
        fake = self.modules.generator(self.log_mel(wav))[:, :, : wav.size(2)]
        mel_l1 = self.hparams.l1_spec_loss(fake, wav)
        self.record(stage, {"mel_l1": mel_l1})
        return mel_l1.detach().cpu()

    def record(self, stage, losses: dict) -> None:
        sums = self.loss_sums.setdefault(stage, {})
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        self.loss_batches[stage] = self.loss_batches.get(stage, 0) + 1

    def stage_losses(self, stage) -> dict[str, float]:
        n = max(1, self.loss_batches.get(stage, 0))
        return {k: v / n for k, v in self.loss_sums.get(stage, {}).items()}

    def on_stage_start(self, stage, epoch=None):
        self.loss_sums.pop(stage, None)
        self.loss_batches.pop(stage, None)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_parts = self.stage_losses(stage)
            return
        if stage != sb.Stage.VALID:
            return
        valid_mel_l1 = float(stage_loss)
        # checkpoint first: a run killed in between resumes this epoch instead of logging it twice
        self.checkpointer.save_and_keep_only(meta={"loss": valid_mel_l1}, min_keys=["loss"],
                                             num_to_keep=self.hparams.keep_checkpoints)
        train = self.train_parts
        row = {"epoch": epoch, "step": self.optimizer_step, "train_loss": train.get("G_loss"),
               "train_mel_l1": train.get("G_l1_spec_loss"), "train_adversarial_loss": train.get("G_adv_loss"),
               "train_discriminator_loss": train.get("D_loss"), "valid_loss": valid_mel_l1,
               "lr": self.optimizers_dict["generator"].param_groups[0]["lr"],
               "time": round(time.time() - self.started, 2)}
        record_epoch(self.run_dir, row)
        progress(phase="train", epoch=epoch, of=self.hparams.epochs, step=self.optimizer_step,
                 train_loss=round(row["train_loss"], 4), train_mel_l1=round(row["train_mel_l1"], 4),
                 valid_loss=round(valid_mel_l1, 4))


def export_generator(rd, checkpoint_dir, info: dict) -> str:
    """checkpoints/export/: hyperparams.yaml (written by render) + the checkpoint's generator.ckpt + spx_vocoder.json,
    assembled in a temporary folder and renamed into place."""
    export = rd / "checkpoints" / "export"
    tmp = export.with_name(".export.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copyfile(rd / "native" / "export_hyperparams.yaml", tmp / "hyperparams.yaml")
    shutil.copyfile(checkpoint_dir / "generator.ckpt", tmp / "generator.ckpt")
    atomic_write_json(tmp / VOCODER_EXPORT_INFO, {"model_class": VOCODER_CLASS, "mel": info["mel"], "run_dir": str(rd),
                                          "checkpoint": str(checkpoint_dir)})
    shutil.rmtree(export, ignore_errors=True)
    os.replace(tmp, export)
    return str(export)


def train(run_dir: str) -> None:
    spec, rd, device, threads, info, hp = start_job(run_dir)
    started = time.time()
    audio = {split: [torch.from_numpy(load_audio(u, info["mel"]["sample_rate"])) for u in audio_rows(spec, split)]
             for split in ("train", "valid")}
    progress(phase="audio", train=len(audio["train"]), valid=len(audio["valid"]),
             seconds=round(time.time() - started, 1))
    seed = spec.training.seed
    train_loader = torch.utils.data.DataLoader(
        audio["train"], batch_size=hp["batch_size"], shuffle=True, collate_fn=Crops(hp["segment_size"], seed),
        generator=torch.Generator().manual_seed(seed), num_workers=spec.training.num_workers)
    valid_loader = torch.utils.data.DataLoader(audio["valid"], batch_size=hp["batch_size"],
                                               collate_fn=Crops(hp["segment_size"], None))
    if info["init_from"]:
        hp["generator"].load_state_dict(torch.load(info["init_from"], map_location="cpu"))  # strict: sizes must match
        progress(phase="init_from", checkpoint=info["init_from"])

    brain = HifiGanBrain(modules=hp["modules"], hparams=hp, run_opts={"device": device},
                         checkpointer=hp["checkpointer"])
    brain.run_dir, brain.started = rd, started
    brain.train_parts, brain.loss_sums, brain.loss_batches = {}, {}, {}
    brain.fit(hp["epoch_counter"], train_loader, valid_loader)

    ckpt = hp["checkpointer"]
    best, last = ckpt.find_checkpoint(min_key="loss"), ckpt.find_checkpoint()
    if best is None:
        raise RuntimeError(f"no checkpoint under {rd / 'checkpoints'}: training saved none")
    exported = export_generator(rd, best.path, info)
    write_train_summary(
        rd, wall_seconds=round(time.time() - started, 2), epochs=hp["epoch_counter"].current,
        steps=brain.optimizer_step, params=count_params(hp["generator"]),
        discriminator_params=count_params(hp["discriminator"]), peak_memory_mb=round(peak_memory_mb(device), 1),
        last_checkpoint=str(last.path), best_checkpoint=str(best.path), exported_model=exported,
        exported_from=str(best.path), effective_batch=hp["batch_size"], world_size=1, device=device,
        threads=threads, vocoder=info["vocoder_name"], init_from=info["init_from"],
        resumed=brain.resumed_from_epoch > 0, model_class=VOCODER_CLASS, segment_samples=hp["segment_size"],
    )


if __name__ == "__main__":
    main_guard(train)
