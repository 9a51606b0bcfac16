"""SpeechBrain HiFi-GAN vocoder as its own spx job (`task: tts`, `model.family: hifigan`), in the form of SpeechBrain's
LJSpeech `TTS/vocoder/hifigan` recipe: `HifiganGenerator` + `HifiganDiscriminator` (multi-period + multi-scale),
GeneratorLoss (mel L1 x 45 + MSE adversarial + feature matching x 10) and DiscriminatorLoss (MSE), one optimizer each,
trained by a Brain subclass (steps/vocoder_train.py) on random crops of the manifests' audio (the text is not used).

The mel the generator hears is exactly the one spx's SpeechBrain Tacotron2 / FastSpeech2 make (torchaudio slaney mel of
the magnitude STFT, natural log with a 1e-5 floor, the spec's STFT), so their `tts.vocoder` can name this run dir.
The test step is copy synthesis: each test recording -> its mel -> the exported generator, timed by the shared
synthesis protocol and scored like any TTS run.

render writes run_dir/native/:
  tts_hparams.yaml         generated hyperpyyaml of the training recipe (loaded only by the child processes)
  export_hyperparams.yaml  the hyperparams.yaml of the exported folder (generator + mel settings + Pretrainer), which
                           tts_train copies beside the best generator.ckpt into checkpoints/export/, the folder
                           `speechbrain.inference.vocoders.HIFIGAN.from_hparams(source=...)` loads
  tts_info.json            model, mel settings, crop length
Steps: tts_train (steps/vocoder_train.py), tts_synth (steps/vocoder_synth.py). No torch or speechbrain here.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from spx.adapters.common import hifigan
from spx.adapters.speechbrain.helpers import (OPTIMIZERS, VOCODER_CLASS, epochs_and_checkpointer, exported_vocoder,
                                              mel_settings, refuse_duration_teacher, train_and_synth,
                                              warmup_annealing, yaml_value)
from spx.errors import SpxError
from spx.manifests import read_manifest
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import atomic_write_json, atomic_write_text

TASK, NAME = "tts", "hifigan"
PRECISIONS = ("fp32",)  # TTS trains in fp32 in spx, on any device
CPU_PRECISIONS = ("fp32",)
FREEZE = False  # every weight trains; init_from alone fine-tunes
INIT_FROM = "an spx speechbrain hifigan run dir, its checkpoints/export folder, or a generator.ckpt"
INFERENCE = None  # steps/vocoder_synth.py copy-synthesizes the test sets; there is no load_synthesizer yet
EXPORT = None
EXPORT_REFUSED = ("a HiFi-GAN run is a vocoder (mel in, waveform out) and spx export/serve take text: the generator "
                  "traces, but a vocoder export needs its own task (the recordings' mel frontend in, a copy-synthesis "
                  "parity check, an endpoint taking audio or mels); name this run in tts.vocoder of a fastspeech2 "
                  "run and export that run: its export carries this generator as its vocoder graph")

GENERATOR = "speechbrain.lobes.models.HifiGAN.HifiganGenerator"
EXPORT_DIR = "checkpoints/export"
INFERENCE_PADDING = 5  # mel frames HifiganGenerator.inference replicates at each end (SpeechBrain's default)
# the shortest input HifiganDiscriminator takes (measured, speechbrain 1.1.2): its period-11 discriminator folds the
# crop into ceil(T / 11) rows, then four stride-3 convs whose reflect padding needs >= 3 rows left
MIN_DISCRIMINATOR_SAMPLES = 1783


def segment_samples(spec: Spec) -> int:
    return hifigan.segment_samples(spec, mel_settings(spec)["hop_length"])


def check(spec: Spec) -> None:
    """Raise SpxError before anything runs when SpeechBrain's HiFi-GAN cannot render this job."""
    m, t, mel = spec.model, spec.training, mel_settings(spec)
    refuse_duration_teacher(spec)
    hifigan.check_hifigan_job(spec, mel, "SpeechBrain")
    if segment_samples(spec) < MIN_DISCRIMINATOR_SAMPLES:
        shortest = math.ceil(MIN_DISCRIMINATOR_SAMPLES / mel["hop_length"]) * mel["hop_length"] / spec.tts.sample_rate
        raise SpxError(f"model.segment_seconds {m.segment_seconds} gives {segment_samples(spec)}-sample crops (whole "
                       f"hops); SpeechBrain's HifiganDiscriminator needs at least {MIN_DISCRIMINATOR_SAMPLES} samples "
                       "(its period-11 discriminator runs out of rows on shorter input)", where="model.segment_seconds",
                       hint=f"use segment_seconds >= {shortest:.3f} at this sample rate and hop")
    if t.grad_accumulation != 1:
        raise SpxError("the SpeechBrain HiFi-GAN step updates the discriminator, then the generator on the "
                       "discriminator it just updated, once per batch: there is no accumulation across batches",
                       where="training.grad_accumulation",
                       hint="set training.grad_accumulation: 1 (raise batch_size instead)")
    if spec.init_from:
        resolve_init_from(spec.init_from)


