"""What the ESPnet families (conformer_ctc, tacotron2, fastspeech2, vits) and their child steps share: the run-dir
layout of native/, the character token list, the training.scheduler mapping, init_from resolution, the mel/fbank
settings, the training part of a TTS config, and the TTS render pipeline (data layout, stats and training argv;
the files it writes; the two steps).

A leaf module: it imports no other ESPnet module of spx (the families and steps import it), no torch, no espnet2.
"""
from __future__ import annotations

import importlib.util
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from spx.adapters.common.spec_helpers import TTS_CHARACTERS, tts_mel_settings
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import atomic_write_json, atomic_write_text, dump_yaml, read_json

NATIVE = "native"
EXP = "checkpoints"  # ESPnet's *_train --output_dir: checkpoint.pth, N epoch.pth, config.yaml, *.best/ave.pth
STEPS = "spx.adapters.espnet.steps"  # the child-process entry points: python -m {STEPS}.<step> RUN_DIR

# ASR (conformer_ctc)
DATA = f"{NATIVE}/data"
STATS = f"{NATIVE}/asr_stats"
TOKENS = f"{NATIVE}/tokens.txt"
BPE_PREFIX = f"{NATIVE}/bpe/bpe"
ASR_CONF = f"{NATIVE}/conf/train_asr.yaml"
ASR_COMMANDS = f"{NATIVE}/commands.json"

# TTS (tacotron2, fastspeech2, vits)
TTS_DATA = f"{NATIVE}/tts_data"
TTS_STATS = f"{NATIVE}/tts_stats"
TTS_TOKENS = f"{NATIVE}/tts_tokens.txt"
TTS_CONF = f"{NATIVE}/conf/train_tts.yaml"
GL_CONF = f"{NATIVE}/conf/griffin_lim.yaml"
TTS_COMMANDS = f"{NATIVE}/tts_commands.json"
TTS_TRAIN_ENTRY = "espnet2.bin.tts_train"
CHARACTERS = list(TTS_CHARACTERS)
SPACE = "<space>"  # ESPnet's char tokenizer writes a space as <space>


def step(name: str, module: str, run_dir: RunDir, **options: Any) -> Step:
    """A Step running the child entry point spx.adapters.espnet.steps.<module> on the run dir."""
    return Step(name, [sys.executable, "-m", f"{STEPS}.{module}", str(run_dir)], **options)


def token_list() -> list[str]:
    """The TTS families' character token list."""
    return ["<blank>", "<unk>", *[SPACE if c == " " else c for c in CHARACTERS], "<sos/eos>"]


# ------------------------------------------------------------------ training settings
def scheduler(spec: Spec, total_steps: int) -> dict[str, Any]:
    """training.scheduler -> ESPnet's scheduler and scheduler_conf."""
    s, lr = spec.training.scheduler, spec.training.optimizer.lr
    warm = s.warmup_steps
    if s.name == "noam":
        # ESPnet WarmupLR: lr * warmup^0.5 * min(step^-0.5, step * warmup^-1.5) -> peaks at optim lr after warmup
        return {"scheduler": "warmuplr", "scheduler_conf": {"warmup_steps": max(warm, 1)}}
    if s.name == "cosine" and warm < total_steps:
        return {"scheduler": "CosineAnnealingWarmupRestarts",
                "scheduler_conf": {"first_cycle_steps": total_steps, "warmup_steps": warm, "max_lr": lr, "min_lr": s.min_lr}}
    # constant / linear, and cosine runs that never leave warm-up: piecewise-linear points (step, lr)
    end_lr = {"constant": lr, "linear": s.min_lr, "cosine": lr}[s.name]
    if warm >= total_steps:
        points = [(0, 0.0), (warm, lr)] if warm else [(0, lr)]
    else:
        points = ([(0, 0.0), (warm, lr)] if warm else [(0, lr)]) + [(total_steps, end_lr)]
    if len(points) == 1:
        points.append((max(total_steps, 1), lr))
    return {"scheduler": "piecewiselinearwarmuplr",
            "scheduler_conf": {"warmup_steps_list": [p[0] for p in points], "warmup_lr_list": [p[1] for p in points]}}


