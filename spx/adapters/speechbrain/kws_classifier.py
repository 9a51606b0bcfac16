"""SpeechBrain `task: classification`, family kws_classifier: ECAPA-TDNN (speechbrain.lobes.models.ECAPA_TDNN) +
its cosine `Classifier`, trained with additive-angular-margin softmax in a Brain, as SpeechBrain's VoxLingua107
language-id and speaker recipes do. Fbank features, sentence mean normalization (InputNormalization).

render writes native/{train,valid}.csv (SpeechBrain's CSV layout with a `label` column), native/classes.txt and
native/config.yaml (every size and setting the child builds the modules from). No torch or SpeechBrain import here.
Mapping of the shared sizes (docs/backends/speechbrain.md): channels -> ECAPA channels of the first TDNN block and
of each SE-Res2Net block (the multi-layer aggregation conv has blocks x channels), blocks -> SE-Res2Net blocks
(dilations 2, 3, 4, ...), kernel_size -> their kernel (the first TDNN block keeps ECAPA's 5), embedding_dim ->
lin_neurons, res2net_scale 4, se/attention channels channels // 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from spx.adapters.common.cls_family import check_classification, own_run_model
from spx.adapters.common.labels import check_labels
from spx.adapters.common.spec_helpers import deep_merge
from spx.manifests import iter_manifest
from spx.manifests.exporters import export_speechbrain_csv
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import atomic_write_text, dump_yaml, read_json

TASK = "classification"
NAME = "kws_classifier"
CPU_PRECISIONS = ("fp32",)
INIT_FROM = "an spx speechbrain kws_classifier run dir (its checkpoints/export)"
INFERENCE = "spx.adapters.speechbrain.steps.cls_decode"
EXPORT = "spx.adapters.speechbrain.steps.cls_export"
CONFIG = "native/config.yaml"


def check(spec: Spec) -> None:
    check_classification(spec, "speechbrain")
    if spec.init_from:
        own_run_model(spec.init_from, "speechbrain")


def ecapa_config(spec: Spec, n_classes: int) -> dict[str, Any]:
    m = spec.model
    c = m.channels
    return {
        "embedding_model": {  # speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN(**this)
            "input_size": spec.features.n_mels,
            "channels": [c] * (m.blocks + 1) + [c * m.blocks],
            "kernel_sizes": [5] + [m.kernel_size] * m.blocks + [1],
            "dilations": [1] + [2 + i for i in range(m.blocks)] + [1],
            "attention_channels": max(c // 2, 8),
            "res2net_scale": 4,
            "se_channels": max(c // 2, 8),
            "global_context": True,
            "lin_neurons": m.embedding_dim,
            "groups": [1] * (m.blocks + 2),
            "dropout": m.dropout,
        },
        "classifier": {"input_size": m.embedding_dim, "out_neurons": n_classes, "lin_blocks": 0},
        # speechbrain.nnet.losses.AdditiveAngularMargin, as the VoxLingua107 ECAPA recipe
        "loss": {"margin": 0.2, "scale": 30.0},
    }


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    classes = check_labels(spec)
    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    export_speechbrain_csv(iter_manifest(spec.data.train), native / "train.csv")
    export_speechbrain_csv(iter_manifest(spec.data.valid), native / "valid.csv")
    atomic_write_text(native / "classes.txt", "\n".join(classes) + "\n")
    f, t = spec.features, spec.training
    cfg: dict[str, Any] = {
        "classes": classes,
        "features": {"sample_rate": f.sample_rate, "n_mels": f.n_mels, "n_fft": f.n_fft,
                     "win_length": f.win_length_ms, "hop_length": f.hop_length_ms},  # speechbrain Fbank (ms)
        "normalize": {"norm_type": "sentence", "std_norm": False},  # speechbrain InputNormalization
        **ecapa_config(spec, len(classes)),
        "train_csv": str(native / "train.csv"),
        "valid_csv": str(native / "valid.csv"),
        "save_folder": str(run_dir / "checkpoints"),
        "export_folder": str(run_dir / "checkpoints" / "export"),
        "spec_augment": spec.augmentation.spec_augment.model_dump() if spec.augmentation.spec_augment else None,
        "init_from": own_run_model(spec.init_from, "speechbrain") if spec.init_from else None,
        "freeze": list(spec.freeze),
        "keep_checkpoints": t.keep_checkpoints,
    }
    extra = spec.backends.get("speechbrain") or {}
    if extra:
        cfg = deep_merge(cfg, extra)
    atomic_write_text(run_dir / CONFIG, "# SpeechBrain ECAPA-TDNN classifier settings rendered by spx from spec.yaml "
                                        "(backends.speechbrain merged last)\n" + dump_yaml(cfg))
    py = sys.executable
    return [Step("train", [py, "-m", "spx.adapters.speechbrain.steps.cls_train", str(run_dir)], log="train.log"),
            Step("decode", [py, "-m", "spx.adapters.speechbrain.steps.cls_decode", str(run_dir)], timed=True)]


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {"native": {"config": str(run_dir / CONFIG)},
            "model_summary": read_json(Path(run_dir / "native" / "model_summary.json"))}
