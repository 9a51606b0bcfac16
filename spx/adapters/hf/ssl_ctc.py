"""ssl_ctc on Transformers: AutoModelForCTC (Wav2Vec2ForCTC / HubertForCTC / WavLMForCTC, the kind read from the
pretrained config.json's model_type) with a new CTC head on the spec's tokenizer, fine-tuned by Trainer."""
from __future__ import annotations

import json
from typing import Any

from spx.adapters.common.child import char_vocabulary
from spx.adapters.hf import helpers
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec

TASK = "asr"
NAME = "ssl_ctc"
CPU_PRECISIONS = ("fp32",)
INIT_FROM = "a finished hf ssl_ctc run dir (or its checkpoints/export)"
INFERENCE = "spx.adapters.hf.steps.decode"
EXPORT = "spx.adapters.hf.steps.export"
FINETUNE_METHODS = ("full", "lora", "adapter")  # adapter: Transformers' MMS attention adapters
FINETUNE_OPTIONS = ("training.optimizer.pretrained_lr", "finetune.freeze_pretrained_steps")
MODEL_TYPES = ("wav2vec2", "hubert", "wavlm")
LORA_TARGETS = ["q_proj", "v_proj"]  # the attention projections of every encoder layer
HEAD = ["lm_head"]                    # the new CTC head: trained in full, kept beside the LoRA weights
NEW_PARTS = ("lm_head", "adapter_layer")  # what is new (not pretrained): the head, and the adapters of method adapter
# the Wav2Vec2CTCTokenizer layout: the pad token is the CTC blank (id 0), '|' the word delimiter
PAD, UNK, DELIMITER = "[PAD]", "[UNK]", "|"


def check(spec: Spec) -> None:
    enc = spec.model.encoder
    config = helpers.local_config(enc.pretrained, "model.encoder.pretrained")
    if config is not None and config.get("model_type") not in MODEL_TYPES:
        raise SpxError(f"model.encoder.pretrained {enc.pretrained!r} is a {config.get('model_type')!r} model; "
                       f"ssl_ctc takes {', '.join(MODEL_TYPES)}", where="model.encoder.pretrained",
                       hint="use a wav2vec2, HuBERT or WavLM checkpoint (model.family whisper for Whisper)")
    if enc.layer_weighting:
        raise SpxError("model.encoder.layer_weighting is not rendered by the hf backend yet (AutoModelForCTC reads "
                       "the last layer)", where="model.encoder.layer_weighting", hint="set it to false on hf")
    if spec.decoding.strategy != "greedy":
        raise SpxError("decoding.strategy beam: the hf ssl_ctc decoder is greedy CTC (a beam needs an n-gram LM "
                       "decoder, pyctcdecode, not installed)", where="decoding.strategy", hint="use greedy")
    if spec.finetune.method == "adapter" and config is not None and not (
            config.get("model_type") == "wav2vec2" and config.get("do_stable_layer_norm")):
        raise SpxError(f"finetune.method adapter: Transformers' attention adapters (adapter_attn_dim, as MMS uses "
                       f"them) exist only in wav2vec2 models with do_stable_layer_norm; {enc.pretrained!r} is a "
                       f"{config.get('model_type')} model" + ("" if config.get("model_type") != "wav2vec2" else
                                                              " without it"), where="finetune.method",
                       hint="use finetune.method lora, or a large/XLS-R/MMS-style wav2vec2 checkpoint")
    helpers.check_freeze_layers(spec, config)
    helpers.check_common(spec, NAME)


def vocabulary(spec: Spec, texts: list[str]) -> dict[str, int]:
    """Wav2Vec2CTCTokenizer's vocab.json: blank/pad 0, unk 1, '|' for the space, then the characters."""
    chars = [c for c in char_vocabulary(texts) if c != " "]
    return {PAD: 0, UNK: 1, DELIMITER: 2, **{c: i + 3 for i, c in enumerate(chars)}}


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    rows = helpers.data_rows(spec, spec.data.train)
    settings: dict[str, Any] = {"tokenizer": spec.tokenizer.model_dump(), "head_dropout": spec.model.head_dropout,
                                "spec_augment": spec.augmentation.spec_augment.model_dump()
                                if spec.augmentation.spec_augment else None,
                                "feature_frame_ms": spec.features.hop_length_ms, "n_mels": spec.features.n_mels,
                                "keep_head": False}
    settings.update(helpers.finetune_settings(spec, LORA_TARGETS, HEAD))
    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    if spec.tokenizer.type == "char":
        vocab = vocabulary(spec, [r["text"] for r in rows])
        if spec.init_from:  # keep the fine-tuned head when its vocabulary covers the new text (same ids)
            init = helpers.resolve_init_from(spec.init_from, NAME)
            old = json.loads((init / "vocab.json").read_text()) if (init / "vocab.json").is_file() else None
            if old is not None and set(vocab) <= set(old):
                vocab, settings["keep_head"] = old, True
        (native / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    args = helpers.training_args(spec, run_dir, monitor_wer=True, seq2seq=False)
    return helpers.render_common(spec, run_dir, NAME, settings, args, "train_ctc")


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return helpers.collect_extras(run_dir)
