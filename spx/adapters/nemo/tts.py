"""NeMo TTS (FastPitch with its internal aligner): the spec (`task: tts`, `model.family: fastspeech2`) becomes NeMo's
own FastPitch recipe: one OmegaConf config in the layout of NeMo's `fastpitch_align_*.yaml` (`learn_alignment: true`,
`nemo.collections.tts.data.dataset.TTSDataset` with `align_prior_matrix` + `pitch` supplementary data, NeMo's
`EnglishCharsTokenizer`: characters, no g2p, nothing downloaded), trained by `FastPitchModel` on a Lightning Trainer
with exp_manager, then synthesized with Griffin-Lim (or a HiFiGAN `.nemo` named by tts.vocoder).

render_tts writes run_dir/native/:
  tts_config.yaml   the FastPitch config (model / trainer / exp_manager / spx); pitch_mean/pitch_std are filled in by
                    the tts_prepare step from the training data
  tts_train.json, tts_valid.json   NeMo TTS manifests (audio_filepath, duration, text, normalized_text: cleaned text)
  sup_data/         NeMo's supplementary data dir (pitch contours, cached by tts_prepare)
  tts_info.json     mel settings, vocoder, init_from (what collect/dispatch look for)
Steps: tts_prepare, tts_train, tts_synth (spx.adapters.nemo.tts_*). Nothing here imports torch or NeMo.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from spx.adapters.base import collect_normalized
from spx.adapters.common.child import clean_transcript
from spx.errors import SpxError
from spx.manifests import read_manifest
from spx.rundir import RunDir, Step, require_same_job
from spx.spec import Spec
from spx.yamlio import atomic_write_json, atomic_write_text, read_json

TTS_FAMILIES = {"fastspeech2", "hifigan"}
CONFIG = "native/tts_config.yaml"
INFO = "native/tts_info.json"
# spec scheduler -> NeMo scheduler (as for ASR); TTS maps only these two
SCHEDULERS = {"cosine": "CosineAnnealing", "constant": "WarmupPolicy"}
# librosa.pyin's range as in NeMo's FastPitch recipes (C2..C7)
PITCH_FMIN, PITCH_FMAX = 65.40639132514966, 2093.004522404789
# the characters NeMo's EnglishCharsTokenizer speaks (a-z, apostrophe, space, punctuation); clean_transcript may keep
# digits, which it drops
TOKENIZER = "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers.EnglishCharsTokenizer"


def mel_settings(spec: Spec) -> dict[str, Any]:
    sr = spec.tts.sample_rate
    return {"sample_rate": sr, "n_mels": spec.tts.n_mels, "n_fft": spec.features.n_fft,
            "win_length": int(round(spec.features.win_length_ms * sr / 1000)),
            "hop_length": int(round(spec.features.hop_length_ms * sr / 1000)), "f_min": 0.0, "f_max": sr / 2}


def check_no_duration_teacher(spec: Spec) -> None:
    if spec.tts.duration_teacher is not None:
        raise SpxError("tts.duration_teacher is set, but NeMo FastPitch learns its durations with its internal aligner "
                       "(learn_alignment: true) and takes no teacher", where="tts.duration_teacher",
                       hint="remove tts.duration_teacher for the nemo backend (it is for ESPnet FastSpeech2)")


def check_tts(spec: Spec) -> None:
    """Raise SpxError before anything runs when NeMo's FastPitch cannot render this TTS job."""
    check_no_duration_teacher(spec)
    m, t, mel = spec.model, spec.training, mel_settings(spec)
    if m.family not in TTS_FAMILIES:
        raise SpxError(f"backend 'nemo' has no {m.family!r} TTS model in spx (it has: fastspeech2 = NeMo FastPitch, "
                       "hifigan = NeMo HifiGanModel vocoder; NeMo 3.0 ships no Tacotron2/VITS)", where="model.family",
                       hint="use family: fastspeech2 on nemo, or run tacotron2 on espnet/speechbrain")
    if spec.tts.multi_speaker:
        raise SpxError("tts.multi_speaker is not rendered for NeMo FastPitch in spx yet (it needs speaker ids in the "
                       "manifests and NeMo's speaker embedding table)", where="tts.multi_speaker",
                       hint="set tts.multi_speaker: false, or use the espnet/speechbrain tacotron2 backends")
    if mel["win_length"] != 4 * mel["hop_length"]:
        # NeMo computes pitch with librosa.pyin(frame_length=win_length) and pyin's default hop (frame_length // 4):
        # the pitch frames line up with the mel frames only when hop = win / 4
        raise SpxError(f"NeMo FastPitch needs features.hop_length_ms = win_length_ms / 4 (pitch frames must match mel "
                       f"frames), got win {spec.features.win_length_ms} ms, hop {spec.features.hop_length_ms} ms",
                       where="features.hop_length_ms", hint="e.g. win_length_ms: 64.0, hop_length_ms: 16.0")
    if t.batch_size is None:
        raise SpxError("TTS jobs batch by utterances", where="training.batch_size", hint="set training.batch_size")
    if t.scheduler.name not in SCHEDULERS:
        raise SpxError(f"training.scheduler {t.scheduler.name!r} is not mapped for TTS on nemo",
                       where="training.scheduler.name", hint="use cosine (with warmup_steps) or constant")
    if t.precision != "fp32":
        raise SpxError("TTS jobs train in fp32 in spx", where="training.precision", hint="set precision: fp32")
    if spec.freeze:
        raise SpxError("freeze is not mapped for NeMo FastPitch in spx", where="freeze", hint="remove freeze")
    if spec.resources.devices * spec.resources.nodes > 1:
        raise SpxError("NeMo FastPitch runs as one process in spx (its pitch cache is written on the fly)",
                       where="resources.devices", hint="set resources.devices: 1 and resources.nodes: 1")
    resolve_vocoder(spec)
    if spec.init_from:
        require_same_job(spec.init_from, "nemo", spec.model.family)
        resolve_init_from(spec.init_from)