def resolve_init_from(init_from: str) -> str:
    """The generator.ckpt to start from: an spx speechbrain hifigan run dir, its export folder, or a generator.ckpt."""
    p = Path(init_from).expanduser()
    if (p / "spec.yaml").is_file() or (p / "train_summary.json").is_file():
        p = exported_vocoder(p, init_from, "init_from")
    if p.is_dir():
        p = p / "generator.ckpt"
    if not p.is_file():
        raise SpxError(f"init_from {init_from!r}: no SpeechBrain HiFi-GAN generator checkpoint at {p}",
                       where="init_from", hint="give an spx speechbrain hifigan run dir, its checkpoints/export "
                                               "folder, or a generator.ckpt")
    return str(p.resolve())


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    t = spec.training
    splits = {split: audio_rows(spec, split) for split in ("train", "valid")}
    for split, rows in splits.items():
        if not rows:
            raise SpxError(f"no usable {split} utterances (empty manifest, or all shorter than the "
                           f"{segment_samples(spec) / spec.tts.sample_rate:.3f} s training crop or filtered by "
                           "data.min/max_duration)", where=spec.data.train if split == "train" else spec.data.valid,
                           hint="check the manifest, model.segment_seconds and data.min_duration/max_duration")
    per_epoch = math.ceil(len(splits["train"]) / t.batch_size)
    # max_steps overrides epochs: enough epochs to reach it, the Brain stops at the step itself
    epochs = math.ceil(t.max_steps / per_epoch) if t.max_steps else t.epochs
    total_steps = t.max_steps or per_epoch * epochs
    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    atomic_write_text(native / "tts_hparams.yaml", _train_hparams(spec, run_dir, epochs, total_steps))
    atomic_write_text(native / "export_hyperparams.yaml", _export_hyperparams(spec, run_dir))
    atomic_write_json(native / "tts_info.json", {
        "model": f"SpeechBrain {VOCODER_CLASS} + HifiganDiscriminator (copy synthesis of the test recordings)",
        "model_class": VOCODER_CLASS, "mel": mel_settings(spec), "segment_samples": segment_samples(spec),
        "vocoder": None, "vocoder_name": f"hifigan (this run, SpeechBrain {VOCODER_CLASS})",
        "init_from": resolve_init_from(spec.init_from) if spec.init_from else None,
        "exported_model": str(run_dir / EXPORT_DIR), "total_steps": total_steps,
        "backend_overrides": spec.backends.get("speechbrain", {}),
    })
    return train_and_synth(run_dir, "vocoder")


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {}


def audio_rows(spec: Spec, split: str) -> list:
    """The utterances a split trains or validates on: long enough for one crop (and, for train, within
    data.min/max_duration). The same list in render and in the train step."""
    seconds = segment_samples(spec) / spec.tts.sample_rate
    lo = max(seconds, spec.data.min_duration or 0.0) if split == "train" else seconds
    hi = spec.data.max_duration if split == "train" else None
    path = spec.data.train if split == "train" else spec.data.valid
    return [u for u in read_manifest(path) if u.duration >= lo and (hi is None or u.duration <= hi)]


def _mel_block(mel: dict[str, Any]) -> str:
    """Mel settings + the mel function: SpeechBrain HiFiGAN's mel_spectrogram with the arguments spx's Tacotron2 and
    FastSpeech2 give theirs (same torchaudio transform, same log compression)."""
    return f"""sample_rate: {mel['sample_rate']}
n_mel_channels: {mel['n_mels']}
n_fft: {mel['n_fft']}
win_length: {mel['win_length']}
hop_length: {mel['hop_length']}
mel_fmin: {yaml_value(mel['f_min'])}
mel_fmax: {yaml_value(mel['f_max'])}
mel_spectrogram: !name:speechbrain.lobes.models.HifiGAN.mel_spectrogram
  sample_rate: !ref <sample_rate>
  hop_length: !ref <hop_length>
  win_length: !ref <win_length>
  n_fft: !ref <n_fft>
  n_mels: !ref <n_mel_channels>
  f_min: !ref <mel_fmin>
  f_max: !ref <mel_fmax>
  power: 1
  normalized: False
  norm: slaney
  mel_scale: slaney
  compression: True
"""