def tts_optim_conf(spec: Spec) -> dict[str, Any]:
    """optim_conf of the TTS families (VITS: of the generator and the discriminator alike)."""
    t = spec.training
    optim_conf: dict[str, Any] = {"lr": t.optimizer.lr, "weight_decay": t.optimizer.weight_decay}
    if t.optimizer.name != "sgd":
        optim_conf["betas"] = list(t.optimizer.betas)
    return optim_conf


def epoch_settings(spec: Spec, epochs: int) -> dict[str, Any]:
    """Epochs, utterance batches and kept checkpoints of a TTS config (every TTS family the same)."""
    t = spec.training
    return {"max_epoch": epochs, "batch_type": "sorted", "batch_size": t.batch_size, "accum_grad": t.grad_accumulation,
            "grad_clip": t.grad_clip or -1, "seed": t.seed, "num_workers": t.num_workers,
            "keep_nbest_models": t.keep_checkpoints}


def epoch_plan(spec: Spec, batches: int) -> tuple[int, int | None, int, int]:
    """ESPnet counts epochs: training.max_steps becomes equal-length epochs of whole mini-batches (its
    num_iters_per_epoch). Returns (epochs, num_iters_per_epoch or None, steps_per_epoch, total_steps) for an epoch of
    `batches` mini-batches."""
    t = spec.training
    epochs, iters_per_epoch = t.epochs, None
    if t.max_steps is not None:
        iters_total = t.max_steps * t.grad_accumulation
        epochs = math.ceil(iters_total / batches)
        iters_per_epoch = batches = math.ceil(iters_total / epochs)
    steps_per_epoch = max(batches // t.grad_accumulation, 1)
    return epochs, iters_per_epoch, steps_per_epoch, steps_per_epoch * epochs


def training_settings(spec: Spec, n_train: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training part of an ESPnet tts config (optimizer, scheduler, epochs, batches, checkpoints), shared by
    Tacotron2 and FastSpeech2, and what spx derived (step counts) for the record."""
    t = spec.training
    steps_per_epoch = math.ceil(math.ceil(n_train / t.batch_size) / t.grad_accumulation)
    epochs = t.epochs if t.max_steps is None else math.ceil(t.max_steps / steps_per_epoch)
    total_steps = t.max_steps or steps_per_epoch * epochs
    settings: dict[str, Any] = {
        "optim": t.optimizer.name, "optim_conf": tts_optim_conf(spec), **scheduler(spec, total_steps),
        **epoch_settings(spec, epochs), "best_model_criterion": [["valid", "loss", "min"]],
        # ESPnet stops on epochs: max_steps is rounded up to whole epochs
        "num_iters_per_epoch": None, "log_interval": 10,
    }
    return settings, {"steps_per_epoch": steps_per_epoch, "epochs": epochs, "total_steps": total_steps}


def mel_settings(spec: Spec) -> dict[str, Any]:
    """The TTS mel in ESPnet's key names (its fbank/linear-spectrogram options)."""
    mel = tts_mel_settings(spec)
    return {"fs": mel["sample_rate"], "n_mels": mel["n_mels"], "n_fft": mel["n_fft"], "win_length": mel["win_length"],
            "hop_length": mel["hop_length"], "fmin": 0, "fmax": mel["sample_rate"] // 2}


def logger_args(spec: Spec) -> list[str]:
    """ESPnet's own loggers as spec.logging asks: TensorBoard events in <output_dir>/tensorboard, W&B."""
    lg = spec.logging
    args = ["--use_tensorboard", "true" if lg.tensorboard else "false"]
    if lg.wandb:
        args += ["--use_wandb", "true", "--wandb_project", lg.project or spec.name, "--wandb_name", spec.name]
    return args


def fbank_conf(spec: Spec) -> dict[str, Any]:
    """`feats_extract: fbank` settings (Tacotron2, FastSpeech2; a duration teacher must have the same)."""
    mel = mel_settings(spec)
    return {k: mel[k] for k in ("fs", "n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax")}


# ------------------------------------------------------------------ init_from
def resolve_init(init_from: str) -> dict[str, str] | None:
    """ASR init_from -> {'model': *.pth, 'config': config.yaml} for a local ESPnet model, None for a hub name.

    Accepts an spx ESPnet run dir (its exported_model), an ESPnet exp dir (config.yaml + *.pth) or a *.pth
    file with config.yaml beside it (ESPnet's output-dir layout)."""
    p = Path(init_from).expanduser()
    if not p.exists():
        if p.is_absolute() or init_from.startswith(".") or init_from.endswith((".pth", ".yaml")) or init_from.count("/") != 1:
            raise SpxError(f"init_from {init_from!r} does not exist", where="init_from",
                           hint="give an ESPnet *.pth (config.yaml beside it), an ESPnet exp dir, an spx espnet run dir, "
                                "or a Hugging Face model name like 'espnet/owner_model'")
        return None
    if p.is_dir():
        summary = read_json(p / "train_summary.json")
        if summary and summary.get("exported_model"):
            p = Path(summary["exported_model"])
            if not p.is_absolute():
                p = Path(init_from).expanduser() / p
        else:
            for name in ("valid.loss.ave.pth", "valid.loss.best.pth", "valid.acc.ave.pth", "valid.acc.best.pth", "latest.pth"):
                if (p / name).exists():
                    p = p / name
                    break
            else:
                raise SpxError(f"init_from {init_from!r}: no ESPnet model (*.pth) found in that folder", where="init_from",
                               hint="point init_from at the *.pth file itself")
    if p.suffix != ".pth":
        raise SpxError(f"init_from {init_from!r} is not an ESPnet model file (*.pth)", where="init_from",
                       hint="ESPnet models are *.pth state dicts with a config.yaml beside them")
    for cfg in (p.parent / "config.yaml", p.parent.parent / "config.yaml"):
        if cfg.exists():
            return {"model": str(p.resolve()), "config": str(cfg.resolve())}
    raise SpxError(f"init_from {init_from!r}: no config.yaml next to the model", where="init_from",
                   hint="ESPnet writes config.yaml into the training output dir; keep it beside the *.pth")


def check_init_architecture(spec: Spec, init: dict[str, str], cfg: dict[str, Any]) -> None:
    """An ASR init_from model must have the encoder the rendered config `cfg` builds (render, and the train step
    for a hub model it fetched)."""
    import yaml

    with open(init["config"], encoding="utf-8") as fh:
        theirs = yaml.safe_load(fh) or {}
    if theirs.get("encoder") != cfg["encoder"]:
        raise SpxError(f"init_from {spec.init_from!r} has a {theirs.get('encoder')!r} encoder, the spec a {cfg['encoder']!r} one",
                       where="init_from", hint="fine-tune from a model of the same family")
    keys = ("output_size", "attention_heads", "linear_units", "num_blocks", "input_layer", "cnn_module_kernel")
    ours, other = cfg["encoder_conf"], theirs.get("encoder_conf") or {}
    diff = [f"{k}: spec {ours.get(k)!r} vs model {other.get(k)!r}" for k in keys if other.get(k) != ours.get(k)]
    if diff:
        raise SpxError(f"init_from {spec.init_from!r} does not match model.encoder ({'; '.join(diff)})", where="init_from",
                       hint="set model.encoder to the pretrained model's sizes")


def resolve_tts_init(init_from: str) -> str:
    """A TTS init_from -> an ESPnet TTS model (*.pth): the file, an ESPnet output dir, or an spx espnet TTS run dir."""
    p = Path(init_from).expanduser()
    if p.is_dir():
        recorded = read_json(p / "train_summary.json") or {}
        if recorded.get("exported_model") or recorded.get("best_checkpoint"):
            p = Path(recorded.get("exported_model") or recorded["best_checkpoint"])
        else:
            for cand in (p / "valid.loss.best.pth", p / EXP / "valid.loss.best.pth", p / "latest.pth"):
                if cand.exists():
                    p = cand
                    break
    if p.suffix != ".pth" or not p.is_file():
        raise SpxError(f"init_from {init_from!r}: no ESPnet TTS model (*.pth) found", where="init_from",
                       hint="give an ESPnet *.pth, its output dir, or an spx espnet TTS run dir")
    return str(p.resolve())


TTS_INIT_FROM = "an ESPnet TTS model (*.pth), its output dir, or an spx espnet TTS run dir of the same family"


# ------------------------------------------------------------------ TTS checks and vocoder
def check_tts(spec: Spec) -> None:
    """What every ESPnet TTS family needs of the spec."""
    t = spec.training
    if t.batch_size is None:
        raise SpxError("TTS jobs batch by utterances", where="training.batch_size", hint="set training.batch_size")


def refuse_duration_teacher(spec: Spec) -> None:
    """Tacotron2 and VITS align text and audio themselves."""
    if spec.tts.duration_teacher is not None:
        raise SpxError(f"tts.duration_teacher is set, but ESPnet {spec.model.family} learns its alignment itself "
                       "(only FastSpeech2 trains on a teacher's durations)", where="tts.duration_teacher",
                       hint="remove tts.duration_teacher, or use model.family fastspeech2")


def resolve_vocoder(spec: Spec) -> dict[str, str] | None:
    """tts.vocoder for ESPnet: a ParallelWaveGAN-family checkpoint (*.pkl, config.yml beside it), as ESPnet's
    Text2Speech loads it (needs the `parallel_wavegan` package)."""
    voc = spec.tts.vocoder
    if voc is None:
        return None
    p = Path(voc).expanduser()
    if p.is_dir():
        found = sorted(p.glob("*.pkl"))
        p = found[-1] if found else p / "checkpoint-*.pkl"
    if p.suffix != ".pkl" or not p.is_file():
        raise SpxError(f"tts.vocoder {voc!r}: ESPnet's Text2Speech loads vocoders as ParallelWaveGAN checkpoints (*.pkl)",
                       where="tts.vocoder", hint="give a *.pkl with its config.yml beside it, or leave tts.vocoder "
                       "unset for Griffin-Lim")
    if importlib.util.find_spec("parallel_wavegan") is None:
        raise SpxError("tts.vocoder on ESPnet needs the `parallel_wavegan` package, which is not installed",
                       where="tts.vocoder", hint="add parallel_wavegan to the environment, or use Griffin-Lim")
    cfg = next((c for c in (p.parent / "config.yml", p.parent / "config.yaml") if c.exists()), None)
    if cfg is None:
        raise SpxError(f"tts.vocoder {voc!r}: no config.yml beside the checkpoint", where="tts.vocoder")
    return {"file": str(p.resolve()), "config": str(cfg.resolve())}


def vocoder_name(spec: Spec, vocoder: dict[str, str] | None) -> str:
    return vocoder["file"] if vocoder else f"griffin-lim ({spec.tts.griffin_lim_iters} iters)"


def train_utterance_count(spec: Spec) -> int:
    from spx.manifests import read_manifest

    train = read_manifest(spec.data.train)
    if not train:
        raise SpxError("the training manifest is empty", where=spec.data.train)
    return len(train)


# ------------------------------------------------------------------ the TTS render pipeline
def tts_commands(spec: Spec, speakers: dict[str, int], *, entry: str = TTS_TRAIN_ENTRY,
                 normalize: list[str] | None = None, data_options: Callable[[str], list[str]] | None = None,
                 stats_options: list[str] | None = None, train_options: list[str] | None = None,
                 first: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """The espnet2 argv lists: one data layout and stats step for every family; the family says its training
    entry point, feature normalization (default: global_mvn of the mel), extra data files per split, collect_stats
    and training options, and commands that run first (FastSpeech2: the teacher's durations)."""
    if normalize is None:
        normalize = ["--normalize", "global_mvn", "--normalize_conf", f"stats_file={TTS_STATS}/train/feats_stats.npz"]
    common = ["--use_preprocessor", "true", "--token_type", "char", "--token_list", TTS_TOKENS, "--cleaner", "none",
              "--g2p", "none", "--use_matplotlib", "false"]
    for split in ("train", "valid"):
        common += [f"--{split}_data_path_and_name_and_type", f"{TTS_DATA}/{split}/text,text,text",
                   f"--{split}_data_path_and_name_and_type", f"{TTS_DATA}/{split}/wav.scp,speech,sound"]
        if speakers:
            common += [f"--{split}_data_path_and_name_and_type", f"{TTS_DATA}/{split}/utt2sid,sids,text_int"]
        if data_options:
            common += data_options(split)
    cmds: dict[str, list[str]] = dict(first or {})
    cmds.update({
        "collect_stats": [entry, "--collect_stats", "true", "--config", TTS_CONF, *common,
                          "--normalize", "none", *(stats_options or ["--write_collected_feats", "false"]),
                          "--train_shape_file", f"{TTS_DATA}/train/wav.scp",
                          "--valid_shape_file", f"{TTS_DATA}/valid/wav.scp",
                          "--batch_type", "unsorted", "--batch_size", "8", "--ngpu", "0", "--num_workers", "0",
                          "--output_dir", f"{TTS_STATS}/logdir/stats.1"],
        "aggregate_stats_dirs": ["espnet2.bin.aggregate_stats_dirs", "--input_dir", f"{TTS_STATS}/logdir/stats.1",
                                 "--output_dir", TTS_STATS],
        "tts_train": [entry, "--config", TTS_CONF, *common, *normalize, *(train_options or []),
                      "--train_shape_file", f"{TTS_STATS}/train/text_shape",
                      "--train_shape_file", f"{TTS_STATS}/train/speech_shape",
                      "--valid_shape_file", f"{TTS_STATS}/valid/text_shape",
                      "--valid_shape_file", f"{TTS_STATS}/valid/speech_shape",
                      "--fold_length", "150", "--fold_length", "204800",
                      "--resume", "true", "--output_dir", EXP, *logger_args(spec)],
    })
    if spec.init_from:  # an spx run dir of another backend or family was refused by BackendAdapter.supports
        cmds["tts_train"] += ["--init_param", resolve_tts_init(spec.init_from)]
    return cmds


def write_tts_run(spec: Spec, run_dir: RunDir, *, cfg: dict[str, Any], derived: dict[str, Any],
                  cmds: dict[str, list[str]], speakers: dict[str, int], vocoder: dict[str, str] | None,
                  synth_model: str, loss_key: str, vocoder_label: str, griffin_lim: bool = True,
                  duration_teacher: dict[str, str] | None = None) -> list[Step]:
    """Write a TTS run's native/ (config, Griffin-Lim settings, token list, tts_commands.json, tts_run.sh) and
    return its two steps."""
    (run_dir / NATIVE / "conf").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / TTS_CONF, f"# Generated by spx from {run_dir / 'spec.yaml'}\n" + dump_yaml(cfg))
    if griffin_lim:
        atomic_write_text(run_dir / GL_CONF, dump_yaml({"griffin_lim_iters": spec.tts.griffin_lim_iters}))
    atomic_write_text(run_dir / TTS_TOKENS, "\n".join(token_list()) + "\n")
    atomic_write_json(run_dir / TTS_COMMANDS, {
        "commands": cmds, "derived": derived, "speakers": speakers, "mel": mel_settings(spec), "vocoder": vocoder,
        "family": spec.model.family, "synth_model": synth_model, "loss_key": loss_key, "vocoder_name": vocoder_label,
        "init_from": cmds["tts_train"][-1] if spec.init_from else None, "duration_teacher": duration_teacher})
    lines = ["#!/usr/bin/env bash", "# ESPnet's own commands for this TTS run (run from the run dir, after spx's tts_train "
             "step wrote the data dirs native/tts_data). spx adds --ngpu at run time.", "set -euo pipefail"]
    for name, argv in cmds.items():
        lines.append(shlex.join(["python", "-m", *argv]))
        if name.startswith("teacher_durations_"):  # the teacher's durations become the data dir's durations file
            split = name.removeprefix("teacher_durations_")
            lines.append(shlex.join(["cp", f"{argv[argv.index('--output_dir') + 1]}/durations/durations",
                                     f"{TTS_DATA}/{split}/durations"]))
    atomic_write_text(run_dir / NATIVE / "tts_run.sh", "\n".join(lines) + "\n")
    return [  # tts_train prepares first (tts_prepare), in the same process: one espnet2 import less
        step("tts_train", "tts_train", run_dir, log="train.log"),
        step("tts_synth", "tts_synth", run_dir, timed=True),
    ]


# ------------------------------------------------------------------ the ASR render pipeline (conformer_ctc, ssl_ctc)
def train_utterances(spec: Spec) -> list:
    """The training manifest with data.min_duration/max_duration applied."""
    from spx.manifests import read_manifest

    utts = read_manifest(spec.data.train)
    lo, hi = spec.data.min_duration, spec.data.max_duration
    kept = [u for u in utts if (lo is None or u.duration >= lo) and (hi is None or u.duration <= hi)]
    if not kept:
        raise SpxError(f"no training utterance left after data.min_duration/max_duration ({lo}, {hi})",
                       where="data", hint="widen the duration limits")
    return kept


def cleaned(utts: list, lowercase: bool) -> list:
    import dataclasses

    from spx.adapters.common.child import clean_transcript

    return [dataclasses.replace(u, text=clean_transcript(u.text or "", lowercase)) for u in utts]


def batches_per_epoch(spec: Spec, durations: list[float], world: int) -> int:
    """Mini-batches one epoch has in ESPnet's sampler (all ranks together make one mini-batch)."""
    t = spec.training
    if t.batch_size is not None:
        return math.ceil(len(durations) / (t.batch_size * world))
    # 'length' batch type: sorted by length, a batch closes once its samples exceed batch_bins
    bins = t.batch_seconds * world
    n, acc = 0, 0.0
    for d in sorted(durations, reverse=True):
        if acc and acc + d > bins:
            n, acc = n + 1, 0.0
        acc += d
    return n + (1 if acc else 0)


def asr_training_config(spec: Spec, durations: list[float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What every ESPnet ASR config of spx has besides the model (epochs, batches, optimizer, scheduler, early
    stopping, SpecAugment, speed perturbation), and what spx derived (step counts) for the record."""
    feat, t = spec.features, spec.training
    world = spec.resources.devices * spec.resources.nodes
    batches = batches_per_epoch(spec, durations, world)
    epochs, iters_per_epoch, steps_per_epoch, total_steps = epoch_plan(spec, batches)
    batches = iters_per_epoch or batches
    cfg: dict[str, Any] = {
        "seed": t.seed,
        "num_workers": t.num_workers,
        "max_epoch": epochs,
        "num_iters_per_epoch": iters_per_epoch,
        "accum_grad": t.grad_accumulation,
        "grad_clip": t.grad_clip if t.grad_clip is not None else float("inf"),
        "keep_nbest_models": t.keep_checkpoints,
        "best_model_criterion": [["valid", "loss", "min"]],
        "use_amp": t.precision != "fp32",
        "log_interval": max(steps_per_epoch // 2, 1),
        "optim": t.optimizer.name,
        "optim_conf": {"lr": t.optimizer.lr, "weight_decay": t.optimizer.weight_decay},
        **scheduler(spec, total_steps),
    }
    if t.optimizer.name in ("adam", "adamw"):
        cfg["optim_conf"]["betas"] = list(t.optimizer.betas)
    else:
        cfg["optim_conf"]["momentum"] = t.optimizer.betas[0]
    if t.batch_size is not None:  # per device in the spec; ESPnet's batch_size is split over the ranks
        cfg.update(batch_type="sorted", batch_size=t.batch_size * world)
    else:
        cfg.update(batch_type="length", batch_bins=int(t.batch_seconds * feat.sample_rate * world))
    if t.early_stopping is not None:
        crit = ["valid", "loss", "min"] if t.early_stopping.monitor == "valid_loss" else ["valid", "cer_ctc", "min"]
        cfg.update(patience=t.early_stopping.patience, early_stopping_criterion=crit)
        if crit not in cfg["best_model_criterion"]:
            cfg["best_model_criterion"].append(crit)
    sa = spec.augmentation.spec_augment
    if sa is not None and (sa.freq_masks and sa.freq_width or sa.time_masks and sa.time_width):
        cfg["specaug"] = "specaug"
        cfg["specaug_conf"] = {"apply_time_warp": False,
                               "apply_freq_mask": bool(sa.freq_masks and sa.freq_width),
                               "freq_mask_width_range": [0, sa.freq_width], "num_freq_mask": sa.freq_masks,
                               "apply_time_mask": bool(sa.time_masks and sa.time_width),
                               "time_mask_width_range": [0, sa.time_width], "num_time_mask": sa.time_masks}
    sp = spec.augmentation.speed_perturb
    if sp:
        # ESPnet's on-the-fly DataAugmentation in the preprocessor: one factor per utterance, uniformly
        cfg["preprocessor_conf"] = {"data_aug_effects": [[1.0, [[1.0, "speed_perturb", {"factor": float(f)}] for f in sp]]],
                                    "data_aug_num": [1, 1], "data_aug_prob": 1.0, "fs": feat.sample_rate}
    derived = {"world_size": world, "batches_per_epoch": batches, "steps_per_epoch": steps_per_epoch,
               "total_steps": total_steps, "epochs": epochs}
    return cfg, derived


def asr_native_commands(spec: Spec, normalize: list[str], train_options: list[str],
                        entry: list[str] | None = None) -> dict[str, list[str]]:
    """The exact espnet2 entry-point argv lists (module first), relative to the run dir: tokenize_text,
    collect_stats, aggregate_stats_dirs, asr_train with `normalize` (its --normalize options) and `train_options`
    (--freeze_param, adapters, ...). `entry` goes before each espnet2 module in native/run.sh only (ssl_ctc: the
    s3prl compatibility wrapper)."""
    tok = spec.tokenizer
    cmds: dict[str, list[str]] = {}
    tok_args = ["--token_type", "char"]
    if tok.type == "bpe":
        tok_args = ["--token_type", "bpe", "--bpemodel", f"{BPE_PREFIX}.model"]
    cmds["tokenize_text"] = ["espnet2.bin.tokenize_text", "--input", f"{DATA}/train/text", "--output", TOKENS,
                             "--field", "2-", "--cleaner", "none", "--g2p", "none", *tok_args, "--write_vocabulary", "true",
                             "--add_symbol", "<blank>:0", "--add_symbol", "<unk>:1", "--add_symbol", "<sos/eos>:-1"]
    common = ["--use_preprocessor", "true", "--token_list", TOKENS, *tok_args[:2],
              *(["--bpemodel", f"{BPE_PREFIX}.model"] if tok.type == "bpe" else []),
              "--train_data_path_and_name_and_type", f"{DATA}/train/wav.scp,speech,sound",
              "--train_data_path_and_name_and_type", f"{DATA}/train/text,text,text",
              "--valid_data_path_and_name_and_type", f"{DATA}/valid/wav.scp,speech,sound",
              "--valid_data_path_and_name_and_type", f"{DATA}/valid/text,text,text"]
    cmds["collect_stats"] = ["espnet2.bin.asr_train", "--collect_stats", "true", "--config", ASR_CONF,
                             *common, "--train_shape_file", f"{DATA}/train/wav.scp",
                             "--valid_shape_file", f"{DATA}/valid/wav.scp", "--batch_type", "unsorted",
                             "--batch_size", "8", "--ngpu", "0", "--num_workers", "0",
                             "--output_dir", f"{STATS}/logdir/stats.1", "--use_matplotlib", "false"]
    cmds["aggregate_stats_dirs"] = ["espnet2.bin.aggregate_stats_dirs", "--input_dir", f"{STATS}/logdir/stats.1",
                                    "--output_dir", STATS]
    cmds["asr_train"] = ["espnet2.bin.asr_train", "--config", ASR_CONF, *common, *normalize,
                         "--train_shape_file", f"{STATS}/train/speech_shape", "--valid_shape_file", f"{STATS}/valid/speech_shape",
                         "--fold_length", "80000",
                         "--resume", "true", "--output_dir", EXP, "--use_matplotlib", "false", *logger_args(spec),
                         *train_options]
    if spec.training.precision == "bf16":
        cmds["asr_train"] += ["--use_tf32", "false"]
    return cmds


def write_asr_run(spec: Spec, rd: RunDir, cfg: dict[str, Any], derived: dict[str, Any], cmds: dict[str, list[str]],
                  freeze_param: list[str], train: list, *, header: str, run_prefix: list[str] | None = None,
                  fetch: bool = False) -> list[Step]:
    """Write an ESPnet ASR run's native/ (Kaldi data dirs, conf/train_asr.yaml, commands.json, run.sh) and return
    its steps: [fetch_init,] [prepare,] train, decode."""
    from spx.manifests import read_manifest
    from spx.manifests.exporters import export_kaldi

    lower = spec.tokenizer.lowercase
    export_kaldi(train, rd / f"{DATA}/train")
    export_kaldi(cleaned(read_manifest(spec.data.valid), lower), rd / f"{DATA}/valid")
    for path in spec.test_sets:  # for reference/scoring with ESPnet's own tools; spx decodes from manifests
        export_kaldi(cleaned(read_manifest(path), lower), rd / f"{DATA}/test_{Path(path).stem}")
    atomic_write_text(rd / ASR_CONF, header + dump_yaml(cfg))
    atomic_write_json(rd / ASR_COMMANDS, {"commands": cmds, "derived": derived,
                                          "init_from": spec.init_from, "freeze_param": freeze_param})
    lines = ["#!/usr/bin/env bash", "# The same ESPnet commands spx runs (the spx steps call each entry point's main(cmd)).",
             "# Run from the run dir. init_param/ignore_init_mismatch and ngpu/dist options are decided by the train step",
             "# at run time (they depend on the token list and the device) and logged in train.log.", "set -euo pipefail",
             f"cd {shlex.quote(str(rd.path))}"]
    if spec.tokenizer.type == "bpe":
        lines.append(f"# sentencepiece (bpe, vocab {spec.tokenizer.vocab_size}) is trained on {DATA}/train/text by "
                     f"{STEPS}.prepare into " + BPE_PREFIX + ".model")
    for argv in cmds.values():
        lines.append(shlex.join(["python", "-m", *(run_prefix or []), *argv]))
    atomic_write_text(rd / f"{NATIVE}/run.sh", "\n".join(lines) + "\n")

    steps = []
    if fetch:
        steps.append(step("fetch_init", "fetch", rd))
    several = derived["world_size"] > 1
    if several:  # one process collects the statistics; train then runs once per rank
        steps.append(step("prepare", "prepare", rd))
    steps += [  # a single train process prepares first: one espnet2 import (~20-40 s on 2 cores) less
        step("train", "train", rd, launch="torchrun" if several else "single", log="train.log"),
        step("decode", "decode", rd, timed=True),  # timed: a process of its own
    ]
    return steps