def resolve_vocoder(spec: Spec) -> str | None:
    voc = spec.tts.vocoder
    if voc is None:
        return None
    p = Path(voc).expanduser()
    if p.is_dir():  # an spx nemo hifigan run: its train_summary.json names the exported .nemo
        summary = read_json(p / "train_summary.json") or {}
        exported = summary.get("exported_model")
        if summary.get("model_class") != "HifiGanModel" or not exported or not Path(exported).is_file():
            raise SpxError(f"tts.vocoder {voc!r} is not a finished spx nemo hifigan run (no exported HifiGanModel "
                           ".nemo in its train_summary.json)", where="tts.vocoder",
                           hint="finish that vocoder run first (spx run --backend nemo recipes/hifigan.yaml), or "
                                "give its checkpoints/model.nemo")
        p = Path(exported)
    if p.suffix != ".nemo" or not p.is_file():
        raise SpxError(f"tts.vocoder {voc!r} is not a NeMo HiFiGAN .nemo file", where="tts.vocoder",
                       hint="give a local HifiGanModel .nemo or an spx nemo hifigan run dir (its mel settings must "
                            "match tts.n_mels/sample_rate and features:), or leave tts.vocoder unset for Griffin-Lim")
    return str(p.resolve())


def vocoder_name(spec: Spec, vocoder: str | None) -> str:
    return vocoder or f"griffin-lim ({spec.tts.griffin_lim_iters} iters)"


