"""SpeechBrain FastSpeech2 with its internal aligner (`task: tts`, `model.family: fastspeech2`): the spec becomes a
SpeechBrain-native recipe in the form of SpeechBrain's LJSpeech `train_internal_alignment` recipe, on characters.

render writes run_dir/native/:
  tts_hparams.yaml  generated hyperpyyaml: speechbrain.lobes.models.FastSpeech2.FastSpeech2WithAlignment (encoder /
                    aligner / variance predictors / decoder / postnet; spx's subclass only adds the beta-binomial
                    alignment prior, steps/tts_fastspeech2_model.py), its mel_spectrogram (log-mel + frame energy),
                    the pitch settings, LossWithAlignment, TextMelCollateWithAlignment, optimizer, warmup + cosine
                    schedule, EpochCounter, Checkpointer (resume); loaded only by the child processes
  tts_info.json     model, symbols, mel settings, vocoder, init_from checkpoint
Steps: tts_prepare (pitch + energy targets from the audio, native/sup_data, native/pitch_stats.json), tts_train,
tts_synth (steps/tts_fastspeech2_*.py); spx export: steps/tts_export.py. Nothing here imports torch or speechbrain.
"""
from __future__ import annotations

import math
from typing import Any

from spx.adapters.speechbrain.helpers import (OPTIMIZERS, STEPS, SYMBOLS, acoustic_run_keys, check_tts_training,
                                              epochs_and_checkpointer, mel_settings, resolve_checkpoint,
                                              resolve_vocoder, step, train_and_synth, vocoder_info, warmup_annealing)
from spx.errors import SpxError
from spx.manifests import read_manifest
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import atomic_write_json, atomic_write_text

TASK, NAME = "tts", "fastspeech2"
PRECISIONS = ("fp32",)  # TTS trains in fp32 in spx, on any device
CPU_PRECISIONS = ("fp32",)
FREEZE = False  # every weight trains; init_from alone fine-tunes
INIT_FROM = "an spx speechbrain fastspeech2 run dir, a CKPT+... folder, or its model.ckpt"
INFERENCE = f"{STEPS}.tts_fastspeech2_synth"  # load_synthesizer (spx serve on a run dir)
EXPORT = f"{STEPS}.tts_export"  # spx export: the acoustic model as ONNX/TorchScript (+int8), text.json, vocoder

# SpeechBrain's FastSpeech2WithAlignment + the beta-binomial alignment prior its aligner takes (see that module)
# the encoder's and predictors' kernel-3 convolutions pad by reflection, one position each side: one symbol is too few
MIN_SYMBOLS = 2
MODEL_CLASS = f"{STEPS}.tts_fastspeech2_model.FastSpeech2WithAlignmentPrior"
# pitch search range of SpeechBrain's FastSpeech2 recipes (min_f0/max_f0, the torchaudio pyin values C2..C7)
PITCH_FMIN, PITCH_FMAX = 65.0, 2093.0


def check(spec: Spec) -> None:
    """Raise SpxError before anything runs when SpeechBrain's FastSpeech2 cannot render this job (the Spec itself
    checks what holds on every backend: heads dividing d_model, n_fft covering the window)."""
    if spec.tts.duration_teacher is not None:
        raise SpxError("tts.duration_teacher is set, but SpeechBrain's FastSpeech2WithAlignment learns its durations "
                       "with its internal aligner and takes no teacher", where="tts.duration_teacher",
                       hint="remove tts.duration_teacher for the speechbrain backend (it is for ESPnet FastSpeech2)")
    if spec.tts.multi_speaker:
        raise SpxError("tts.multi_speaker is not available for SpeechBrain FastSpeech2: FastSpeech2WithAlignment "
                       "has no speaker input", where="tts.multi_speaker",
                       hint="set tts.multi_speaker: false, or use family tacotron2 (espnet/speechbrain)")
    if spec.resources.devices * spec.resources.nodes > 1:
        raise SpxError("SpeechBrain FastSpeech2 runs as one process in spx", where="resources.devices",
                       hint="set resources.devices: 1 and resources.nodes: 1")
    resolve_vocoder(spec)
    if spec.init_from:
        resolve_checkpoint(spec.init_from)
    check_tts_training(spec)


def training_rows(spec: Spec) -> list:
    """The training utterances (data.min/max_duration applied), the same list in render, prepare and train."""
    lo, hi = spec.data.min_duration, spec.data.max_duration
    return [u for u in read_manifest(spec.data.train)
            if (lo is None or u.duration >= lo) and (hi is None or u.duration <= hi)]


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    vocoder = resolve_vocoder(spec)
    init_from = resolve_checkpoint(spec.init_from) if spec.init_from else None
    train = training_rows(spec)
    if not train:
        raise SpxError("no training utterances (empty manifest, or all filtered by data.min/max_duration)",
                       where=spec.data.train, hint="check the manifest and data.min_duration/max_duration")
    t = spec.training
    per_epoch = math.ceil(len(train) / t.batch_size / t.grad_accumulation)
    total_steps = t.max_steps or per_epoch * (t.epochs or 1)
    atomic_write_text(native / "tts_hparams.yaml", _hparams(spec, run_dir, len(SYMBOLS) + 1, total_steps))
    atomic_write_json(native / "tts_info.json", {
        "model": "FastSpeech2WithAlignment", "symbols": SYMBOLS, "speakers": {}, "mel": mel_settings(spec),
        **vocoder_info(spec, vocoder), "init_from": init_from, "backend_overrides": spec.backends.get("speechbrain", {}),
    })
    return [step("tts_prepare", "tts_fastspeech2_prepare", run_dir, log="logs/tts_prepare.log"),
            *train_and_synth(run_dir, "tts_fastspeech2")]


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {}


