"""Train step of hf ssl_ctc (child process): AutoModelForCTC + Trainer.

`python -m spx.adapters.hf.steps.train_ctc RUN_DIR`, or under torchrun (DDP; gloo on CPU). Resume is the Trainer's
own resume_from_checkpoint, from the newest checkpoint spx marked complete.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from spx.adapters.common import child
from spx.adapters.hf.steps import common
from spx.adapters.hf.ssl_ctc import NEW_PARTS
from spx.adapters.hf.steps.models import CtcText, char_text, export_info, load_ctc, train_bpe


def text_codec(rd, settings) -> CtcText:
    tok = settings["tokenizer"]
    folder = rd / "native" / "tokenizer"
    if tok["type"] == "char":
        return char_text(rd / "native" / "vocab.json")
    init = settings["init_from"]
    if init and (Path(init) / "bpe.model").is_file() and export_info(Path(init)).get("vocab_size") == tok["vocab_size"]:
        settings["keep_head"] = True  # the same pieces: the fine-tuned head stays
        return CtcText.load(Path(init), "bpe")
    if common.RANK == 0 and not (folder / "bpe.model").is_file():
        rows = [json.loads(line) for line in (rd / "native" / "train.jsonl").read_text().splitlines() if line]
        train_bpe([r["text"] for r in rows], tok["vocab_size"], folder)
    if common.WORLD > 1:  # the other ranks wait for rank 0's tokenizer
        from spx.adapters.hf.steps.ddp import wait_for

        wait_for(folder / "bpe.model")
    return CtcText.load(folder, "bpe")


def main(run_dir: str) -> None:
    from transformers import Trainer, TrainingArguments

    spec, rd = child.load_run(run_dir)
    child.precision_dtype(spec, "cuda" if torch.cuda.is_available() else "cpu")
    args_kw, settings = common.native_settings(rd)
    source = settings["init_from"] or settings["pretrained"]
    fe = common.feature_extractor(source)
    sr = fe.sampling_rate
    text = text_codec(rd, settings)
    describe: dict = {"init_from": settings["init_from"], "pretrained": settings["pretrained"],
                      "finetune_method": settings["method"], "tokenizer": text.kind, "vocab_size": text.size}

    def encode(row, audio):
        return {"input_values": fe(audio, sampling_rate=sr).input_values[0], "labels": text.encode(row["text"])}

    def collate(features):
        batch = fe.pad([{"input_values": f["input_values"]} for f in features], padding=True, return_tensors="pt",
                       return_attention_mask=fe.return_attention_mask)
        batch["labels"] = pad_sequence([torch.tensor(f["labels"], dtype=torch.long) for f in features],
                                       batch_first=True, padding_value=-100)
        return batch

    def compute_metrics(pred):
        ids = pred.predictions
        ids[ids == -100] = text.blank
        hyps = [text.decode_ctc(r) for r in ids]
        refs = [text.decode_labels(r) for r in pred.label_ids]
        return {"wer": common.wer(hyps, refs)}

    def attention_adapters(model) -> None:
        if settings["method"] == "adapter":  # as the MMS adapter fine-tuning guide: base frozen, adapters + head train
            model.freeze_base_model()
            for p in model._get_adapters().values():
                p.requires_grad_(True)
            describe["adapter_params"] = common.count(p for n, p in model.named_parameters() if "adapter_layer" in n)

    def make_trainer(callbacks, resume):
        model = load_ctc(source, text, settings, settings["keep_head"])
        base = model.base_model  # wav2vec2 / hubert / wavlm
        model = common.prepare_model(model, settings, describe, source, model.config.model_type, base,
                                     base.encoder.layers, model.freeze_feature_encoder, attention_adapters)
        return common.build_trainer(Trainer, TrainingArguments, args_kw, settings, NEW_PARTS, model,
                                    callbacks["records"], rd, sr, encode, collate, processing_class=fe,
                                    compute_metrics=compute_metrics,
                                    preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1))

    def export(trainer) -> Path:
        def save_extra(folder: Path) -> None:
            fe.save_pretrained(str(folder))
            text.save(folder)

        info = {"family": "ssl_ctc", "model_type": describe["model_type"], "tokenizer": text.kind,
                "vocab_size": settings["tokenizer"]["vocab_size"], "ctc_size": text.size, "blank": text.blank}
        return common.export_model(rd, trainer, settings, source, info, save_extra)

    common.train_with(rd, spec, make_trainer, export, describe, NEW_PARTS)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    child.main_guard(main)
    sys.exit(0)
