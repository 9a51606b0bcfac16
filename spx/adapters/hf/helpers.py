"""What the hf families share at render time (no torch, no transformers imported here): the pretrained model's
config.json, the training data rows, and TrainingArguments rendered from the spec (native/training_args.json).

native/ of an hf run:
  training_args.json   the keyword arguments of transformers.TrainingArguments (Seq2SeqTrainingArguments for
                       whisper), exactly what the train step passes; `backends.hf.training_args` merged in untouched
  spx_hf.json          what TrainingArguments cannot say: the pretrained model, the tokenizer, freezing, the LoRA
                       config (peft.LoraConfig kwargs), the optimizer's parameter groups, early stopping, export
  train.jsonl, valid.jsonl   the rows the datasets.Dataset is built from ({id, audio, offset, duration, text}:
                       conformed audio, cleaned text, duration filters applied)
  vocab.json           ssl_ctc with the char tokenizer: Wav2Vec2CTCTokenizer's vocabulary
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from spx.adapters.common.spec_helpers import FREEZE_LAYERS, deep_merge, exported_model_dir, pretrained_model
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import atomic_write_json, atomic_write_text

MODULE = "spx.adapters.hf"
EXPORT_INFO = "spx_export.json"
PASS_THROUGH = {"training_args", "merge_lora"}  # the keys backends.hf takes


def local_config(name: str, where: str) -> dict[str, Any] | None:
    """config.json of a local pretrained folder; None for a hub name (read when the child downloads it)."""
    p = Path(name).expanduser()
    if not p.exists():
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise SpxError(f"{where} {name!r} does not exist", where=where,
                           hint="give a hub model name (facebook/wav2vec2-base) or a local Transformers folder")
        return None
    cfg = p / "config.json"
    if not cfg.is_file():
        raise SpxError(f"{where} {name!r} has no config.json: not a Transformers model folder", where=where,
                       hint="point it at a folder written by save_pretrained (config.json + weights)")
    try:
        return json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SpxError(f"{cfg}: not valid JSON ({exc})", where=where) from None


def check_freeze_layers(spec: Spec, config: dict[str, Any] | None) -> None:
    """encoder.layers:N against the pretrained model's layer count (when its config is here to read)."""
    layers = (config or {}).get("encoder_layers") or (config or {}).get("num_hidden_layers")
    for item in spec.freeze:
        if not item.startswith(FREEZE_LAYERS):
            continue
        raw = item[len(FREEZE_LAYERS):]
        if not raw.isdigit() or int(raw) < 1:
            raise SpxError(f"freeze item {item!r}: {raw!r} is not a number of layers >= 1", where="freeze",
                           hint="e.g. freeze: ['encoder.layers:4'] freezes the first four encoder layers")
        if layers is not None and int(raw) > layers:
            raise SpxError(f"freeze item {item!r}: the pretrained encoder has {layers} layers", where="freeze",
                           hint=f"use encoder.layers:N with 1 <= N <= {layers}, or 'encoder' to freeze all of it")


def check_common(spec: Spec, family: str) -> None:
    """What no hf family renders: refused by key before anything is written."""
    tr = spec.training
    if tr.batch_seconds is not None:
        raise SpxError("training.batch_seconds (dynamic batches) is not rendered by the hf backend: Trainer batches "
                       "by count", where="training.batch_seconds", hint="set training.batch_size instead")
    if spec.augmentation.speed_perturb:
        raise SpxError("augmentation.speed_perturb is not rendered by the hf backend yet",
                       where="augmentation.speed_perturb", hint="remove it for this backend")
    if spec.augmentation.noise is not None:
        raise SpxError("augmentation.noise is not rendered by the hf backend yet", where="augmentation.noise",
                       hint="remove it for this backend")
    if spec.resources.launcher == "slurm" and spec.resources.nodes > 1:
        raise SpxError("several nodes are not wired for the hf backend yet", where="resources.nodes",
                       hint="use nodes: 1 (devices: N runs N processes under torchrun)")
    extra = spec.backends.get("hf", {})
    unknown = sorted(set(extra) - PASS_THROUGH)
    if unknown:
        raise SpxError(f"backends.hf: unknown key(s) {unknown}", where="backends.hf",
                       hint=f"backends.hf takes {sorted(PASS_THROUGH)}: training_args (TrainingArguments kwargs, "
                            "merged into native/training_args.json) and merge_lora (bool)")
    if "training_args" in extra and not isinstance(extra["training_args"], dict):
        raise SpxError("backends.hf.training_args must be a mapping of TrainingArguments keywords",
                       where="backends.hf.training_args")
    if extra.get("merge_lora") and spec.finetune.method != "lora":
        raise SpxError("backends.hf.merge_lora applies to finetune.method lora", where="backends.hf.merge_lora",
                       hint="drop it, or set finetune.method: lora")
    if spec.init_from:
        init = resolve_init_from(spec.init_from, family)
        if spec.finetune.method == "lora" and json.loads((init / EXPORT_INFO).read_text()).get("method") == "lora":
            raise SpxError(f"init_from {init} is a LoRA model; LoRA on top of another LoRA is not wired",
                           where="finetune.method", hint="fine-tune it with finetune.method: full (its adapter is "
                                                         "merged into the base on load), or start from the base")


