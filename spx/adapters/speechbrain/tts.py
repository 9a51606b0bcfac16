"""SpeechBrain TTS (Tacotron2; FastSpeech2 in tts_fastspeech2.py; the HiFi-GAN vocoder job in vocoder.py): the spec
becomes a SpeechBrain-native recipe (hyperpyyaml + a Brain subclass).

render_tts writes run_dir/native/:
  tts_hparams.yaml  generated hyperpyyaml: speechbrain.lobes.models.Tacotron2.Tacotron2 (or spx's
                    SpeakerTacotron2 with a speaker table when tts.multi_speaker), Tacotron2 Loss (guided
                    attention), optimizer, EpochCounter, Checkpointer (resume); loaded only by the children
  tts_info.json     symbols, speaker ids, mel settings, vocoder, init_from checkpoint
Steps: tts_train (spx.adapters.speechbrain.tts_train) and tts_synth (spx.adapters.speechbrain.tts_synth).
Nothing here imports torch or speechbrain.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from spx.adapters.base import collect_normalized
from spx.adapters.common.spec_helpers import speaker_table
from spx.errors import SpxError
from spx.manifests import read_manifest
from spx.rundir import RunDir, Step, require_same_job
from spx.spec import Spec
from spx.yamlio import atomic_write_json, atomic_write_text

TTS_FAMILIES = {"tacotron2", "fastspeech2", "hifigan"}  # hifigan: a vocoder job
# the characters clean_transcript keeps: one fixed inventory, so a checkpoint fine-tunes on any corpus
SYMBOLS = list(" '0123456789abcdefghijklmnopqrstuvwxyz")


def check_tts(spec: Spec) -> None:
    """Raise SpxError before anything runs when SpeechBrain cannot render this TTS job."""
    m = spec.model
    if m.family not in TTS_FAMILIES:
        raise SpxError(f"backend 'speechbrain' has no {m.family!r} TTS model in spx (it has: tacotron2, fastspeech2, "
                       "hifigan = a vocoder job)", where="model.family",
                       hint="use family: tacotron2 or fastspeech2, or another backend")
    if spec.tts.duration_teacher is not None and m.family != "fastspeech2":  # fastspeech2 says why in its own check
        raise SpxError(f"tts.duration_teacher is set, but a SpeechBrain {m.family} job takes no duration teacher",
                       where="tts.duration_teacher", hint="remove tts.duration_teacher (it gives ESPnet FastSpeech2 its "
                                                          "durations)")
    if m.family == "hifigan":
        from spx.adapters.speechbrain.vocoder import check_vocoder_job

        check_vocoder_job(spec)
        return
    if m.family == "fastspeech2":
        from spx.adapters.speechbrain.tts_fastspeech2 import check_fastspeech2

        check_fastspeech2(spec)
        _check_training(spec, "speechbrain")
        return
    if m.embedding_dim != m.encoder_dim:
        raise SpxError(f"SpeechBrain's Tacotron2 uses one width for the character embedding and the encoder, "
                       f"but model.embedding_dim={m.embedding_dim} and model.encoder_dim={m.encoder_dim}",
                       where="model.embedding_dim", hint="set both to the same value")
    if m.reduction_factor != 1:
        raise SpxError(f"SpeechBrain's Tacotron2 decodes one frame per step; model.reduction_factor="
                       f"{m.reduction_factor} is not supported there", where="model.reduction_factor",
                       hint="use reduction_factor: 1 to compare across backends")
    _check_training(spec, "speechbrain")
    resolve_vocoder(spec)  # before anything is written


def _check_training(spec: Spec, backend: str) -> None:
    t = spec.training
    if t.batch_size is None:
        raise SpxError("TTS jobs batch by utterances", where="training.batch_size", hint="set training.batch_size")
    if t.scheduler.name not in ("constant", "cosine"):
        raise SpxError(f"training.scheduler {t.scheduler.name!r} is not mapped for TTS on {backend}",
                       where="training.scheduler.name", hint="use cosine (with warmup_steps) or constant")
    if t.precision != "fp32":
        raise SpxError("TTS jobs train in fp32 in spx", where="training.precision", hint="set precision: fp32")


def mel_settings(spec: Spec) -> dict[str, Any]:
    sr = spec.tts.sample_rate
    return {"sample_rate": sr, "n_mels": spec.tts.n_mels, "n_fft": spec.features.n_fft,
            "win_length": int(round(spec.features.win_length_ms * sr / 1000)),
            "hop_length": int(round(spec.features.hop_length_ms * sr / 1000)), "f_min": 0.0, "f_max": sr / 2}


def resolve_vocoder(spec: Spec) -> str | None:
    """The SpeechBrain HiFi-GAN folder tts.vocoder names: a folder with hyperparams.yaml + generator.ckpt, or an spx
    speechbrain hifigan run dir (its exported folder; its mel settings are checked against this job's here)."""
    from spx.adapters.speechbrain.vocoder import check_vocoder_mels, exported_vocoder

    voc = spec.tts.vocoder
    if voc is None:
        return None
    p = Path(voc).expanduser()
    if (p / "spec.yaml").is_file() or (p / "train_summary.json").is_file():  # an spx run dir
        p = exported_vocoder(p, voc, "tts.vocoder")
    if not (p / "hyperparams.yaml").exists():
        raise SpxError(f"tts.vocoder {voc!r} is not a SpeechBrain HiFi-GAN folder (no hyperparams.yaml)",
                       where="tts.vocoder", hint="give a local SpeechBrain vocoder folder "
                       "(hyperparams.yaml + generator.ckpt), an spx speechbrain hifigan run dir, or leave tts.vocoder "
                       "unset for Griffin-Lim")
    check_vocoder_mels(spec, p)
    return str(p.resolve())


def vocoder_name(spec: Spec, vocoder: str | None) -> str:
    return vocoder or f"griffin-lim ({spec.tts.griffin_lim_iters} iters)"


def resolve_init_from(init_from: str) -> str:
    """A SpeechBrain Tacotron2 checkpoint: an spx run dir, a Checkpointer CKPT+ folder, or its model.ckpt."""
    p = Path(init_from).expanduser()
    if p.is_dir() and (p / "train_summary.json").exists():
        best = json.loads((p / "train_summary.json").read_text()).get("best_checkpoint")
        if not best:
            raise SpxError(f"init_from {p}: its train_summary.json names no best_checkpoint", where="init_from",
                           hint="train that run to the end first")
        p = Path(best)
    if p.is_dir():
        p = p / "model.ckpt"
    if not p.is_file():
        raise SpxError(f"init_from {init_from!r}: no SpeechBrain Tacotron2 checkpoint found at {p}", where="init_from",
                       hint="give an spx speechbrain TTS run dir, a CKPT+... folder, or its model.ckpt")
    return str(p.resolve())


def _hparams(spec: Spec, rd: RunDir, n_speakers: int, max_decoder_steps: int) -> str:
    m, t, mel = spec.model, spec.training, mel_settings(spec)
    model_class = "spx.adapters.speechbrain.tts_model.SpeakerTacotron2" if n_speakers else \
        "speechbrain.lobes.models.Tacotron2.Tacotron2"
    opt = {"adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD"}[t.optimizer.name]
    opt_args = f"  lr: {t.optimizer.lr}\n  weight_decay: {t.optimizer.weight_decay}\n"
    if t.optimizer.name != "sgd":
        opt_args += f"  betas: [{t.optimizer.betas[0]}, {t.optimizer.betas[1]}]\n"
    return f"""# Generated by spx from {rd / 'spec.yaml'}: SpeechBrain Tacotron2 (hyperpyyaml)
seed: {t.seed}
epochs: {t.epochs or 1000000}
max_steps: {json.dumps(t.max_steps)}
batch_size: {t.batch_size}
grad_clip: {json.dumps(t.grad_clip)}
keep_checkpoints: {t.keep_checkpoints}
scheduler: {t.scheduler.name}
warmup_steps: {t.scheduler.warmup_steps}
min_lr: {t.scheduler.min_lr}
lr: {t.optimizer.lr}
sample_rate: {mel['sample_rate']}
n_mels: {mel['n_mels']}
n_symbols: {len(SYMBOLS) + 1}
n_speakers: {n_speakers}
gate_pos_weight: 5.0  # stop-token BCE positive weight (ESPnet tacotron2 bce_pos_weight)

model: !new:{model_class}
{f"  n_speakers: !ref <n_speakers>{chr(10)}" if n_speakers else ""}  mask_padding: True
  n_mel_channels: !ref <n_mels>
  n_symbols: !ref <n_symbols>
  symbols_embedding_dim: {m.embedding_dim}
  encoder_kernel_size: 5
  encoder_n_convolutions: {m.encoder_layers}
  encoder_embedding_dim: {m.encoder_dim}
  attention_rnn_dim: {m.decoder_rnn_dim}
  attention_dim: {m.attention_dim}
  attention_location_n_filters: 32
  attention_location_kernel_size: 15
  n_frames_per_step: {m.reduction_factor}
  decoder_rnn_dim: {m.decoder_rnn_dim}
  prenet_dim: {m.prenet_dim}
  max_decoder_steps: {max_decoder_steps}
  gate_threshold: 0.5
  p_attention_dropout: 0.1
  p_decoder_dropout: 0.1
  postnet_embedding_dim: {m.postnet_dim}
  postnet_kernel_size: 5
  postnet_n_convolutions: {m.postnet_layers}
  decoder_no_early_stopping: False

modules:
  model: !ref <model>

criterion: !new:speechbrain.lobes.models.Tacotron2.Loss
  gate_loss_weight: 1.0
  guided_attention_sigma: 0.4
  guided_attention_weight: 1.0

opt_class: !name:{opt}
{opt_args}
epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter
  limit: !ref <epochs>

checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
  checkpoints_dir: {json.dumps(str(rd / 'checkpoints'))}
  recoverables:
    model: !ref <model>
    counter: !ref <epoch_counter>
"""


def render_tts(spec: Spec, run_dir: RunDir) -> list[Step]:
    if spec.model.family == "fastspeech2":
        from spx.adapters.speechbrain.tts_fastspeech2 import render_fastspeech2

        return render_fastspeech2(spec, run_dir)
    if spec.model.family == "hifigan":
        from spx.adapters.speechbrain.vocoder import render_vocoder_job

        return render_vocoder_job(spec, run_dir)
    check_tts(spec)
    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    speakers = speaker_table(spec, "Tacotron2")
    vocoder = resolve_vocoder(spec)
    if spec.init_from:
        require_same_job(spec.init_from, "speechbrain", spec.model.family)
    init_from = resolve_init_from(spec.init_from) if spec.init_from else None
    mel = mel_settings(spec)
    train = read_manifest(spec.data.train)
    if not train:
        raise SpxError("the training manifest is empty", where=spec.data.train)
    # the decoder stops on its gate; this bounds an untrained one at 3x the longest training utterance
    frames_per_second = mel["sample_rate"] / mel["hop_length"]
    max_decoder_steps = int(3 * max(u.duration for u in train) * frames_per_second) + 10
    atomic_write_text(native / "tts_hparams.yaml", _hparams(spec, run_dir, len(speakers), max_decoder_steps))
    atomic_write_json(native / "tts_info.json", {
        "symbols": SYMBOLS, "speakers": speakers, "mel": mel, "vocoder": vocoder,
        "vocoder_name": vocoder_name(spec, vocoder), "griffin_lim_iters": spec.tts.griffin_lim_iters,
        "init_from": init_from, "max_decoder_steps": max_decoder_steps,
        "backend_overrides": spec.backends.get("speechbrain", {}),
    })
    py = sys.executable
    return [
        Step("tts_train", [py, "-m", "spx.adapters.speechbrain.tts_train", str(run_dir)], log="train.log"),
        Step("tts_synth", [py, "-m", "spx.adapters.speechbrain.tts_synth", str(run_dir)], timed=True),
    ]


def collect_tts(run_dir: RunDir) -> dict[str, Any]:
    return collect_normalized(run_dir)