def _hparams(spec: Spec, rd: RunDir, n_symbols: int, total_steps: int) -> str:
    m, t, mel = spec.model, spec.training, mel_settings(spec)
    opt = OPTIMIZERS[t.optimizer.name]
    opt_args = "  lr: !ref <lr>\n  weight_decay: !ref <weight_decay>\n"
    opt_args += "  momentum: 0.9\n" if t.optimizer.name == "sgd" else \
        f"  betas: [{t.optimizer.betas[0]}, {t.optimizer.betas[1]}]\n"
    return f"""# Generated by spx from {rd / 'spec.yaml'}: SpeechBrain FastSpeech2, internal alignment (hyperpyyaml),
# in the form of SpeechBrain's LJSpeech recipe hparams/train_internal_alignment.yaml, on characters. Edit the spec.
{acoustic_run_keys(spec)}lr: {t.optimizer.lr}
weight_decay: {t.optimizer.weight_decay}

# ---- audio: log-mel (slaney, natural log) and frame energy (min-max normalized per utterance)
sample_rate: {mel['sample_rate']}
n_mels: {mel['n_mels']}
n_fft: {mel['n_fft']}
win_length: {mel['win_length']}
hop_length: {mel['hop_length']}
mel_spectrogram: !name:speechbrain.lobes.models.FastSpeech2.mel_spectrogram
  sample_rate: !ref <sample_rate>
  hop_length: !ref <hop_length>
  win_length: !ref <win_length>
  n_fft: !ref <n_fft>
  n_mels: !ref <n_mels>
  f_min: {mel['f_min']}
  f_max: {mel['f_max']}
  power: 1
  normalized: False
  min_max_energy_norm: True
  norm: slaney
  mel_scale: slaney
  compression: True
# pitch targets (tts_prepare): torchaudio detect_pitch_frequency, one value per mel frame, normalized with the
# training set's mean/std (native/pitch_stats.json)
pitch_fmin: {PITCH_FMIN}
pitch_fmax: {PITCH_FMAX}
pitch_median_win: 3

# ---- model (spec model.d_model / encoder_layers / decoder_layers / heads)
n_symbols: {n_symbols}  # clean_transcript characters + padding (id 0)
padding_idx: 0
d_model: {m.d_model}
d_ffn: {4 * m.d_model}  # feed-forward convolution width, 4 x d_model as in NeMo FastPitch's FFT blocks
ffn_cnn_kernel_size_list: [3, 3]
transformer_dropout: 0.1
variance_predictor_dropout: 0.1
postnet_n_convolutions: 5
postnet_dropout: 0.2
alignment_prior_scaling: 1.0  # beta-binomial prior on the aligner; 0 = SpeechBrain's aligner without a prior
model: !new:{MODEL_CLASS}
  alignment_prior_scaling: !ref <alignment_prior_scaling>
  enc_num_layers: {m.encoder_layers}
  enc_num_head: {m.heads}
  enc_d_model: !ref <d_model>
  enc_ffn_dim: !ref <d_ffn>
  enc_k_dim: !ref <d_model>
  enc_v_dim: !ref <d_model>
  enc_dropout: !ref <transformer_dropout>
  in_query_channels: !ref <n_mels>
  in_key_channels: !ref <d_model>
  attn_channels: !ref <n_mels>
  temperature: 0.0005
  dec_num_layers: {m.decoder_layers}
  dec_num_head: {m.heads}
  dec_d_model: !ref <d_model>
  dec_ffn_dim: !ref <d_ffn>
  dec_k_dim: !ref <d_model>
  dec_v_dim: !ref <d_model>
  dec_dropout: !ref <transformer_dropout>
  normalize_before: True
  ffn_type: 1dcnn
  ffn_cnn_kernel_size_list: !ref <ffn_cnn_kernel_size_list>
  n_char: !ref <n_symbols>
  n_mels: !ref <n_mels>
  postnet_embedding_dim: !ref <d_model>
  postnet_kernel_size: 5
  postnet_n_convolutions: !ref <postnet_n_convolutions>
  postnet_dropout: !ref <postnet_dropout>
  padding_idx: !ref <padding_idx>
  dur_pred_kernel_size: 3
  pitch_pred_kernel_size: 3
  energy_pred_kernel_size: 3
  variance_predictor_dropout: !ref <variance_predictor_dropout>

modules:
  model: !ref <model>

# SpeechBrain recipe weights: mel + postnet mel + SSIM + log-duration + pitch + energy + forward-sum aligner + binary
criterion: !new:speechbrain.lobes.models.FastSpeech2.LossWithAlignment
  log_scale_durations: True
  ssim_loss_weight: 1.0
  duration_loss_weight: 1.0
  pitch_loss_weight: 1.0
  energy_loss_weight: 1.0
  mel_loss_weight: 1.0
  postnet_mel_loss_weight: 1.0
  aligner_loss_weight: 1.0
  binary_alignment_loss_weight: 0.2
  binary_alignment_loss_warmup_epochs: 1
  binary_alignment_loss_max_epochs: 80

collate_fn: !new:speechbrain.lobes.models.FastSpeech2.TextMelCollateWithAlignment

opt_class: !name:{opt}
{opt_args}
# linear warmup, then {t.scheduler.name} (training.scheduler), stepped once per optimizer update; checkpointed
{warmup_annealing('lr_annealing', spec, total_steps)}
{epochs_and_checkpointer(rd, ["model", "lr_annealing"])}"""