def resolve_init_from(init_from: str, family: str) -> Path:
    """An spx hf run dir (its train_summary.json names the export) or an export folder (spx_export.json)."""
    p = exported_model_dir(init_from, "a finished hf run dir, or its checkpoints/export folder")
    if not (p / EXPORT_INFO).is_file():
        raise SpxError(f"init_from {p} is not a model exported by spx's hf backend (no {EXPORT_INFO})",
                       where="init_from", hint="point init_from at a finished hf run dir or its checkpoints/export")
    info = json.loads((p / EXPORT_INFO).read_text())
    if info.get("family") != family:
        raise SpxError(f"init_from {p} is an hf {info.get('family')} model; this job is {family}", where="init_from",
                       hint="fine-tune from a run of the same family")
    return p


def data_rows(spec: Spec, path: str) -> list[dict[str, Any]]:
    """Training/validation rows for datasets, the spec's duration filters applied: ASR rows carry the cleaned text
    (empty texts dropped), classification rows the label (every row has one: labels.check_labels ran first)."""
    from spx.adapters.common.child import clean_transcript
    from spx.manifests import iter_manifest

    d = spec.data
    rows = []
    for u in iter_manifest(path):
        if (d.max_duration is not None and u.duration > d.max_duration) or (
                d.min_duration is not None and u.duration < d.min_duration):
            continue
        row = {"id": u.id, "audio": u.audio, "offset": u.offset, "duration": u.duration}
        if spec.task == "classification":
            row["label"] = str(u.label)
        else:
            row["text"] = clean_transcript(u.text or "", spec.tokenizer.lowercase)
            if not row["text"]:
                continue
        rows.append(row)
    if not rows:
        raise SpxError(f"no usable utterances in {path} (all empty or filtered by duration)",
                       hint="check data.* and data.min_duration/max_duration")
    return rows


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


SCHEDULERS = {  # spec scheduler -> (TrainingArguments lr_scheduler_type, what min_lr becomes)
    "cosine": "cosine_with_min_lr", "linear": "linear", "constant": "constant_with_warmup", "noam": "inverse_sqrt",
}


