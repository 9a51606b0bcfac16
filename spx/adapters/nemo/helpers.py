"""What the NeMo families share (the backend's leaf module: it imports no other NeMo family or step module, and no
torch or NeMo): the spec's training settings as NeMo's `optim` / Lightning `trainer` / `exp_manager` config blocks,
the .nemo a finished spx run exported, NeMo JSONL manifests of whole audio files, the rendered config written with
`backends.nemo` merged in, and the TTS families' mel settings and checks."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from spx.adapters.common.spec_helpers import deep_merge, tts_mel_settings
from spx.errors import SpxError
from spx.manifests import Utterance, read_manifest
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.spec.models import Training
from spx.yamlio import atomic_write_text, read_json

# the TTS families' (FastPitch, HiFi-GAN) native config and what their collect / synth step read
TTS_CONFIG = "native/tts_config.yaml"
TTS_INFO = "native/tts_info.json"

# spec scheduler -> NeMo scheduler (nemo.core.optim.lr_scheduler). All reach the spec's lr after warmup.
SCHEDULERS = {
    "cosine": "CosineAnnealing",            # warmup, cosine decay to min_lr
    "noam": "InverseSquareRootAnnealing",   # warmup, lr / sqrt(step / warmup) (Noam shape, peak = lr)
    "constant": "WarmupPolicy",             # warmup, then constant lr
    "linear": "WarmupAnnealing",            # warmup, linear decay to min_lr
}
# the TTS families map only these two
TTS_SCHEDULERS = ("cosine", "constant")


def optimizer_moments(t: Training) -> dict[str, Any]:
    """SGD's momentum or the Adam family's betas."""
    return {"momentum": 0.9} if t.optimizer.name == "sgd" else {"betas": list(t.optimizer.betas)}


def sched_config(t: Training) -> dict[str, Any]:
    """NeMo's `optim.sched` block: warmup, and the floor of the schedules that decay (all but constant)."""
    sched: dict[str, Any] = {"name": SCHEDULERS[t.scheduler.name], "warmup_steps": t.scheduler.warmup_steps}
    if t.scheduler.name != "constant":
        sched["min_lr"] = t.scheduler.min_lr
    return sched


def optim_config(t: Training) -> dict[str, Any]:
    """NeMo's `model.optim` block for an optimizer NeMo names (adam, adamw, sgd)."""
    return {"name": t.optimizer.name, "lr": t.optimizer.lr, "weight_decay": t.optimizer.weight_decay,
            "sched": sched_config(t), **optimizer_moments(t)}


def trainer_config(spec: Spec, max_epochs: int, *, devices: int = 1, nodes: int = 1, strategy: str = "auto",
                   precision: int | str = 32) -> dict[str, Any]:
    """The Lightning Trainer's arguments: spx's checkpoints come from exp_manager, its progress from spx's callback."""
    t = spec.training
    return {
        "devices": devices,
        "num_nodes": nodes,
        "accelerator": spec.resources.accelerator,  # auto: the child picks gpu or cpu
        "strategy": strategy,
        "max_epochs": -1 if t.max_steps else max_epochs,
        "max_steps": t.max_steps or -1,
        "accumulate_grad_batches": t.grad_accumulation,
        "gradient_clip_val": t.grad_clip or 0.0,
        "precision": precision,
        "log_every_n_steps": 10,
        "check_val_every_n_epoch": 1,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,  # exp_manager adds its own ModelCheckpoint
        "logger": False,                # exp_manager decides the loggers
        "enable_progress_bar": False,
        "enable_model_summary": True,
        "benchmark": False,
    }


def logger_config(spec: Spec, run_dir: RunDir) -> dict[str, Any]:
    """exp_manager's own loggers as spec.logging asks; they write into its explicit_log_dir (logs/nemo/)."""
    lg = spec.logging
    project = lg.project or spec.name
    out: dict[str, Any] = {"create_tensorboard_logger": lg.tensorboard, "create_wandb_logger": lg.wandb,
                           "create_mlflow_logger": lg.mlflow}
    if lg.wandb:
        out["wandb_logger_kwargs"] = {"project": project, "name": run_dir.path.name,
                                      "save_dir": str(run_dir / "logs" / "wandb")}
    if lg.mlflow:
        out["mlflow_logger_kwargs"] = {"experiment_name": project, "run_name": run_dir.path.name}
    return out


