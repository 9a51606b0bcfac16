"""ESPnet Conformer-CTC (asr/conformer_ctc): the spec -> ESPnet's own `conf/train_asr.yaml`, Kaldi-style data dirs
and `espnet2.bin.*` commands (tokenize_text -> asr_train --collect_stats -> aggregate_stats_dirs -> asr_train
--resume true).

No torch, no espnet2 here. The child steps (steps.train, which prepares first when it runs alone; steps.prepare,
before a multi-process train; steps.decode; steps.fetch for a hub init_from) import the toolkit. Every native command
is written to run_dir/native/commands.json and native/run.sh, so the run can be reproduced with ESPnet alone; the spx
steps run those same argv lists through each entry point's `main(cmd=...)`, several in one process (an espnet2 CLI
start costs ~20 s of imports on 2 idle cores, 40 s and more on a busy one).
"""
from __future__ import annotations

import dataclasses
import math
import shlex
from pathlib import Path
from typing import Any

from spx.adapters.common.spec_helpers import deep_merge, frozen_layer_count
from spx.adapters.espnet import helpers
from spx.adapters.espnet.helpers import ASR_COMMANDS, ASR_CONF, BPE_PREFIX, DATA, EXP, NATIVE, STATS, TOKENS
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import read_json

TASK = "asr"
NAME = "conformer_ctc"
CPU_PRECISIONS = ("fp32",)  # ESPnet's mixed precision is torch.cuda.amp
INIT_FROM = "a trained ESPnet model (a run's exported_model)"
INFERENCE = f"{helpers.STEPS}.decode"
EXPORT = "spx.adapters.espnet.steps.export"


def freeze_params(spec: Spec) -> list[str]:
    """spec freeze items -> ESPnet --freeze_param names (ESPnet freezes `name == p or name.startswith(p + ".")`).
    'feature_extractor' = the fbank frontend + global MVN + the conv subsampling (encoder.embed), as on NeMo."""
    out: list[str] = []
    for item in spec.freeze:
        if item == "encoder":
            out.append("encoder")
        elif item == "feature_extractor":
            out += ["frontend", "normalize", "encoder.embed"]
        else:
            out += [f"encoder.encoders.{i}" for i in range(frozen_layer_count(item, spec.model.encoder.layers))]
    return list(dict.fromkeys(out))


def _train_utterances(spec: Spec) -> list:
    from spx.manifests import read_manifest

    utts = read_manifest(spec.data.train)
    lo, hi = spec.data.min_duration, spec.data.max_duration
    kept = [u for u in utts if (lo is None or u.duration >= lo) and (hi is None or u.duration <= hi)]
    if not kept:
        raise SpxError(f"no training utterance left after data.min_duration/max_duration ({lo}, {hi})",
                       where="data", hint="widen the duration limits")
    return kept


def _cleaned(utts: list, lowercase: bool) -> list:
    from spx.adapters.common.child import clean_transcript

    return [dataclasses.replace(u, text=clean_transcript(u.text or "", lowercase)) for u in utts]


def _batches_per_epoch(spec: Spec, durations: list[float], world: int) -> int:
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


