"""ESPnet `task: classification`, family kws_classifier: ESPnet's `cls` task (espnet2/tasks/cls.py,
`espnet2.bin.cls_train`, inference `espnet2.bin.cls_inference.Classification`): fbank frontend, utterance MVN (the
task's default), a Conformer encoder and the mean-pooling LinearDecoder, cross-entropy (multi-class).

render writes ESPnet's own layout, as egs2/TEMPLATE/cls1/cls.sh makes it: native/data/{train,valid}/{wav.scp,text}
(`text`: "<utt> <label>"), native/tokens.txt (the classes in spx's class order, then <unk>, as the recipe's
token_list: the model has len(token_list) - 1 outputs), native/conf/train_cls.yaml and native/commands.json /
run.sh (the exact cls_train argv). The speech/label shape files come from the manifest durations (what
--collect_stats would count), so there is no statistics pass: utterance MVN needs none.
Mapping of the shared sizes (docs/backends/espnet.md): channels -> Conformer output_size (4 heads, linear_units
4 x channels), blocks -> num_blocks, kernel_size -> cnn_module_kernel, embedding_dim -> no counterpart (the decoder
pools the encoder output directly). No torch or espnet2 import here.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from spx.adapters.common.cls_family import check_classification, own_run_model
from spx.adapters.common.labels import check_labels
from spx.adapters.common.spec_helpers import deep_merge
from spx.errors import SpxError
from spx.manifests import read_manifest
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import atomic_write_json, atomic_write_text, dump_yaml, read_json

TASK = "classification"
NAME = "kws_classifier"
CPU_PRECISIONS = ("fp32",)  # ESPnet's mixed precision is torch.cuda.amp
INIT_FROM = "an spx espnet kws_classifier run dir (its exported *.pth with config.yaml beside it)"
INFERENCE = "spx.adapters.espnet.steps.cls_decode"
EXPORT = "spx.adapters.espnet.steps.cls_export"
NATIVE = "native"
DATA = f"{NATIVE}/data"
TOKENS = f"{NATIVE}/tokens.txt"
CONF = f"{NATIVE}/conf/train_cls.yaml"
EXP = "checkpoints"


def check(spec: Spec) -> None:
    check_classification(spec, "espnet")
    if spec.augmentation.noise is not None or spec.augmentation.speed_perturb:
        raise SpxError("augmentation.noise / speed_perturb are not rendered for ESPnet classification yet",
                       where="augmentation", hint="drop them for this backend (spec_augment is rendered)")
    if spec.init_from:
        _init_model(spec.init_from)


def _init_model(init_from: str) -> str:
    model = Path(own_run_model(init_from, "espnet", ".pth"))
    if not (model.is_file() and (model.parent / "config.yaml").is_file()):
        raise SpxError(f"init_from {init_from!r}: no ESPnet *.pth with config.yaml beside it", where="init_from",
                       hint=f"give {INIT_FROM}")
    return str(model)


def train_config(spec: Spec) -> dict[str, Any]:
    m, f, t = spec.model, spec.features, spec.training
    cfg: dict[str, Any] = {
        "seed": t.seed,
        "num_workers": t.num_workers,
        "max_epoch": t.epochs or 1,
        "accum_grad": t.grad_accumulation,
        "grad_clip": t.grad_clip if t.grad_clip is not None else float("inf"),
        "keep_nbest_models": t.keep_checkpoints,
        "best_model_criterion": [["valid", "loss", "min"], ["valid", "acc", "max"]],
        "batch_type": "sorted",
        "batch_size": t.batch_size or 16,
        "frontend": "default",
        "frontend_conf": {"fs": f.sample_rate, "n_fft": f.n_fft, "n_mels": f.n_mels,
                          "win_length": int(round(f.win_length_ms * f.sample_rate / 1000)),
                          "hop_length": int(round(f.hop_length_ms * f.sample_rate / 1000))},
        "normalize": "utterance_mvn",
        "encoder": "conformer",
        "encoder_conf": {"output_size": m.channels, "attention_heads": 4, "linear_units": 4 * m.channels,
                         "num_blocks": m.blocks, "dropout_rate": m.dropout, "positional_dropout_rate": m.dropout,
                         "attention_dropout_rate": m.dropout, "input_layer": "conv2d", "normalize_before": True,
                         "macaron_style": True, "rel_pos_type": "latest", "pos_enc_layer_type": "rel_pos",
                         "selfattention_layer_type": "rel_selfattn", "activation_type": "swish",
                         "use_cnn_module": True, "cnn_module_kernel": m.kernel_size},
        "decoder": "linear",
        "decoder_conf": {"pooling": "mean", "dropout": m.dropout},
        "model_conf": {"classification_type": "multi-class"},
        "optim": t.optimizer.name,
        "optim_conf": {"lr": t.optimizer.lr, "weight_decay": t.optimizer.weight_decay},
    }
    if t.max_steps:
        raise SpxError("training.max_steps is not rendered for ESPnet classification yet", where="training.max_steps",
                       hint="set training.epochs")
    if t.optimizer.name in ("adam", "adamw"):
        cfg["optim_conf"]["betas"] = list(t.optimizer.betas)
    else:
        cfg["optim_conf"]["momentum"] = t.optimizer.betas[0]
    s = t.scheduler
    if s.name == "noam":
        cfg.update(scheduler="warmuplr", scheduler_conf={"warmup_steps": max(s.warmup_steps, 1)})
    elif s.name == "cosine":
        steps = t.epochs * -(-_count(spec.data.train) // (cfg["batch_size"] * t.grad_accumulation))
        cfg.update(scheduler="CosineAnnealingWarmupRestarts",
                   scheduler_conf={"first_cycle_steps": max(steps, s.warmup_steps + 1), "warmup_steps": s.warmup_steps,
                                   "max_lr": t.optimizer.lr, "min_lr": s.min_lr})
    else:  # constant: linear warmup to lr, then held (ESPnet piecewise-linear points)
        if s.name == "linear":
            raise SpxError("training.scheduler linear is not rendered for ESPnet classification",
                           where="training.scheduler.name", hint="use cosine, noam or constant")
        cfg.update(scheduler="piecewiselinearwarmuplr",
                   scheduler_conf={"warmup_steps_list": [0, max(s.warmup_steps, 1)],
                                   "warmup_lr_list": [0.0, t.optimizer.lr]})
    sa = spec.augmentation.spec_augment
    if sa is not None and (sa.freq_masks and sa.freq_width or sa.time_masks and sa.time_width):
        cfg["specaug"] = "specaug"
        cfg["specaug_conf"] = {"apply_time_warp": False,
                               "apply_freq_mask": bool(sa.freq_masks and sa.freq_width),
                               "freq_mask_width_range": [0, sa.freq_width], "num_freq_mask": sa.freq_masks,
                               "apply_time_mask": bool(sa.time_masks and sa.time_width),
                               "time_mask_width_range": [0, sa.time_width], "num_time_mask": sa.time_masks}
    return deep_merge(cfg, spec.backends.get("espnet", {}))


def _count(path: str) -> int:
    return len(read_manifest(path, resolve_audio=False))


def _write_data_dir(spec: Spec, path: str, out: Path) -> None:
    """wav.scp, text ("<utt> <label>") and the shape files cls_train reads (samples, and 1 label per clip)."""
    utts = sorted(read_manifest(path), key=lambda u: u.id)
    bad = [u.id for u in utts if u.offset or any(c.isspace() for c in u.id) or any(c.isspace() for c in u.audio)]
    if bad:
        raise SpxError(f"utterance {bad[0]!r}: ESPnet's wav.scp needs whole files and ids/paths without spaces",
                       where=path, hint="use plain file paths and ids without spaces")
    out.mkdir(parents=True, exist_ok=True)
    rate = spec.features.sample_rate
    atomic_write_text(out / "wav.scp", "".join(f"{u.id} {u.audio}\n" for u in utts))
    atomic_write_text(out / "text", "".join(f"{u.id} {u.label}\n" for u in utts))
    atomic_write_text(out / "speech_shape", "".join(f"{u.id} {int(round(u.duration * rate))}\n" for u in utts))
    atomic_write_text(out / "label_shape", "".join(f"{u.id} 1\n" for u in utts))


def native_commands(spec: Spec) -> dict[str, list[str]]:
    argv = ["espnet2.bin.cls_train", "--config", CONF, "--use_preprocessor", "true", "--token_list", TOKENS,
            "--token_type", "word"]
    for split in ("train", "valid"):
        argv += [f"--{split}_data_path_and_name_and_type", f"{DATA}/{split}/wav.scp,speech,sound",
                 f"--{split}_data_path_and_name_and_type", f"{DATA}/{split}/text,label,text",
                 f"--{split}_shape_file", f"{DATA}/{split}/speech_shape",
                 f"--{split}_shape_file", f"{DATA}/{split}/label_shape"]
    argv += ["--fold_length", "80000", "--fold_length", "1", "--resume", "true", "--output_dir", EXP,
             "--use_matplotlib", "false", "--use_tensorboard", "false"]
    if spec.freeze:
        names = []
        for item in spec.freeze:
            names += ["encoder"] if item == "encoder" else ["frontend", "normalize", "encoder.embed"]
        argv += ["--freeze_param", *dict.fromkeys(names)]
    return {"cls_train": argv}


def render(spec: Spec, rd: RunDir) -> list[Step]:
    classes = check_labels(spec)
    _write_data_dir(spec, spec.data.train, rd / f"{DATA}/train")
    _write_data_dir(spec, spec.data.valid, rd / f"{DATA}/valid")
    atomic_write_text(rd / TOKENS, "\n".join([*classes, "<unk>"]) + "\n")
    header = ("# ESPnet cls-task training config rendered by spx from spec.yaml (backends.espnet merged last).\n"
              "# Data paths, token list, shape files and output dir are CLI args: see native/run.sh.\n")
    atomic_write_text(rd / CONF, header + dump_yaml(train_config(spec)))
    cmds = native_commands(spec)
    init = _init_model(spec.init_from) if spec.init_from else None
    atomic_write_json(rd / f"{NATIVE}/commands.json", {"commands": cmds, "init_from": init, "classes": classes})
    lines = ["#!/usr/bin/env bash", "# The ESPnet command spx runs (the train step calls CLSTask.main(cmd=...)); "
             "--init_param and --ngpu are decided at run time (train.log has them).", "set -euo pipefail",
             f"cd {shlex.quote(str(rd.path))}", shlex.join(["python", "-m", *cmds["cls_train"]])]
    atomic_write_text(rd / f"{NATIVE}/run.sh", "\n".join(lines) + "\n")
    py = sys.executable
    return [Step("train", [py, "-m", "spx.adapters.espnet.steps.cls_train", str(rd)], log="train.log"),
            Step("decode", [py, "-m", "spx.adapters.espnet.steps.cls_decode", str(rd)], timed=True)]


def collect_extras(rd: RunDir) -> dict[str, Any]:
    return {"native": {"config": str(rd / CONF), "commands": read_json(rd / f"{NATIVE}/commands.json")}}