def exp_manager_config(spec: Spec, run_dir: RunDir, monitor: str, mode: str) -> dict[str, Any]:
    """exp_manager keeps the top-k checkpoints by `monitor` in run_dir/checkpoints, resumes from *last.ckpt, and stops
    early when the spec asks; spx exports the final .nemo itself (checkpoints/model.nemo)."""
    t = spec.training
    exp_manager: dict[str, Any] = {
        # not the checkpoint dir: on resume exp_manager moves the log dir's old files into run_N/
        "explicit_log_dir": str(run_dir / "logs" / "nemo"),
        "resume_if_exists": True,
        "resume_ignore_no_checkpoint": True,
        **logger_config(spec, run_dir),
        "log_step_timing": False,
        "log_tflops_per_sec_per_gpu": False,
        "create_preemption_callback": False,
        "seconds_to_sleep": 0,
        "create_checkpoint_callback": True,
        "checkpoint_callback_params": {
            "dirpath": str(run_dir / "checkpoints"),
            "filename": "{epoch}-{step}-{" + monitor + ":.4f}",
            "monitor": monitor,
            "mode": mode,
            "save_top_k": t.keep_checkpoints,
            "save_last": True,
            "always_save_nemo": False,
            "save_nemo_on_train_end": False,  # spx exports the final .nemo itself (model.nemo)
            "every_n_epochs": 1,
            # save after the whole epoch (validation included), so a resumed run starts a fresh epoch
            "save_on_train_epoch_end": True,
        },
        "create_early_stopping_callback": t.early_stopping is not None,
    }
    if t.early_stopping:
        exp_manager["early_stopping_callback_params"] = {
            "monitor": monitor, "mode": mode, "patience": t.early_stopping.patience, "min_delta": 0.0,
            "check_finite": True, "verbose": True,
        }
    return exp_manager


def exported_model_of_run(run: Path, init_from: str) -> str:
    """The .nemo an spx nemo run dir exported (its train_summary.json names it), resolved."""
    exported = (read_json(run / "train_summary.json") or {}).get("exported_model")
    if not exported or not Path(exported).is_file():
        raise SpxError(f"init_from {init_from!r}: the run has no exported .nemo model", where="init_from",
                       hint="finish that run first (its train step exports checkpoints/model.nemo), or pass a .nemo "
                            "file")
    return str(Path(exported).resolve())


# config keys that only act in training (dropout, dither) or name the adapter-capable subclass: a fine-tuned model may
# set them differently from its init_from source; every other key both configs have must be the same
TRAINING_ONLY_KEYS = ("_target_", "dither", "dropout", "dropout_pre_encoder", "dropout_emb", "dropout_att")


def nemo_model_config(path: str) -> dict[str, Any]:
    """The model config inside a .nemo archive (a tar holding model_config.yaml), read without NeMo."""
    import tarfile

    import yaml

    try:
        with tarfile.open(path) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("model_config.yaml")), None)
            if member is None:
                raise SpxError(f"init_from {path!r} holds no model_config.yaml: not a NeMo model", where="init_from",
                               hint="pass a .nemo that NeMo's save_to wrote (a run's checkpoints/model.nemo)")
            return yaml.safe_load(tar.extractfile(member).read()) or {}
    except (tarfile.TarError, OSError, yaml.YAMLError) as exc:
        raise SpxError(f"init_from {path!r} cannot be read as a .nemo archive: {exc}", where="init_from",
                       hint="pass a .nemo that NeMo's save_to wrote (a run's checkpoints/model.nemo)") from None


def tokenizer_kind(model_cfg: Any) -> str:
    """'bpe' for a model config with a tokenizer (EncDecCTCModelBPE), 'char' for one with labels."""
    return "bpe" if model_cfg.get("tokenizer") is not None else "char"


def architecture_differences(ours: Any, theirs: Any) -> list[str]:
    """Keys of the preprocessor and encoder configs whose values differ between the job's model and the source's
    (both dict-like), training-only keys aside: loading weights into a model built differently would compute
    something else."""
    out = []
    for block in ("preprocessor", "encoder"):
        a, b = ours.get(block) or {}, theirs.get(block) or {}
        for key in a:
            if key in TRAINING_ONLY_KEYS or key not in b:
                continue
            mine, source = a[key], b[key]
            if isinstance(mine, (list, tuple)) or isinstance(source, (list, tuple)):
                mine, source = list(mine), list(source)
            if mine != source:
                out.append(f"{block}.{key}: {mine!r} here, {source!r} in the source")
    return out


