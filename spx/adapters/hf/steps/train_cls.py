"""Train step of hf ssl_classifier (child process): AutoModelForAudioClassification + Trainer.

`python -m spx.adapters.hf.steps.train_cls RUN_DIR`, or under torchrun (DDP; gloo on CPU). The labels are the class
ids in native/spx_hf.json `classes` order (the model config's label2id / id2label); the loss is the model's own
cross-entropy over the mean-pooled encoder output. Resume as ssl_ctc: the Trainer's resume_from_checkpoint.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from spx.adapters.common import child
from spx.adapters.hf.ssl_classifier import NEW_PARTS
from spx.adapters.hf.steps import common
from spx.adapters.hf.steps.models import load_audio_classifier


def main(run_dir: str) -> None:
    from transformers import Trainer, TrainingArguments

    spec, rd = child.load_run(run_dir)
    child.precision_dtype(spec, "cuda" if torch.cuda.is_available() else "cpu")
    args_kw, settings = common.native_settings(rd)
    source = settings["init_from"] or settings["pretrained"]
    fe = common.feature_extractor(source)
    sr = fe.sampling_rate
    classes: list[str] = settings["classes"]
    label_id = {c: i for i, c in enumerate(classes)}
    describe: dict = {"init_from": settings["init_from"], "pretrained": settings["pretrained"],
                      "finetune_method": settings["method"], "classes": len(classes)}

    def encode(row, audio):
        return {"input_values": fe(audio, sampling_rate=sr).input_values[0], "labels": label_id[row["label"]]}

    def collate(features):
        batch = fe.pad([{"input_values": f["input_values"]} for f in features], padding=True, return_tensors="pt",
                       return_attention_mask=fe.return_attention_mask)
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    def compute_metrics(pred):
        return {"accuracy": float(np.mean(np.asarray(pred.predictions) == np.asarray(pred.label_ids)))}

    def make_trainer(callbacks, resume):
        model = load_audio_classifier(source, classes, settings)
        base = model.base_model  # wav2vec2 / hubert / wavlm
        model = common.prepare_model(model, settings, describe, source, model.config.model_type, base,
                                     base.encoder.layers, model.freeze_feature_encoder)
        return common.build_trainer(Trainer, TrainingArguments, args_kw, settings, NEW_PARTS, model,
                                    callbacks["records"], rd, sr, encode, collate, processing_class=fe,
                                    compute_metrics=compute_metrics,
                                    preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1))

    def export(trainer) -> Path:
        info = {"family": "ssl_classifier", "model_type": describe["model_type"], "classes": classes,
                "projector_dim": settings["projector_dim"], "layer_weighting": settings["layer_weighting"]}
        return common.export_model(rd, trainer, settings, source, info, lambda folder: fe.save_pretrained(str(folder)))

    common.train_with(rd, spec, make_trainer, export, describe, NEW_PARTS)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    child.main_guard(main)
    sys.exit(0)
