"""ESPnet TTS (Tacotron2, FastSpeech2, VITS): the spec -> ESPnet's own `conf/train_tts.yaml` (tts: tacotron2;
tts: fastspeech2 trained on a Tacotron2 teacher's durations: tts_fastspeech2.py; or tts: vits for the gan_tts task:
tts_vits.py), a Kaldi-style data dir and `espnet2.bin.tts_train` / `gan_tts_train` commands (FastSpeech2: teacher-forced
`tts_inference` for the durations first; then collect_stats -> aggregate_stats_dirs -> train --resume true), then
`espnet2.bin.tts_inference.Text2Speech` (Griffin-Lim unless tts.vocoder names a vocoder; VITS outputs the waveform).

render_tts writes run_dir/native/:
  conf/train_tts.yaml   ESPnet training config (architecture numbers from `model:`, fbank from `features:`/`tts:`)
  conf/griffin_lim.yaml Griffin-Lim settings for Text2Speech (griffin_lim_iters; not for VITS)
  tts_tokens.txt        the character token list (fixed inventory: fine-tuning works across corpora)
  teacher/teacher_config.yaml  FastSpeech2 only: the duration teacher's config, statistics path made absolute
  tts_commands.json     the exact espnet2 argv lists (module first, paths relative to the run dir)
  tts_run.sh            the same commands as a shell script (ESPnet alone reproduces the run)
The child steps (tts_train, which first prepares with tts_prepare in the same process, and tts_synth) run those
argv lists through each entry point's `main(cmd=...)`. Nothing here imports torch or espnet2.
"""
from __future__ import annotations

import importlib.util
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from spx.adapters.base import collect_normalized
from spx.adapters.common.spec_helpers import speaker_table
from spx.errors import SpxError
from spx.manifests import read_manifest
from spx.rundir import RunDir, Step, require_same_job
from spx.spec import Spec
from spx.yamlio import atomic_write_json, atomic_write_text, dump_yaml

NATIVE = "native"
DATA = f"{NATIVE}/tts_data"
STATS = f"{NATIVE}/tts_stats"
EXP = "checkpoints"  # tts_train --output_dir: checkpoint.pth, N epoch.pth, config.yaml, valid.loss.best.pth
TOKENS = f"{NATIVE}/tts_tokens.txt"
CONF = f"{NATIVE}/conf/train_tts.yaml"
GL_CONF = f"{NATIVE}/conf/griffin_lim.yaml"
TTS_FAMILIES = {"tacotron2", "fastspeech2", "vits"}
# the characters clean_transcript keeps: one fixed inventory, so a checkpoint fine-tunes on any corpus
CHARACTERS = list(" '0123456789abcdefghijklmnopqrstuvwxyz")
SPACE = "<space>"  # ESPnet's char tokenizer writes a space as <space>


def token_list() -> list[str]:
    return ["<blank>", "<unk>", *[SPACE if c == " " else c for c in CHARACTERS], "<sos/eos>"]


def check_tts(spec: Spec) -> None:
    """Raise SpxError before anything runs when ESPnet cannot render this TTS job."""
    if spec.model.family not in TTS_FAMILIES:
        raise SpxError(f"backend 'espnet' has no {spec.model.family!r} TTS model in spx (it has: "
                       f"{', '.join(sorted(TTS_FAMILIES))})", where="model.family",
                       hint="use family tacotron2, fastspeech2 or vits, or another backend")
    t = spec.training
    if t.batch_size is None:
        raise SpxError("TTS jobs batch by utterances", where="training.batch_size", hint="set training.batch_size")
    if t.precision != "fp32":
        raise SpxError("TTS jobs train in fp32 in spx", where="training.precision", hint="set precision: fp32")
    if spec.model.family == "vits":
        from spx.adapters.espnet.tts_vits import check_vits

        check_vits(spec)
    if spec.model.family == "fastspeech2":
        from spx.adapters.espnet.tts_fastspeech2 import check_fastspeech2

        check_fastspeech2(spec)
    elif spec.tts.duration_teacher is not None:
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


