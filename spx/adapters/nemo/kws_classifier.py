"""NeMo `task: classification`, family kws_classifier: NeMo's EncDecClassificationModel with a MatchboxNet encoder
(ConvASREncoder of separable 1-D conv "jasper" blocks) and ConvASRDecoderClassification (average pooling + linear),
the model of NeMo's speech-commands example (examples/asr/conf/matchboxnet/matchboxnet_3x1x64_v1.yaml), trained by
NeMo's own Lightning loop with exp_manager (resume_if_exists) as the ASR family.

Mapping of the shared sizes (docs/backends/nemo.md): a prologue block of `channels` filters (kernel 11), `blocks`
residual separable blocks of `channels` filters with kernels kernel_size + 2i (MatchboxNet's
growing kernels 13/15/17 for kernel_size 13), epilogue of embedding_dim filters (kernel 29, dilation 2) and a 1x1
conv of embedding_dim filters, which the decoder pools. Log-mel features (n_mels) like the other backends, not
MatchboxNet's MFCC, so the three backends see the same features.
No torch or NeMo import here: the child steps (steps/cls_train, steps/cls_decode) import the toolkit.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from spx.adapters.common.cls_family import check_classification, own_run_model
from spx.adapters.common.labels import check_labels
from spx.adapters.common.spec_helpers import deep_merge
from spx.manifests import iter_manifest
from spx.manifests.exporters import export_nemo
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import atomic_write_text, dump_yaml, read_json

TASK = "classification"
NAME = "kws_classifier"
CPU_PRECISIONS = ("fp32", "bf16")
INIT_FROM = "an spx nemo kws_classifier run dir or its .nemo (train_summary.json exported_model)"
INFERENCE = "spx.adapters.nemo.steps.cls_decode"
EXPORT = "spx.adapters.nemo.steps.cls_export"
CONFIG = "native/config.yaml"
SCHEDULERS = {"cosine": "CosineAnnealing", "noam": "InverseSquareRootAnnealing", "constant": "WarmupPolicy",
              "linear": "WarmupAnnealing"}
PRECISION = {"fp32": 32, "fp16": "16-mixed", "bf16": "bf16-mixed"}


def check(spec: Spec) -> None:
    check_classification(spec, "nemo")
    if spec.init_from:
        own_run_model(spec.init_from, "nemo", ".nemo")


def _block(filters: int, kernel: int, dropout: float, residual: bool, dilation: int = 1) -> dict[str, Any]:
    return {"filters": filters, "repeat": 1, "kernel": [kernel], "stride": [1], "dilation": [dilation],
            "dropout": dropout, "residual": residual, "separable": True, "kernel_size_factor": 1.0}


def model_config(spec: Spec, classes: list[str], native: Path) -> dict[str, Any]:
    m, f, t = spec.model, spec.features, spec.training

    def ds(manifest: str, train: bool) -> dict[str, Any]:
        return {"manifest_filepath": manifest, "sample_rate": f.sample_rate, "labels": classes,
                "batch_size": t.batch_size or 16, "shuffle": train, "num_workers": t.num_workers,
                "pin_memory": False, "trim_silence": False}

    jasper = [_block(m.channels, 11, m.dropout, False)]
    jasper += [_block(m.channels, m.kernel_size + 2 * i, m.dropout, True) for i in range(m.blocks)]
    jasper += [_block(m.embedding_dim, 29, m.dropout, False, dilation=2),
               {**_block(m.embedding_dim, 1, m.dropout, False), "separable": False}]
    optim: dict[str, Any] = {"name": t.optimizer.name, "lr": t.optimizer.lr, "weight_decay": t.optimizer.weight_decay,
                             "sched": {"name": SCHEDULERS[t.scheduler.name], "warmup_steps": t.scheduler.warmup_steps,
                                       "min_lr": t.scheduler.min_lr}}
    if t.optimizer.name == "sgd":
        optim["momentum"] = 0.9
    else:
        optim["betas"] = list(t.optimizer.betas)
    if t.scheduler.name == "constant":
        optim["sched"].pop("min_lr")
    model: dict[str, Any] = {
        "sample_rate": f.sample_rate,
        "labels": classes,
        "train_ds": ds(str(native / "train.json"), True),
        "validation_ds": ds(str(native / "valid.json"), False),
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": f.sample_rate, "normalize": "per_feature",
                         "window_size": f.win_length_ms / 1000.0, "window_stride": f.hop_length_ms / 1000.0,
                         "window": "hann", "features": f.n_mels, "n_fft": f.n_fft, "log": True, "dither": 1e-5,
                         "pad_to": 0, "frame_splicing": 1},
        "spec_augment": None,
        "encoder": {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": f.n_mels,
                    "activation": "relu", "conv_mask": True, "jasper": jasper},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoderClassification",
                    "feat_in": m.embedding_dim, "num_classes": len(classes), "return_logits": True,
                    "pooling_type": "avg"},
        "optim": optim,
    }
    sa = spec.augmentation.spec_augment
    if sa is not None:
        model["spec_augment"] = {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
                                 "freq_masks": sa.freq_masks, "freq_width": sa.freq_width,
                                 "time_masks": sa.time_masks, "time_width": sa.time_width, "rect_masks": 0}
    return model


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    classes = check_labels(spec)
    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    export_nemo(iter_manifest(spec.data.train), native / "train.json")  # NeMo manifests carry "label"
    export_nemo(iter_manifest(spec.data.valid), native / "valid.json")
    t = spec.training
    ckpt_dir = run_dir / "checkpoints"
    cfg: dict[str, Any] = {
        "name": spec.name,
        "model": model_config(spec, classes, native),
        "trainer": {"devices": 1, "num_nodes": 1,
                    "accelerator": {"auto": "auto", "cpu": "cpu", "gpu": "gpu"}[spec.resources.accelerator],
                    "strategy": "auto", "max_epochs": -1 if t.max_steps else t.epochs, "max_steps": t.max_steps or -1,
                    "accumulate_grad_batches": t.grad_accumulation, "gradient_clip_val": t.grad_clip or 0.0,
                    "precision": PRECISION[t.precision], "log_every_n_steps": 10, "check_val_every_n_epoch": 1,
                    "num_sanity_val_steps": 0, "enable_checkpointing": False, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": True, "benchmark": False},
        "exp_manager": {
            "explicit_log_dir": str(run_dir / "logs" / "nemo"), "resume_if_exists": True,
            "resume_ignore_no_checkpoint": True, "create_tensorboard_logger": False, "create_wandb_logger": False,
            "log_step_timing": False, "create_preemption_callback": False, "seconds_to_sleep": 0,
            "create_checkpoint_callback": True,
            "checkpoint_callback_params": {
                "dirpath": str(ckpt_dir), "filename": "{epoch}-{step}-{val_loss:.4f}", "monitor": "val_loss",
                "mode": "min", "save_top_k": t.keep_checkpoints, "save_last": True, "always_save_nemo": False,
                "save_nemo_on_train_end": False, "every_n_epochs": 1, "save_on_train_epoch_end": True},
        },
        # spx-run settings NeMo has no config key for (read by spx.adapters.nemo.steps.cls_train)
        "spx": {"seed": t.seed, "freeze": list(spec.freeze), "threads": spec.resources.threads,
                "init_from": own_run_model(spec.init_from, "nemo", ".nemo") if spec.init_from else None,
                "exported_model": str(ckpt_dir / "model.nemo")},
    }
    extra = spec.backends.get("nemo") or {}
    if extra:
        cfg = deep_merge(cfg, extra)
    atomic_write_text(run_dir / CONFIG, "# NeMo EncDecClassificationModel (MatchboxNet) config rendered by spx from "
                                        "spec.yaml (backends.nemo merged last)\n" + dump_yaml(cfg))
    py = sys.executable
    return [Step("train", [py, "-m", "spx.adapters.nemo.steps.cls_train", str(run_dir)], log="train.log"),
            Step("decode", [py, "-m", "spx.adapters.nemo.steps.cls_decode", str(run_dir)], timed=True)]


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {"native_config": str(run_dir / CONFIG),
            "model_summary": read_json(Path(run_dir / "native" / "model_summary.json"))}
