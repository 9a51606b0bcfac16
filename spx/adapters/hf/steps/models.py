"""Loading the hf families' models and text codecs (child process): from the pretrained source, from an spx export
(full weights, or a LoRA adapter over its base), and the CTC text codec (char: Wav2Vec2CTCTokenizer; bpe:
sentencepiece with the blank after the pieces)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from spx.adapters.hf.steps.common import EXPORT_INFO, log, read_json


# ---------------------------------------------------------------- CTC text
class CtcText:
    """Text <-> CTC label ids. `blank` is the CTC blank, also the model config's pad_token_id."""

    def __init__(self, kind: str, tokenizer=None, sp=None):
        self.kind, self.tokenizer, self.sp = kind, tokenizer, sp
        if kind == "char":
            self.blank = tokenizer.pad_token_id
            self.size = len(tokenizer)
        else:
            self.blank = sp.get_piece_size()
            self.size = sp.get_piece_size() + 1

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text).input_ids if self.kind == "char" else self.sp.encode(text)

    def decode_ctc(self, ids) -> str:
        """Greedy CTC: repeats collapsed, blanks dropped."""
        ids = [int(i) for i in ids]
        if self.kind == "char":
            return self.tokenizer.decode(ids)  # group_tokens: repeats collapsed, pad (blank) removed
        out, prev = [], None
        for i in ids:
            if i != prev and i != self.blank and 0 <= i < self.blank:
                out.append(i)
            prev = i
        return self.sp.decode(out)

    def decode_labels(self, ids) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) != self.blank]
        if self.kind == "char":
            return self.tokenizer.decode(ids, group_tokens=False)
        return self.sp.decode(ids)

    def save(self, folder: Path) -> None:
        if self.kind == "char":
            self.tokenizer.save_pretrained(str(folder))
        else:
            (folder / "bpe.model").write_bytes(self.sp.serialized_model_proto())

    @classmethod
    def load(cls, folder: Path, kind: str) -> "CtcText":
        if kind == "char":
            from transformers import Wav2Vec2CTCTokenizer

            return cls("char", tokenizer=Wav2Vec2CTCTokenizer.from_pretrained(str(folder)))
        import sentencepiece as spm

        return cls("bpe", sp=spm.SentencePieceProcessor(model_file=str(folder / "bpe.model")))


def char_text(vocab_json: Path) -> CtcText:
    from transformers import Wav2Vec2CTCTokenizer

    tok = Wav2Vec2CTCTokenizer(str(vocab_json), unk_token="[UNK]", pad_token="[PAD]", word_delimiter_token="|",
                               bos_token=None, eos_token=None, do_lower_case=False)
    return CtcText("char", tokenizer=tok)


