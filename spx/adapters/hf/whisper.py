"""whisper on Transformers: WhisperForConditionalGeneration with its own tokenizer and the spec's language/task
prefix, fine-tuned by Seq2SeqTrainer, decoded by generate (greedy or beam)."""
from __future__ import annotations

from typing import Any

from spx.adapters.hf import helpers
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec

TASK = "asr"
NAME = "whisper"
CPU_PRECISIONS = ("fp32",)
INIT_FROM = "a finished hf whisper run dir (or its checkpoints/export)"
INFERENCE = "spx.adapters.hf.steps.decode"
EXPORT = "spx.adapters.hf.steps.whisper_export"  # encoder + decoder-step ONNX graphs, the search in numpy
FINETUNE_METHODS = ("full", "lora")
FINETUNE_OPTIONS: tuple[str, ...] = ()  # no new head: every weight is pretrained, so one lr and no head warm-up
LORA_TARGETS = ["q_proj", "v_proj"]  # the attention projections of encoder and decoder


def check(spec: Spec) -> None:
    config = helpers.local_config(spec.model.pretrained, "model.pretrained")
    if config is not None and config.get("model_type") != "whisper":
        raise SpxError(f"model.pretrained {spec.model.pretrained!r} is a {config.get('model_type')!r} model, not "
                       "whisper", where="model.pretrained",
                       hint="use a Whisper checkpoint (model.family ssl_ctc for wav2vec2/HuBERT/WavLM)")
    if spec.tokenizer.type != "char" or spec.tokenizer.vocab_size is not None:
        raise SpxError("tokenizer: Whisper keeps its own tokenizer; the spec's tokenizer type/vocab_size do not apply",
                       where="tokenizer.type", hint="drop tokenizer.type/vocab_size for model.family whisper")
    if spec.features.sample_rate != 16000:
        raise SpxError("Whisper's feature extractor reads 16 kHz audio", where="features.sample_rate",
                       hint="set features.sample_rate: 16000")
    helpers.check_freeze_layers(spec, config)
    helpers.check_common(spec, NAME)


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    m = spec.model
    settings: dict[str, Any] = {"language": m.language, "task": m.task, "max_new_tokens": m.max_new_tokens,
                                "num_beams": spec.decoding.beam_size if spec.decoding.strategy == "beam" else 1,
                                "spec_augment": spec.augmentation.spec_augment.model_dump()
                                if spec.augmentation.spec_augment else None}
    settings.update(helpers.finetune_settings(spec, LORA_TARGETS, []))
    args = helpers.training_args(spec, run_dir, monitor_wer=bool(spec.training.early_stopping and
                                 spec.training.early_stopping.monitor == "valid_wer"), seq2seq=True)
    return helpers.render_common(spec, run_dir, NAME, settings, args, "train_whisper")


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return helpers.collect_extras(run_dir)