def resolve_init_from(init_from: str, what: str = "FastPitch") -> str:
    """A FastPitch (or HiFi-GAN) .nemo, or an spx nemo TTS run dir (its train_summary.json names the exported .nemo)."""
    p = Path(init_from).expanduser()
    if p.is_dir():
        exported = (read_json(p / "train_summary.json") or {}).get("exported_model")
        if not exported or not Path(exported).is_file():
            raise SpxError(f"init_from {init_from!r}: the run has no exported .nemo model", where="init_from",
                           hint="finish that run first (tts_train exports checkpoints/model.nemo), or pass a .nemo file")
        return str(Path(exported).resolve())
    if p.suffix != ".nemo" or not p.is_file():
        raise SpxError(f"init_from {init_from!r} is not an existing {what} .nemo file", where="init_from",
                       hint="pass a .nemo (a nemo TTS run's checkpoints/model.nemo) or the spx nemo TTS run dir")
    return str(p.resolve())


def _manifest(src: str, dst: Path, lowercase: bool, lo: float | None = None, hi: float | None = None) -> int:
    rows = []
    for u in read_manifest(src):
        if (lo is not None and u.duration < lo) or (hi is not None and u.duration > hi):
            continue
        if u.offset:
            raise SpxError(f"row {u.id!r} is a segment (offset {u.offset}); NeMo's TTSDataset reads whole files",
                           where=src, hint="cut the segments into their own audio files first")
        text = clean_transcript(u.text or "", lowercase)
        if not text:
            raise SpxError(f"row {u.id!r} has no text to speak", where=src, hint="drop it or give it a transcript")
        rows.append({"audio_filepath": str(Path(u.audio).resolve()), "duration": u.duration, "text": text,
                     "normalized_text": text, "utt_id": u.id})
    if not rows:
        raise SpxError("no usable utterances (empty manifest, or all filtered by data.min/max_duration)", where=src,
                       hint="check the manifest and data.min_duration/max_duration")
    atomic_write_text(dst, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def native_config(spec: Spec, rd: RunDir) -> dict[str, Any]:
    m, t, mel = spec.model, spec.training, mel_settings(spec)
    native = rd / "native"
    d_head = m.d_model // m.heads

    def dataset(manifest: Path, train: bool) -> dict[str, Any]:
        ds: dict[str, Any] = {
            "_target_": "nemo.collections.tts.data.dataset.TTSDataset",
            "manifest_filepath": str(manifest),
            "sample_rate": mel["sample_rate"],
            "sup_data_path": str(native / "sup_data"),
            "sup_data_types": ["align_prior_matrix", "pitch"],
            "n_fft": mel["n_fft"],
            "win_length": mel["win_length"],
            "hop_length": mel["hop_length"],
            "window": "hann",
            "n_mels": mel["n_mels"],
            "lowfreq": 0,
            "highfreq": int(mel["f_max"]),
            "max_duration": spec.data.max_duration,
            "min_duration": spec.data.min_duration,
            "ignore_file": None,
            "trim": False,
            "pitch_fmin": "${model.pitch_fmin}",
            "pitch_fmax": "${model.pitch_fmax}",
            "pitch_norm": True,
            "pitch_mean": "${model.pitch_mean}",
            "pitch_std": "${model.pitch_std}",
            "use_beta_binomial_interpolator": True,
        }
        return {"dataset": ds, "dataloader_params": {"drop_last": False, "shuffle": train, "batch_size": t.batch_size,
                                                     "num_workers": t.num_workers}}

    optim: dict[str, Any] = {"name": t.optimizer.name, "lr": t.optimizer.lr, "weight_decay": t.optimizer.weight_decay,
                             "sched": {"name": SCHEDULERS[t.scheduler.name], "warmup_steps": t.scheduler.warmup_steps}}
    if t.optimizer.name == "sgd":
        optim["momentum"] = 0.9
    else:
        optim["betas"] = list(t.optimizer.betas)
    if t.scheduler.name == "cosine":
        optim["sched"]["min_lr"] = t.scheduler.min_lr

    model: dict[str, Any] = {
        "learn_alignment": True,
        "bin_loss_warmup_epochs": max(1, (t.epochs or 100) // 2),
        "n_speakers": 1,
        "max_token_duration": 75,
        "symbols_embedding_dim": m.d_model,
        "pitch_embedding_kernel_size": 3,
        "pitch_fmin": PITCH_FMIN,
        "pitch_fmax": PITCH_FMAX,
        "pitch_mean": None,  # filled in by tts_prepare from the training data (voiced frames)
        "pitch_std": None,
        "sample_rate": mel["sample_rate"],
        "n_mel_channels": mel["n_mels"],
        "n_window_size": mel["win_length"],
        "n_window_stride": mel["hop_length"],
        "n_fft": mel["n_fft"],
        "lowfreq": 0,
        "highfreq": int(mel["f_max"]),
        "window": "hann",
        "text_tokenizer": {"_target_": TOKENIZER, "punct": True, "apostrophe": True, "pad_with_space": True},
        "train_ds": dataset(native / "tts_train.json", True),
        "validation_ds": dataset(native / "tts_valid.json", False),
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "features": "${model.n_mel_channels}",
            "lowfreq": "${model.lowfreq}",
            "highfreq": "${model.highfreq}",
            "n_fft": "${model.n_fft}",
            "n_window_size": "${model.n_window_size}",
            "window_size": False,
            "n_window_stride": "${model.n_window_stride}",
            "window_stride": False,
            "pad_to": 1,
            "pad_value": 0,
            "sample_rate": "${model.sample_rate}",
            "window": "${model.window}",
            "normalize": None,
            "preemph": None,
            "dither": 0.0,
            "frame_splicing": 1,
            "log": True,
            "log_zero_guard_type": "add",
            "log_zero_guard_value": 1e-05,
            "mag_power": 1.0,
        },
        "input_fft": {
            "_target_": "nemo.collections.tts.modules.transformer.FFTransformerEncoder",
            "n_layer": m.encoder_layers, "n_head": m.heads, "d_model": m.d_model, "d_head": d_head,
            "d_inner": 4 * m.d_model, "kernel_size": 3, "dropout": 0.1, "dropatt": 0.1, "dropemb": 0.0,
            "d_embed": m.d_model,
        },
        "output_fft": {
            "_target_": "nemo.collections.tts.modules.transformer.FFTransformerDecoder",
            "n_layer": m.decoder_layers, "n_head": m.heads, "d_model": m.d_model, "d_head": d_head,
            "d_inner": 4 * m.d_model, "kernel_size": 3, "dropout": 0.1, "dropatt": 0.1, "dropemb": 0.0,
        },
        "alignment_module": {
            "_target_": "nemo.collections.tts.modules.aligner.AlignmentEncoder",
            "n_mel_channels": mel["n_mels"], "n_text_channels": m.d_model, "n_att_channels": mel["n_mels"],
        },
        "duration_predictor": {
            "_target_": "nemo.collections.tts.modules.fastpitch.TemporalPredictor",
            "input_size": m.d_model, "kernel_size": 3, "filter_size": m.d_model, "dropout": 0.1, "n_layers": 2,
        },
        "pitch_predictor": {
            "_target_": "nemo.collections.tts.modules.fastpitch.TemporalPredictor",
            "input_size": m.d_model, "kernel_size": 3, "filter_size": m.d_model, "dropout": 0.1, "n_layers": 2,
        },
        "optim": optim,
    }
    trainer, exp_manager = trainer_and_exp_manager(spec, rd)
    cfg: dict[str, Any] = {
        "name": spec.name,
        "model": model,
        "trainer": trainer,
        "exp_manager": exp_manager,
        "spx": {"seed": t.seed, "threads": spec.resources.threads, "exported_model": str(rd / "checkpoints/model.nemo"),
                "init_from": resolve_init_from(spec.init_from) if spec.init_from else None},
    }
    return cfg


def trainer_and_exp_manager(spec: Spec, rd: RunDir) -> tuple[dict[str, Any], dict[str, Any]]:
    """One Lightning process; exp_manager keeps the top-k checkpoints by val_loss and resumes from *-last.ckpt."""
    t = spec.training
    accelerator = {"auto": "auto", "cpu": "cpu", "gpu": "gpu"}[spec.resources.accelerator]
    trainer = {
        "devices": 1, "num_nodes": 1, "accelerator": accelerator, "strategy": "auto",
        "max_epochs": -1 if t.max_steps else (t.epochs or 100), "max_steps": t.max_steps or -1,
        "accumulate_grad_batches": t.grad_accumulation, "gradient_clip_val": t.grad_clip or 0.0,
        "precision": 32, "log_every_n_steps": 10, "check_val_every_n_epoch": 1, "num_sanity_val_steps": 0,
        "enable_checkpointing": False, "logger": False, "enable_progress_bar": False, "enable_model_summary": True,
        "benchmark": False,
    }
    ckpt_dir = rd / "checkpoints"
    exp_manager = {
        "explicit_log_dir": str(rd / "logs" / "nemo"),
        "resume_if_exists": True,
        "resume_ignore_no_checkpoint": True,
        "create_tensorboard_logger": False,
        "create_wandb_logger": False,
        "log_step_timing": False,
        "create_preemption_callback": False,
        "seconds_to_sleep": 0,
        "create_checkpoint_callback": True,
        "checkpoint_callback_params": {
            "dirpath": str(ckpt_dir), "filename": "{epoch}-{step}-{val_loss:.4f}", "monitor": "val_loss",
            "mode": "min", "save_top_k": t.keep_checkpoints, "save_last": True, "always_save_nemo": False,
            "save_nemo_on_train_end": False, "every_n_epochs": 1, "save_on_train_epoch_end": True,
        },
        "create_early_stopping_callback": t.early_stopping is not None,
    }
    if t.early_stopping:
        if t.early_stopping.monitor != "valid_loss":
            raise SpxError(f"training.early_stopping.monitor {t.early_stopping.monitor!r} has no meaning for TTS",
                           where="training.early_stopping.monitor", hint="use valid_loss")
        exp_manager["early_stopping_callback_params"] = {"monitor": "val_loss", "mode": "min",
                                                         "patience": t.early_stopping.patience, "min_delta": 0.0}
    return trainer, exp_manager


def write_config(spec: Spec, run_dir: RunDir, cfg: dict[str, Any]) -> dict[str, Any]:
    """backends.nemo deep-merged untouched (as for ASR), then native/tts_config.yaml written atomically."""
    from omegaconf import OmegaConf

    extra = spec.backends.get("nemo") or {}
    if extra:
        from spx.adapters.common.spec_helpers import deep_merge

        cfg = deep_merge(cfg, extra)
    atomic_write_text(run_dir / CONFIG, OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return cfg


def render_tts(spec: Spec, run_dir: RunDir) -> list[Step]:
    check_tts(spec)
    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    lower = spec.tokenizer.lowercase
    _manifest(spec.data.train, native / "tts_train.json", lower, spec.data.min_duration, spec.data.max_duration)
    _manifest(spec.data.valid, native / "tts_valid.json", lower)
    cfg = write_config(spec, run_dir, native_config(spec, run_dir))
    vocoder = resolve_vocoder(spec)
    atomic_write_json(run_dir / INFO, {
        "model": "FastPitchModel (learn_alignment)", "mel": mel_settings(spec), "vocoder": vocoder,
        "vocoder_name": vocoder_name(spec, vocoder), "griffin_lim_iters": spec.tts.griffin_lim_iters,
        "init_from": cfg["spx"]["init_from"],
    })
    py = sys.executable
    return [
        Step("tts_prepare", [py, "-m", "spx.adapters.nemo.tts_prepare", str(run_dir)], log="logs/tts_prepare.log"),
        Step("tts_train", [py, "-m", "spx.adapters.nemo.tts_train", str(run_dir)], log="train.log"),
        Step("tts_synth", [py, "-m", "spx.adapters.nemo.tts_synth", str(run_dir)], timed=True),
    ]


def collect_tts(run_dir: RunDir) -> dict[str, Any]:
    out = collect_normalized(run_dir)
    out["native_config"] = str(run_dir / CONFIG)
    return out
