"""ssl_classifier on Transformers: AutoModelForAudioClassification (Wav2Vec2/Hubert/WavLMForSequenceClassification, the
kind read from the pretrained config.json's model_type): the pretrained encoder, mean pooling over the frames, a new
projector and class layer on the spec's classes, fine-tuned by Trainer; decoded through the shared classification
protocol (spx.adapters.common.classify)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from spx.adapters.common.labels import check_labels
from spx.adapters.hf import helpers
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec

TASK = "classification"
NAME = "ssl_classifier"
CPU_PRECISIONS = ("fp32",)
INIT_FROM = "a finished hf ssl_classifier run dir (or its checkpoints/export)"
INFERENCE = "spx.adapters.hf.steps.cls_decode"
EXPORT = "spx.adapters.hf.steps.cls_export"
FINETUNE_METHODS = ("full", "lora")
FINETUNE_OPTIONS = ("training.optimizer.pretrained_lr", "finetune.freeze_pretrained_steps")
MODEL_TYPES = ("wav2vec2", "hubert", "wavlm")
LORA_TARGETS = ["q_proj", "v_proj"]      # the attention projections of every encoder layer
HEAD = ["projector", "classifier"]       # the new class layers: trained in full, kept beside the LoRA weights
NEW_PARTS = ("projector", "classifier", "layer_weights")  # not pretrained: the head (and the layer weighting)


def check(spec: Spec) -> None:
    enc = spec.model.encoder
    config = helpers.local_config(enc.pretrained, "model.encoder.pretrained")
    if config is not None and config.get("model_type") not in MODEL_TYPES:
        raise SpxError(f"model.encoder.pretrained {enc.pretrained!r} is a {config.get('model_type')!r} model; "
                       f"ssl_classifier takes {', '.join(MODEL_TYPES)}", where="model.encoder.pretrained",
                       hint="use a wav2vec2, HuBERT or WavLM checkpoint")
    if enc.layer_weighting and spec.finetune.method == "lora":
        raise SpxError("model.encoder.layer_weighting with finetune.method lora: the layer weights are a bare "
                       "parameter, which peft's modules_to_save cannot keep trainable", where="model.encoder.layer_weighting",
                       hint="use finetune.method full, or layer_weighting: false")
    early = spec.training.early_stopping
    if early is not None and early.monitor == "valid_wer":
        raise SpxError("training.early_stopping.monitor valid_wer: a classifier has no WER",
                       where="training.early_stopping.monitor", hint="monitor valid_loss")
    if all(Path(p).is_file() for p in (spec.data.train, spec.data.valid, *spec.test_sets)):
        check_labels(spec)  # a spx-demo:// corpus is made after this check (valid by construction); render checks again
    helpers.check_freeze_layers(spec, config)
    helpers.check_common(spec, NAME)


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    classes = check_labels(spec)
    settings: dict[str, Any] = {"classes": classes, "projector_dim": spec.model.projector_dim,
                                "layer_weighting": spec.model.encoder.layer_weighting,
                                "spec_augment": spec.augmentation.spec_augment.model_dump()
                                if spec.augmentation.spec_augment else None,
                                "feature_frame_ms": spec.features.hop_length_ms, "n_mels": spec.features.n_mels}
    settings.update(helpers.finetune_settings(spec, LORA_TARGETS, HEAD))
    args = helpers.training_args(spec, run_dir, monitor_wer=False, seq2seq=False)
    return helpers.render_common(spec, run_dir, NAME, settings, args, "train_cls", decode_step="cls_decode")


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return helpers.collect_extras(run_dir)