def training_args(spec: Spec, run_dir: RunDir, monitor_wer: bool, seq2seq: bool) -> dict[str, Any]:
    """TrainingArguments keywords from the spec (the mapping table of docs/backends/hf.md)."""
    tr, res = spec.training, spec.resources
    early = tr.early_stopping
    monitor = early.monitor if early else "valid_loss"
    args: dict[str, Any] = {
        "output_dir": str(run_dir / "checkpoints"),
        "num_train_epochs": tr.epochs or 1,
        "max_steps": tr.max_steps or -1,
        "per_device_train_batch_size": tr.batch_size,
        "per_device_eval_batch_size": spec.decoding.batch_size,
        "gradient_accumulation_steps": tr.grad_accumulation,
        "learning_rate": tr.optimizer.lr,
        "weight_decay": tr.optimizer.weight_decay,
        "adam_beta1": tr.optimizer.betas[0],
        "adam_beta2": tr.optimizer.betas[1],
        "optim": "sgd" if tr.optimizer.name == "sgd" else "adamw_torch",
        "lr_scheduler_type": SCHEDULERS[tr.scheduler.name],
        "lr_scheduler_kwargs": {"min_lr": tr.scheduler.min_lr} if tr.scheduler.name == "cosine" else {},
        "warmup_steps": tr.scheduler.warmup_steps,
        "max_grad_norm": tr.grad_clip or 0.0,
        "fp16": tr.precision == "fp16",
        "bf16": tr.precision == "bf16",
        "use_cpu": res.accelerator == "cpu",
        "seed": tr.seed,
        "data_seed": tr.seed,
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "logging_strategy": "epoch",
        "save_total_limit": tr.keep_checkpoints,
        "load_best_model_at_end": True,
        "metric_for_best_model": "wer" if monitor == "valid_wer" else "loss",
        "greater_is_better": False,
        "dataloader_num_workers": tr.num_workers,
        "remove_unused_columns": False,
        "label_names": ["labels"],
        "report_to": "none",
        "disable_tqdm": True,
        # several CPU processes need gloo named (accelerate runs one process otherwise); on GPUs: nccl by default
        "ddp_backend": "gloo" if res.accelerator == "cpu" and res.devices * res.nodes > 1 else None,
        "ddp_find_unused_parameters": False,
    }
    if seq2seq:
        args.update({"predict_with_generate": monitor_wer, "generation_max_length": spec.model.max_new_tokens,
                     "generation_num_beams": spec.decoding.beam_size if spec.decoding.strategy == "beam" else 1})
    return deep_merge(args, spec.backends.get("hf", {}).get("training_args", {}))


def optimizer_settings(spec: Spec) -> dict[str, Any]:
    opt = spec.training.optimizer
    return {"name": opt.name, "lr": opt.lr, "pretrained_lr": opt.pretrained_lr, "weight_decay": opt.weight_decay,
            "betas": list(opt.betas)}


def finetune_settings(spec: Spec, default_targets: list[str], head: list[str]) -> dict[str, Any]:
    """peft.LoraConfig keywords (lora) and the step count the pretrained part waits."""
    ft = spec.finetune
    out: dict[str, Any] = {"method": ft.method, "freeze_pretrained_steps": ft.freeze_pretrained_steps,
                           "merge_lora": bool(spec.backends.get("hf", {}).get("merge_lora", False))}
    if ft.method == "adapter":
        out["adapter_dim"] = ft.rank
    if ft.method == "lora":
        out["lora_config"] = {"r": ft.rank, "lora_alpha": ft.alpha, "lora_dropout": ft.dropout,
                              "target_modules": ft.target_modules or default_targets, "modules_to_save": head,
                              "bias": "none"}
    return out


def render_common(spec: Spec, run_dir: RunDir, family: str, settings: dict[str, Any], args: dict[str, Any],
                  train_step: str, decode_step: str = "decode") -> list[Step]:
    """Write native/ and return the steps: train (torchrun: one process per device) and the timed decode."""
    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    write_rows(data_rows(spec, spec.data.train), native / "train.jsonl")
    write_rows(data_rows(spec, spec.data.valid), native / "valid.jsonl")
    atomic_write_json(native / "training_args.json", args)
    init = str(resolve_init_from(spec.init_from, family)) if spec.init_from else None
    atomic_write_json(native / "spx_hf.json", {"family": family, "pretrained": pretrained_model(spec),
                                               "init_from": init, "freeze": list(spec.freeze),
                                               "optimizer": optimizer_settings(spec),
                                               "early_stopping": spec.training.early_stopping.model_dump()
                                               if spec.training.early_stopping else None, **settings})
    py = sys.executable
    env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if spec.resources.devices * spec.resources.nodes > 1 and spec.resources.threads is None:
        env["OMP_NUM_THREADS"] = "1"
    return [
        Step("train", [py, "-m", f"{MODULE}.steps.{train_step}", str(run_dir)], launch="torchrun", log="train.log",
             env=env),
        Step("decode", [py, "-m", f"{MODULE}.steps.{decode_step}", str(run_dir)], timed=True,
             env={"TOKENIZERS_PARALLELISM": "false"}),
    ]


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {"native_config": str(run_dir / "native" / "training_args.json")}