def train_config(spec: Spec, durations: list[float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """ESPnet's conf/train_asr.yaml for the spec, and what spx derived (step counts) for the record."""
    enc, feat, t = spec.model.encoder, spec.features, spec.training
    world = spec.resources.devices * spec.resources.nodes
    batches = _batches_per_epoch(spec, durations, world)
    epochs, iters_per_epoch, steps_per_epoch, total_steps = helpers.epoch_plan(spec, batches)
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
        "frontend": "default",
        "frontend_conf": {"fs": feat.sample_rate, "n_fft": feat.n_fft,
                          "win_length": int(round(feat.win_length_ms * feat.sample_rate / 1000)),
                          "hop_length": int(round(feat.hop_length_ms * feat.sample_rate / 1000)), "n_mels": feat.n_mels},
        "encoder": "conformer",
        "encoder_conf": {"output_size": enc.d_model, "attention_heads": enc.heads,
                         "linear_units": enc.d_model * enc.ff_expansion, "num_blocks": enc.layers,
                         "dropout_rate": enc.dropout, "positional_dropout_rate": enc.dropout,
                         "attention_dropout_rate": enc.dropout,
                         "input_layer": "conv2d" if enc.subsampling == 4 else "conv2d8",
                         "normalize_before": True, "macaron_style": True, "rel_pos_type": "latest",
                         "pos_enc_layer_type": "rel_pos", "selfattention_layer_type": "rel_selfattn",
                         "activation_type": "swish", "use_cnn_module": True, "cnn_module_kernel": enc.conv_kernel},
        "decoder": "none",
        "model_conf": {"ctc_weight": 1.0},
        "optim": t.optimizer.name,
        "optim_conf": {"lr": t.optimizer.lr, "weight_decay": t.optimizer.weight_decay},
        **helpers.scheduler(spec, total_steps),
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
    cfg = {k: v for k, v in cfg.items() if v is not None}
    cfg = deep_merge(cfg, spec.backends.get("espnet", {}))
    derived = {"world_size": world, "batches_per_epoch": batches, "steps_per_epoch": steps_per_epoch,
               "total_steps": total_steps, "epochs": epochs}
    return cfg, derived


def native_commands(spec: Spec, rd: RunDir, derived: dict[str, Any]) -> dict[str, list[str]]:
    """The exact espnet2 entry-point argv lists (module first), relative to the run dir."""
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
    cmds["asr_train"] = ["espnet2.bin.asr_train", "--config", ASR_CONF, *common,
                         "--normalize", "global_mvn", "--normalize_conf", f"stats_file={STATS}/train/feats_stats.npz",
                         "--train_shape_file", f"{STATS}/train/speech_shape", "--valid_shape_file", f"{STATS}/valid/speech_shape",
                         "--fold_length", "80000",
                         "--resume", "true", "--output_dir", EXP, "--use_matplotlib", "false", *helpers.logger_args(spec)]
    if spec.freeze:
        cmds["asr_train"] += ["--freeze_param", *freeze_params(spec)]
    if spec.training.precision == "bf16":
        cmds["asr_train"] += ["--use_tf32", "false"]
    return cmds


def check(spec: Spec) -> None:
    """Raise SpxError before anything is written when ESPnet cannot render this Conformer-CTC job."""
    if spec.augmentation.noise is not None:
        raise SpxError("augmentation.noise is not rendered for ESPnet by spx yet", where="augmentation.noise",
                       hint="remove augmentation.noise, or pass ESPnet's preprocessor options under backends.espnet "
                            "(e.g. preprocessor_conf: {noise_scp: ..., noise_apply_prob: ...})")
    if spec.init_from:
        helpers.resolve_init(spec.init_from)
    bad = {"batch_size", "batch_bins", "batch_type"} & set(spec.backends.get("espnet", {})) if spec.training.batch_seconds else set()
    if bad:
        raise SpxError(f"backends.espnet sets {sorted(bad)} and training.batch_seconds is set too", where="backends.espnet",
                       hint="set the batch in one place")


def render(spec: Spec, rd: RunDir) -> list[Step]:
    from spx.manifests import read_manifest
    from spx.manifests.exporters import export_kaldi
    from spx.yamlio import atomic_write_json, atomic_write_text, dump_yaml

    lower = spec.tokenizer.lowercase
    train = _cleaned(_train_utterances(spec), lower)
    valid = _cleaned(read_manifest(spec.data.valid), lower)
    export_kaldi(train, rd / f"{DATA}/train")
    export_kaldi(valid, rd / f"{DATA}/valid")
    for i, path in enumerate(spec.test_sets):  # for reference/scoring with ESPnet's own tools; spx decodes from manifests
        export_kaldi(_cleaned(read_manifest(path), lower), rd / f"{DATA}/test_{Path(path).stem}")

    cfg, derived = train_config(spec, [u.duration for u in train])
    init = helpers.resolve_init(spec.init_from) if spec.init_from else None
    if init is not None:
        helpers.check_init_architecture(spec, init, cfg)
    header = ("# ESPnet ASR training config rendered by spx from spec.yaml (backends.espnet merged last).\n"
              "# Train with: see native/run.sh (data paths, token list, global_mvn stats and output dir are CLI args).\n")
    atomic_write_text(rd / ASR_CONF, header + dump_yaml(cfg))
    cmds = native_commands(spec, rd, derived)
    atomic_write_json(rd / ASR_COMMANDS, {"commands": cmds, "derived": derived,
                                          "init_from": spec.init_from, "freeze_param": freeze_params(spec)})
    lines = ["#!/usr/bin/env bash", "# The same ESPnet commands spx runs (the spx steps call each entry point's main(cmd)).",
             "# Run from the run dir. init_param/ignore_init_mismatch and ngpu/dist options are decided by the train step",
             "# at run time (they depend on the token list and the device) and logged in train.log.", "set -euo pipefail",
             f"cd {shlex.quote(str(rd.path))}"]
    if spec.tokenizer.type == "bpe":
        lines.append(f"# sentencepiece (bpe, vocab {spec.tokenizer.vocab_size}) is trained on {DATA}/train/text by "
                     f"{helpers.STEPS}.prepare into " + BPE_PREFIX + ".model")
    for name, argv in cmds.items():
        lines.append(shlex.join(["python", "-m", *argv]))
    atomic_write_text(rd / f"{NATIVE}/run.sh", "\n".join(lines) + "\n")

    steps = []
    if spec.init_from and init is None:
        steps.append(helpers.step("fetch_init", "fetch", rd))
    several = derived["world_size"] > 1
    if several:  # one process collects the statistics; train then runs once per rank
        steps.append(helpers.step("prepare", "prepare", rd))
    steps += [  # a single train process prepares first: one espnet2 import (~20-40 s on 2 cores) less
        helpers.step("train", "train", rd, launch="torchrun" if several else "single", log="train.log"),
        helpers.step("decode", "decode", rd, timed=True),  # timed: a process of its own
    ]
    return steps


def collect_extras(rd: RunDir) -> dict[str, Any]:
    cmds = read_json(rd / ASR_COMMANDS) or {}
    return {"native": {"config": str(rd / ASR_CONF), "derived": cmds.get("derived")}}