def train_bpe(texts: list[str], vocab_size: int, folder: Path) -> CtcText:
    """A sentencepiece unigram model on the training text (as the other backends' bpe); blank = vocab_size."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "bpe_train.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "bpe"), vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0,
                                   hard_vocab_limit=False, minloglevel=2)
    return CtcText("bpe", sp=spm.SentencePieceProcessor(model_file=str(folder / "bpe.model")))


# ---------------------------------------------------------------- models
def export_info(folder: Path) -> dict[str, Any]:
    return read_json(folder / EXPORT_INFO)


def spec_augment_config(family: str, config, settings: dict[str, Any]) -> dict[str, Any]:
    """The spec's SpecAugment as the pretrained model's own masking options (docs/backends/hf.md):
    wav2vec2-style: time masks on the latent frames, feature masks on the hidden channels;
    whisper: time and feature masks on the log-mel input."""
    sa = settings.get("spec_augment")
    if family == "whisper":
        if not sa:
            return {"apply_spec_augment": False}
        return {"apply_spec_augment": True, "mask_time_length": max(1, sa["time_width"]),
                "mask_time_min_masks": sa["time_masks"], "mask_time_prob": 0.05 if sa["time_masks"] else 0.0,
                "mask_feature_length": max(1, sa["freq_width"]), "mask_feature_min_masks": sa["freq_masks"],
                "mask_feature_prob": min(1.0, sa["freq_masks"] * sa["freq_width"] / config.num_mel_bins)
                if sa["freq_masks"] else 0.0}
    if not sa:
        return {"mask_time_prob": 0.0, "mask_feature_prob": 0.0}
    latent_ms = math.prod(config.conv_stride) / 16.0  # 16 kHz samples per latent frame -> ms
    time_len = max(1, round(sa["time_width"] * settings["feature_frame_ms"] / latent_ms))
    feat_len = max(1, round(sa["freq_width"] / settings["n_mels"] * config.hidden_size))
    return {"mask_time_prob": 0.05 if sa["time_masks"] else 0.0, "mask_time_length": time_len,
            "mask_time_min_masks": sa["time_masks"],
            "mask_feature_prob": min(1.0, sa["freq_masks"] * feat_len / config.hidden_size) if sa["freq_masks"] else 0.0,
            "mask_feature_length": feat_len, "mask_feature_min_masks": sa["freq_masks"]}


def load_ctc(source: str, text: CtcText, settings: dict[str, Any] | None, keep_head: bool):
    """AutoModelForCTC from a pretrained folder/hub name or an spx export (LoRA exports: base + adapter, merged),
    with the CTC head sized to `text`; the head is new unless keep_head."""
    from transformers import AutoConfig, AutoModelForCTC

    src = Path(source)
    info = export_info(src) if (src / EXPORT_INFO).is_file() else None
    base = info["base_model"] if info and info["method"] == "lora" else source
    config = AutoConfig.from_pretrained(base)
    overrides: dict[str, Any] = {"vocab_size": text.size, "pad_token_id": text.blank, "ctc_loss_reduction": "mean",
                                 "ctc_zero_infinity": True}
    if settings is not None and settings["method"] == "adapter":
        if not (config.model_type == "wav2vec2" and config.do_stable_layer_norm):
            raise RuntimeError(f"finetune.method adapter: {base} is a {config.model_type} model"
                               f"{'' if config.model_type != 'wav2vec2' else ' without do_stable_layer_norm'}; "
                               "Transformers' attention adapters exist only in stable-layer-norm wav2vec2 models")
        overrides["adapter_attn_dim"] = settings["adapter_dim"]
    if settings is not None:
        overrides["final_dropout"] = settings["head_dropout"]
        overrides.update(spec_augment_config("ssl_ctc", config, settings))
    model = AutoModelForCTC.from_pretrained(base, ignore_mismatched_sizes=True, **overrides)
    if info and info["method"] == "lora":
        from peft import PeftModel

        # PeftModel.from_pretrained loads for inference (everything frozen): the merged model trains again
        model = PeftModel.from_pretrained(model, str(src / "adapter")).merge_and_unload().requires_grad_(True)
        log(f"loaded {base} + LoRA adapter {src / 'adapter'} (merged)")
    if not keep_head:
        model.lm_head.reset_parameters()  # a new vocabulary: a new head, whatever the source had
    return model


def load_audio_classifier(source: str, classes: list[str], settings: dict[str, Any] | None):
    """AutoModelForAudioClassification from a pretrained folder/hub name or an spx ssl_classifier export (LoRA
    exports: base + adapter, merged) with one output per class of `classes`: the class layers are new unless the
    source is an export with exactly these classes (then they are kept, with their label ids)."""
    from transformers import AutoConfig, AutoModelForAudioClassification

    src = Path(source)
    info = export_info(src) if (src / EXPORT_INFO).is_file() else None
    base = info["base_model"] if info and info["method"] == "lora" else source
    config = AutoConfig.from_pretrained(base)
    overrides: dict[str, Any] = {"num_labels": len(classes), "label2id": {c: i for i, c in enumerate(classes)},
                                 "id2label": {i: c for i, c in enumerate(classes)}}
    head = settings if settings is not None else info  # a LoRA export's base config knows nothing of the head
    if head is not None:
        overrides.update(classifier_proj_size=head["projector_dim"], use_weighted_layer_sum=head["layer_weighting"])
    if settings is not None:
        overrides.update(spec_augment_config("ssl_classifier", config, settings))
    model = AutoModelForAudioClassification.from_pretrained(base, ignore_mismatched_sizes=True, **overrides)
    if info and info["method"] == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(src / "adapter")).merge_and_unload().requires_grad_(True)
        log(f"loaded {base} + LoRA adapter {src / 'adapter'} (merged)")
    if not (info and info.get("classes") == classes):
        model.projector.reset_parameters()  # new classes: new class layers, whatever the source had
        model.classifier.reset_parameters()
    return model


def load_whisper(source: str, settings: dict[str, Any] | None):
    """WhisperForConditionalGeneration + WhisperProcessor from a pretrained folder/hub name or an spx export."""
    from transformers import AutoConfig, WhisperForConditionalGeneration, WhisperProcessor

    src = Path(source)
    info = export_info(src) if (src / EXPORT_INFO).is_file() else None
    base = info["base_model"] if info and info["method"] == "lora" else source
    overrides = spec_augment_config("whisper", AutoConfig.from_pretrained(base), settings) if settings else {}
    model = WhisperForConditionalGeneration.from_pretrained(base, **overrides)
    if info and info["method"] == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(src / "adapter")).merge_and_unload().requires_grad_(True)
        log(f"loaded {base} + LoRA adapter {src / 'adapter'} (merged)")
    processor = WhisperProcessor.from_pretrained(str(src) if info else source)
    return model, processor


def to_device(model, device: str, dtype: str):
    return model.to(device=device, dtype=getattr(torch, dtype)).eval()