def write_config(spec: Spec, path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """backends.nemo deep-merged untouched into the rendered config, then written atomically as YAML."""
    from omegaconf import OmegaConf

    extra = spec.backends.get("nemo") or {}
    if extra:
        cfg = deep_merge(cfg, extra)
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return cfg


def write_whole_file_manifest(src: str, dst: Path, row: Callable[[Utterance], dict[str, Any]], dataset: str,
                              empty: str, empty_hint: str, lo: float | None = None, hi: float | None = None) -> int:
    """A NeMo JSONL manifest of `row(u)` for each utterance of `src` whose duration is within [lo, hi]; `dataset`
    (the NeMo dataset class) reads whole files, so a segment row is refused. `empty`: why none may be left."""
    rows = []
    for u in read_manifest(src):
        if (lo is not None and u.duration < lo) or (hi is not None and u.duration > hi):
            continue
        if u.offset:
            raise SpxError(f"row {u.id!r} is a segment (offset {u.offset}); NeMo's {dataset} reads whole files",
                           where=src, hint="cut the segments into their own audio files first")
        rows.append({"audio_filepath": str(Path(u.audio).resolve()), "duration": u.duration, **row(u)})
    if not rows:
        raise SpxError(f"no usable utterances ({empty})", where=src, hint=empty_hint)
    atomic_write_text(dst, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


# ------------------------------------------------------------------ TTS families (FastPitch, HiFi-GAN)
mel_settings = tts_mel_settings  # both TTS families use it (FastPitch's targets, the vocoder's input)


def check_no_duration_teacher(spec: Spec) -> None:
    if spec.tts.duration_teacher is not None:
        raise SpxError("tts.duration_teacher is set, but NeMo FastPitch learns its durations with its internal aligner "
                       "(learn_alignment: true) and takes no teacher", where="tts.duration_teacher",
                       hint="remove tts.duration_teacher for the nemo backend (it is for ESPnet FastSpeech2)")


def resolve_tts_init(init_from: str, what: str) -> str:
    """A `what` (FastPitch, HiFi-GAN) .nemo, or an spx nemo run dir of the same family (its exported .nemo)."""
    p = Path(init_from).expanduser()
    if p.is_dir():
        return exported_model_of_run(p, init_from)
    if p.suffix != ".nemo" or not p.is_file():
        raise SpxError(f"init_from {init_from!r} is not an existing {what} .nemo file", where="init_from",
                       hint="pass a .nemo (a nemo TTS run's checkpoints/model.nemo) or the spx nemo TTS run dir")
    return str(p.resolve())


def check_tts_early_stopping(spec: Spec) -> None:
    """The TTS models report val_loss only: early stopping watches that."""
    es = spec.training.early_stopping
    if es and es.monitor != "valid_loss":
        raise SpxError(f"training.early_stopping.monitor {es.monitor!r} has no meaning for TTS",
                       where="training.early_stopping.monitor", hint="use valid_loss")


def tts_trainer_and_exp_manager(spec: Spec, run_dir: RunDir) -> tuple[dict[str, Any], dict[str, Any]]:
    """One fp32 Lightning process; exp_manager keeps the top-k checkpoints by val_loss."""
    t = spec.training
    return trainer_config(spec, t.epochs or 100), exp_manager_config(spec, run_dir, "val_loss", "min")


def tts_config(spec: Spec, run_dir: RunDir, model: dict[str, Any], trainer: dict[str, Any],
               exp_manager: dict[str, Any], init_from: str | None, **spx: Any) -> dict[str, Any]:
    """The whole TTS config: NeMo's model / trainer / exp_manager, and the `spx:` settings NeMo has no key for (read
    and removed by the tts_train step)."""
    return {
        "name": spec.name,
        "model": model,
        "trainer": trainer,
        "exp_manager": exp_manager,
        "spx": {"seed": spec.training.seed, "threads": spec.resources.threads,
                "exported_model": str(run_dir / "checkpoints/model.nemo"), "init_from": init_from, **spx},
    }


def tts_steps(run_dir: RunDir, prepare: bool) -> list[Step]:
    """The TTS families' child steps: [tts_prepare (FastPitch's pitch statistics),] tts_train, tts_synth."""
    py, steps = sys.executable, "spx.adapters.nemo.steps"
    return [
        *([Step("tts_prepare", [py, "-m", f"{steps}.tts_prepare", str(run_dir)], log="logs/tts_prepare.log")]
          if prepare else []),
        Step("tts_train", [py, "-m", f"{steps}.tts_train", str(run_dir)], log="train.log"),
        Step("tts_synth", [py, "-m", f"{steps}.tts_synth", str(run_dir)], timed=True),
    ]