def resolve_init_from(init_from: str) -> str:
    """An ESPnet TTS model (*.pth): the file, an ESPnet output dir, or an spx espnet TTS run dir."""
    p = Path(init_from).expanduser()
    if p.is_dir():
        summary = p / "train_summary.json"
        recorded = json.loads(summary.read_text()) if summary.exists() else {}
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


def mel_settings(spec: Spec) -> dict[str, Any]:
    sr = spec.tts.sample_rate
    return {"fs": sr, "n_mels": spec.tts.n_mels, "n_fft": spec.features.n_fft,
            "win_length": int(round(spec.features.win_length_ms * sr / 1000)),
            "hop_length": int(round(spec.features.hop_length_ms * sr / 1000)), "fmin": 0, "fmax": sr // 2}


def fbank_conf(spec: Spec) -> dict[str, Any]:
    """`feats_extract: fbank` settings (Tacotron2, FastSpeech2; a duration teacher must have the same)."""
    mel = mel_settings(spec)
    return {k: mel[k] for k in ("fs", "n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax")}


def training_settings(spec: Spec, n_train: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training part of an ESPnet tts config (optimizer, scheduler, epochs, batches, checkpoints), shared by
    Tacotron2 and FastSpeech2, and what spx derived (step counts) for the record."""
    from spx.adapters.espnet import _scheduler  # the ASR adapter's mapping of training.scheduler

    t = spec.training
    steps_per_epoch = math.ceil(math.ceil(n_train / t.batch_size) / t.grad_accumulation)
    epochs = t.epochs if t.max_steps is None else math.ceil(t.max_steps / steps_per_epoch)
    total_steps = t.max_steps or steps_per_epoch * epochs
    optim_conf: dict[str, Any] = {"lr": t.optimizer.lr, "weight_decay": t.optimizer.weight_decay}
    if t.optimizer.name != "sgd":
        optim_conf["betas"] = list(t.optimizer.betas)
    settings: dict[str, Any] = {
        "optim": t.optimizer.name, "optim_conf": optim_conf, **_scheduler(spec, total_steps),
        "max_epoch": epochs, "batch_type": "sorted", "batch_size": t.batch_size, "accum_grad": t.grad_accumulation,
        "grad_clip": t.grad_clip or -1, "seed": t.seed, "num_workers": t.num_workers,
        "keep_nbest_models": t.keep_checkpoints, "best_model_criterion": [["valid", "loss", "min"]],
        # ESPnet stops on epochs: max_steps is rounded up to whole epochs
        "num_iters_per_epoch": None, "log_interval": 10,
    }
    return settings, {"steps_per_epoch": steps_per_epoch, "epochs": epochs, "total_steps": total_steps}


def train_config(spec: Spec, n_train: int, speakers: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    from spx.adapters.common.spec_helpers import deep_merge

    m = spec.model
    tts_conf: dict[str, Any] = {
        "embed_dim": m.embedding_dim, "elayers": 1, "eunits": m.encoder_dim, "econv_layers": m.encoder_layers,
        "econv_chans": m.encoder_dim, "econv_filts": 5, "atype": "location", "adim": m.attention_dim,
        "aconv_chans": 32, "aconv_filts": 15, "cumulate_att_w": True, "dlayers": 2, "dunits": m.decoder_rnn_dim,
        "prenet_layers": 2, "prenet_units": m.prenet_dim, "postnet_layers": m.postnet_layers,
        "postnet_chans": m.postnet_dim, "postnet_filts": 5, "output_activation": None, "use_batch_norm": True,
        "use_concate": True, "use_residual": False, "reduction_factor": m.reduction_factor, "dropout_rate": 0.5,
        "zoneout_rate": 0.1, "use_masking": True, "bce_pos_weight": 5.0, "loss_type": "L1+L2",
        "use_guided_attn_loss": True, "guided_attn_loss_sigma": 0.4, "guided_attn_loss_lambda": 1.0,
    }
    if speakers:
        tts_conf.update(spks=len(speakers), spk_embed_integration_type="add")
    training, derived = training_settings(spec, n_train)
    cfg: dict[str, Any] = {
        "tts": "tacotron2", "tts_conf": tts_conf,
        "feats_extract": "fbank", "feats_extract_conf": fbank_conf(spec),
        "token_type": "char", "cleaner": None, "g2p": None,
        **training,
    }
    return deep_merge(cfg, spec.backends.get("espnet", {})), derived


def native_commands(spec: Spec, speakers: dict[str, int]) -> dict[str, list[str]]:
    """The espnet2 argv lists: one data layout and stats step for every family; the training entry point and
    feature normalization are the family's (VITS: gan_tts_train on the raw linear spectrogram, as ESPnet's egs;
    FastSpeech2: the teacher's durations first, then pitch and energy beside the mel)."""
    from spx.adapters.espnet import tts_fastspeech2 as fs2
    from spx.adapters.espnet.tts_vits import ENTRY as GAN_TTS_ENTRY

    vits = spec.model.family == "vits"
    fastspeech2 = spec.model.family == "fastspeech2"
    entry = GAN_TTS_ENTRY if vits else "espnet2.bin.tts_train"
    normalize = ["--normalize", "none"] if vits else [
        "--normalize", "global_mvn", "--normalize_conf", f"stats_file={STATS}/train/feats_stats.npz"]
    common = ["--use_preprocessor", "true", "--token_type", "char", "--token_list", TOKENS, "--cleaner", "none",
              "--g2p", "none", "--use_matplotlib", "false"]
    for split in ("train", "valid"):
        common += [f"--{split}_data_path_and_name_and_type", f"{DATA}/{split}/text,text,text",
                   f"--{split}_data_path_and_name_and_type", f"{DATA}/{split}/wav.scp,speech,sound"]
        if speakers:
            common += [f"--{split}_data_path_and_name_and_type", f"{DATA}/{split}/utt2sid,sids,text_int"]
        if fastspeech2:
            common += fs2.data_options(split)
    stats_options = fs2.stats_options() if fastspeech2 else ["--write_collected_feats", "false"]
    cmds: dict[str, list[str]] = {}
    if fastspeech2:
        cmds.update(fs2.teacher_commands(spec, fs2.resolve_duration_teacher(spec.tts.duration_teacher)["model"],
                                         speakers))
    cmds.update({
        "collect_stats": [entry, "--collect_stats", "true", "--config", CONF, *common,
                          "--normalize", "none", *stats_options,
                          "--train_shape_file", f"{DATA}/train/wav.scp", "--valid_shape_file", f"{DATA}/valid/wav.scp",
                          "--batch_type", "unsorted", "--batch_size", "8", "--ngpu", "0", "--num_workers", "0",
                          "--output_dir", f"{STATS}/logdir/stats.1"],
        "aggregate_stats_dirs": ["espnet2.bin.aggregate_stats_dirs", "--input_dir", f"{STATS}/logdir/stats.1",
                                 "--output_dir", STATS],
        "tts_train": [entry, "--config", CONF, *common, *normalize, *(fs2.train_options() if fastspeech2 else []),
                      "--train_shape_file", f"{STATS}/train/text_shape", "--train_shape_file", f"{STATS}/train/speech_shape",
                      "--valid_shape_file", f"{STATS}/valid/text_shape", "--valid_shape_file", f"{STATS}/valid/speech_shape",
                      "--fold_length", "150", "--fold_length", "204800",
                      "--resume", "true", "--output_dir", EXP, "--use_tensorboard", "false"],
    })
    if spec.init_from:
        require_same_job(spec.init_from, "espnet", spec.model.family)
        cmds["tts_train"] += ["--init_param", resolve_init_from(spec.init_from)]
    return cmds


def render_tts(spec: Spec, run_dir: RunDir) -> list[Step]:
    check_tts(spec)
    speakers = speaker_table(spec, f"ESPnet {spec.model.family}")
    vocoder = resolve_vocoder(spec)
    train = read_manifest(spec.data.train)
    if not train:
        raise SpxError("the training manifest is empty", where=spec.data.train)
    family = {"synth_model": "checkpoints/valid.loss.best.pth", "loss_key": "loss",
              "vocoder_name": vocoder_name(spec, vocoder)}
    teacher: dict[str, Any] | None = None
    if spec.model.family == "vits":
        from spx.adapters.espnet import tts_vits

        cfg, derived = tts_vits.vits_config(spec, len(train), speakers)
        family = {"synth_model": tts_vits.SYNTH_MODEL, "loss_key": tts_vits.LOSS_KEY, "vocoder_name": tts_vits.VOCODER}
    elif spec.model.family == "fastspeech2":
        from spx.adapters.espnet import tts_fastspeech2 as fs2

        fs2.check_teacher_speakers(spec, speakers)
        cfg, derived = fs2.fastspeech2_config(spec, len(train), speakers)
        teacher, teacher_cfg = fs2.teacher_config(spec)
        family["synth_model"] = fs2.SYNTH_MODEL
    else:
        cfg, derived = train_config(spec, len(train), speakers)
    cmds = native_commands(spec, speakers)
    (run_dir / NATIVE / "conf").mkdir(parents=True, exist_ok=True)
    if teacher is not None:
        (run_dir / fs2.TEACHER_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / fs2.TEACHER_CONFIG, f"# The duration teacher's {teacher['config']}, written by spx "
                          "with its statistics path made absolute\n" + dump_yaml(teacher_cfg))
    atomic_write_text(run_dir / CONF, f"# Generated by spx from {run_dir / 'spec.yaml'}\n" + dump_yaml(cfg))
    if spec.model.family != "vits":
        atomic_write_text(run_dir / GL_CONF, dump_yaml({"griffin_lim_iters": spec.tts.griffin_lim_iters}))
    atomic_write_text(run_dir / TOKENS, "\n".join(token_list()) + "\n")
    atomic_write_json(run_dir / NATIVE / "tts_commands.json", {
        "commands": cmds, "derived": derived, "speakers": speakers, "mel": mel_settings(spec), "vocoder": vocoder,
        "family": spec.model.family, **family, "init_from": cmds["tts_train"][-1] if spec.init_from else None,
        "duration_teacher": teacher})
    lines = ["#!/usr/bin/env bash", "# ESPnet's own commands for this TTS run (run from the run dir, after spx's tts_train "
             "step wrote the data dirs native/tts_data). spx adds --ngpu at run time.", "set -euo pipefail"]
    for name, argv in cmds.items():
        lines.append(shlex.join(["python", "-m", *argv]))
        if name.startswith("teacher_durations_"):  # the teacher's durations become the data dir's durations file
            split = name.removeprefix("teacher_durations_")
            lines.append(shlex.join(["cp", f"{argv[argv.index('--output_dir') + 1]}/durations/durations",
                                     f"{DATA}/{split}/durations"]))
    atomic_write_text(run_dir / NATIVE / "tts_run.sh", "\n".join(lines) + "\n")
    py = sys.executable
    return [  # tts_train prepares first (tts_prepare), in the same process: one espnet2 import less
        Step("tts_train", [py, "-m", "spx.adapters.espnet.tts_train", str(run_dir)], log="train.log"),
        Step("tts_synth", [py, "-m", "spx.adapters.espnet.tts_synth", str(run_dir)], timed=True),
    ]


def collect_tts(run_dir: RunDir) -> dict[str, Any]:
    return collect_normalized(run_dir)
