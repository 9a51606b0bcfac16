"""Train step of hf whisper (child process): WhisperForConditionalGeneration + Seq2SeqTrainer.

`python -m spx.adapters.hf.steps.train_whisper RUN_DIR`, or under torchrun (DDP; gloo on CPU). The labels are
Whisper's own tokens with the spec's prefix (<|startoftranscript|><|lang|><|task|><|notimestamps|> text
<|endoftext|>), as the Transformers fine-tuning guide writes them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from spx.adapters.common import child
from spx.adapters.hf.steps import common
from spx.adapters.hf.steps.models import load_whisper


def main(run_dir: str) -> None:
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    spec, rd = child.load_run(run_dir)
    child.precision_dtype(spec, "cuda" if torch.cuda.is_available() else "cpu")
    args_kw, settings = common.native_settings(rd)
    source = settings["init_from"] or settings["pretrained"]
    describe: dict = {"init_from": settings["init_from"], "pretrained": settings["pretrained"],
                      "finetune_method": settings["method"], "language": settings["language"],
                      "whisper_task": settings["task"]}

    model, processor = load_whisper(source, settings)
    tokenizer, fe = processor.tokenizer, processor.feature_extractor
    tokenizer.set_prefix_tokens(language=settings["language"], task=settings["task"], predict_timestamps=False)
    start = model.config.decoder_start_token_id

    def encode(row, audio):
        return {"input_features": fe(audio, sampling_rate=16000).input_features[0],
                "labels": tokenizer(row["text"]).input_ids}

    def collate(features):
        feats = torch.tensor(np.stack([f["input_features"] for f in features]))
        labels = tokenizer.pad([{"input_ids": f["labels"]} for f in features], return_tensors="pt")
        ids = labels["input_ids"].masked_fill(labels["attention_mask"].ne(1), -100)
        if (ids[:, 0] == start).all():  # the model prepends <|startoftranscript|> itself (shift right)
            ids = ids[:, 1:]
        return {"input_features": feats, "labels": ids}

    def compute_metrics(pred):
        ids = pred.predictions
        ids[ids == -100] = tokenizer.pad_token_id
        labels = pred.label_ids
        labels[labels == -100] = tokenizer.pad_token_id
        hyps = tokenizer.batch_decode(ids, skip_special_tokens=True)
        refs = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return {"wer": common.wer([h.strip() for h in hyps], [r.strip() for r in refs])}

    def make_trainer(callbacks, resume):
        model.generation_config.language = settings["language"]
        model.generation_config.task = settings["task"]
        model.generation_config.forced_decoder_ids = None
        enc = model.model.encoder

        def freeze_conv() -> None:
            for p in [*enc.conv1.parameters(), *enc.conv2.parameters()]:
                p.requires_grad_(False)

        m = common.prepare_model(model, settings, describe, source, "whisper", enc, enc.layers, freeze_conv)
        return common.build_trainer(Seq2SeqTrainer, Seq2SeqTrainingArguments, args_kw, settings, (), m,
                                    callbacks["records"], rd, 16000, encode, collate, processing_class=processor,
                                    compute_metrics=compute_metrics if args_kw.get("predict_with_generate") else None)

    def export(trainer) -> Path:
        info = {"family": "whisper", "language": settings["language"], "task": settings["task"]}
        return common.export_model(rd, trainer, settings, source, info, lambda folder: processor.save_pretrained(
            str(folder)))

    common.train_with(rd, spec, make_trainer, export, describe, ())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    child.main_guard(main)
    sys.exit(0)