def _generator_block(spec: Spec) -> str:
    m = spec.model
    kernels, dilations = hifigan.RESBLOCKS[m.resblock]
    return f"""generator: !new:{GENERATOR}
  in_channels: !ref <n_mel_channels>
  out_channels: 1
  resblock_type: "{m.resblock}"
  resblock_dilation_sizes: {yaml_value(dilations)}
  resblock_kernel_sizes: {yaml_value(kernels)}
  upsample_kernel_sizes: {yaml_value([2 * r for r in m.upsample_rates])}
  upsample_initial_channel: {m.upsample_initial_channel}
  upsample_factors: {yaml_value(list(m.upsample_rates))}
  inference_padding: {INFERENCE_PADDING}
  cond_channels: 0
  conv_post_bias: True
"""


def _train_hparams(spec: Spec, rd: RunDir, epochs: int, total_steps: int) -> str:
    t, o = spec.training, spec.training.optimizer
    opt = OPTIMIZERS[o.name]
    opt_args = "  lr: !ref <lr>\n  weight_decay: !ref <weight_decay>\n"
    opt_args += "  momentum: 0.9\n" if o.name == "sgd" else "  betas: !ref <betas>\n"

    return f"""# Generated by spx from {rd / 'spec.yaml'}: SpeechBrain HiFi-GAN vocoder (hyperpyyaml),
# in the form of SpeechBrain's LJSpeech recipe TTS/vocoder/hifigan/hparams/train.yaml. Edit the spec, not this file.
seed: {t.seed}
epochs: {epochs}
optimizer_step_limit: {yaml_value(t.max_steps)}  # Brain run option: one step = one discriminator + one generator update
max_grad_norm: {yaml_value(t.grad_clip if t.grad_clip is not None else float('inf'))}  # each network clipped on its own
noprogressbar: True
batch_size: {t.batch_size}
keep_checkpoints: {t.keep_checkpoints}
segment_size: {segment_samples(spec)}  # random crop per training example (validation: the middle crop of each file)
lr: {yaml_value(o.lr)}
weight_decay: {yaml_value(o.weight_decay)}
betas: {yaml_value(list(o.betas))}

# ---- the mel the generator hears (= the acoustic models')
{_mel_block(mel_settings(spec))}
# ---- model (spec model.upsample_initial_channel / upsample_rates / resblock; kernels 2 x each rate)
{_generator_block(spec)}
discriminator: !new:speechbrain.lobes.models.HifiGAN.HifiganDiscriminator  # periods 2,3,5,7,11 + 3 scales (fixed)

modules:
  generator: !ref <generator>
  discriminator: !ref <discriminator>

# ---- losses (SpeechBrain's recipe weights); the unweighted mel L1 is the valid loss that ranks checkpoints
l1_spec_loss: !new:speechbrain.lobes.models.HifiGAN.L1SpecLoss
  sample_rate: !ref <sample_rate>
  hop_length: !ref <hop_length>
  win_length: !ref <win_length>
  n_mel_channels: !ref <n_mel_channels>
  n_fft: !ref <n_fft>
  mel_fmin: !ref <mel_fmin>
  mel_fmax: !ref <mel_fmax>
  mel_normalized: False
  power: 1
  norm: slaney
  mel_scale: slaney
  dynamic_range_compression: True
generator_loss: !new:speechbrain.lobes.models.HifiGAN.GeneratorLoss
  stft_loss: null
  stft_loss_weight: 0
  mseg_loss: !new:speechbrain.lobes.models.HifiGAN.MSEGLoss
  mseg_loss_weight: 1
  feat_match_loss: !new:speechbrain.lobes.models.HifiGAN.MelganFeatureLoss
  feat_match_loss_weight: 10
  l1_spec_loss: !ref <l1_spec_loss>
  l1_spec_loss_weight: 45
discriminator_loss: !new:speechbrain.lobes.models.HifiGAN.DiscriminatorLoss
  msed_loss: !new:speechbrain.lobes.models.HifiGAN.MSEDLoss

# ---- one optimizer and one schedule per network (training.optimizer / scheduler), stepped once per batch
opt_class_generator: !name:{opt}
{opt_args}opt_class_discriminator: !name:{opt}
{opt_args}# linear warmup, then {t.scheduler.name}; per update, checkpointed
{warmup_annealing('lr_annealing_generator', spec, total_steps)}{warmup_annealing('lr_annealing_discriminator', spec, total_steps)}
{epochs_and_checkpointer(rd, ["generator", "discriminator", "lr_annealing_generator", "lr_annealing_discriminator"])}"""


def _export_hyperparams(spec: Spec, rd: RunDir) -> str:
    return f"""# SpeechBrain HiFi-GAN vocoder trained by spx ({rd}). Load it with
#   speechbrain.inference.vocoders.HIFIGAN.from_hparams(source=<this folder>)
# Its input: mel_spectrogram below (log of the slaney mel of |STFT|, 1e-5 floor), shape (batch, n_mel_channels, frames).
{_mel_block(mel_settings(spec))}
{_generator_block(spec)}
modules:
  generator: !ref <generator>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
  loadables:
    generator: !ref <generator>
"""
