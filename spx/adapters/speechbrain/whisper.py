"""SpeechBrain whisper (`task: asr`, `model.family: whisper`): a pretrained Whisper encoder-decoder loaded through
SpeechBrain's own Transformers integration (speechbrain.integrations.huggingface.whisper.Whisper) and fine-tuned by
a Brain, as SpeechBrain's recipe CommonVoice/ASR/transformer (train_hf_whisper.yaml, train_with_whisper.py) does:
the decoder is fed <|startoftranscript|><|lang|><|task|><|notimestamps|> + the text in Whisper's own tokens, NLL
loss on the next tokens, one optimizer, S2SWhisperGreedySearcher / S2SWhisperBeamSearcher to decode; LoRA through
speechbrain.nnet.adapters.AdaptedModel as the ssl_ctc family does.

render writes run_dir/native/:
  hparams.yaml     the generated hyperpyyaml: `whisper_base` (the integration, source = model.pretrained,
                   freeze_encoder for freeze: [encoder]), `whisper` (it, or AdaptedModel around it for LoRA), the optimizer and schedule, the searchers, Checkpointer, epoch counter
  overrides.yaml   `backends.speechbrain`, applied untouched as hyperpyyaml overrides
  train.csv, valid.csv, <test>.csv   as the other SpeechBrain ASR families write them
Steps: train (steps/whisper_train.py under torchrun) and decode (steps/whisper_decode.py). No torch or speechbrain
here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spx.adapters.common.spec_helpers import FREEZE_LAYERS
from spx.adapters.speechbrain.helpers import (
    DROPOUT_LORA, LORA_TARGETS, OPTIMIZERS, STEPS, epoch_counter, lr_annealing, optimizer_momentum, step, write_asr_csvs,
    yaml_value,
)
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec

TASK, NAME = "asr", "whisper"
CPU_PRECISIONS = ("fp32",)
INIT_FROM = "nothing yet: the speechbrain whisper family starts from model.pretrained"
INFERENCE = f"{STEPS}.whisper_decode"
EXPORT = f"{STEPS}.whisper_export"  # encoder + decoder-step ONNX graphs, the search in numpy
FINETUNE_METHODS = ("full", "lora")
FINETUNE_OPTIONS: tuple[str, ...] = ()  # no new head: every weight is pretrained, so one lr and no head warm-up
FINETUNE_REFUSED = {"finetune.method adapter": "spx's speechbrain whisper family has no bottleneck adapters "
                                               "(SpeechBrain's HoulsbyAdapterLinear is not wired); LoRA is"}
EXPORT_INFO = "spx_export.json"
# Whisper's encoder always sees 30 s (the integration pads/trims to N_SAMPLES): 1500 encoder frames, from which
# SpeechBrain's searchers derive the decode length as a ratio
WHISPER_ENCODER_FRAMES = 1500


def pretrained_config(name: str) -> dict[str, Any] | None:
    """config.json of a local Whisper folder; None for a hub name (SpeechBrain downloads it in the child)."""
    where = "model.pretrained"
    p = Path(name).expanduser()
    if not p.exists():
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise SpxError(f"{where} {name!r} does not exist", where=where,
                           hint="give a hub model name (openai/whisper-small) or a local Transformers folder")
        return None
    if not (p / "config.json").is_file():
        raise SpxError(f"{where} {name!r} has no config.json: not a Transformers model folder", where=where,
                       hint="point it at a folder written by save_pretrained of the model and its WhisperProcessor "
                            "(config.json, weights, tokenizer and feature-extractor files)")
    try:
        return json.loads((p / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SpxError(f"{p / 'config.json'}: not valid JSON ({exc})", where=where) from None


def source_of(name: str) -> str:
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


# ---------------------------------------------------------------- contract
def check(spec: Spec) -> None:
    config = pretrained_config(spec.model.pretrained)
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
    if spec.model.language is None:
        raise SpxError("model.language null (language detection) is not rendered by the speechbrain whisper family: "
                       "the decoder prefix is fixed for training and decoding", where="model.language",
                       hint="set model.language (e.g. en)")
    aug = spec.augmentation
    for key, value in (("augmentation.spec_augment", aug.spec_augment), ("augmentation.noise", aug.noise),
                       ("augmentation.speed_perturb", aug.speed_perturb)):
        if value:
            raise SpxError(f"{key} is not rendered by the speechbrain whisper family yet", where=key,
                           hint=f"set {key}: null for this family")
    if spec.finetune.method == "lora" and spec.freeze:
        raise SpxError("freeze with finetune.method lora: AdaptedModel keeps every base weight frozen by itself",
                       where="freeze", hint="drop freeze for a LoRA run")
    if spec.backends.get("speechbrain", {}).get("merge_lora"):
        raise SpxError("backends.speechbrain.merge_lora is not wired for the speechbrain whisper family",
                       where="backends.speechbrain.merge_lora", hint="drop it (the export holds the adapters apart "
                                                                     "from the base model)")
    if spec.init_from:
        raise SpxError("init_from is not wired for the speechbrain whisper family yet", where="init_from",
                       hint="start from model.pretrained (a hub name or a Transformers folder)")
    layers = (config or {}).get("encoder_layers")
    for item in spec.freeze:
        if item.startswith(FREEZE_LAYERS):
            raw = item[len(FREEZE_LAYERS):]
            if not raw.isdigit() or int(raw) < 1:
                raise SpxError(f"freeze item {item!r}: {raw!r} is not a number of layers >= 1", where="freeze",
                               hint="e.g. freeze: ['encoder.layers:4'] freezes the first four encoder layers")
            if layers is not None and int(raw) > layers:
                raise SpxError(f"freeze item {item!r}: the pretrained encoder has {layers} layers", where="freeze",
                               hint=f"use encoder.layers:N with 1 <= N <= {layers}, or 'encoder' for all of it")


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    _, test_csvs = write_asr_csvs(spec, native)
    (native / "hparams.yaml").write_text(hparams_text(spec, run_dir, test_csvs), encoding="utf-8")
    import yaml

    overrides = spec.backends.get("speechbrain", {})
    (native / "overrides.yaml").write_text(
        "# backends.speechbrain from the spec: applied untouched as hyperpyyaml overrides of hparams.yaml\n"
        + (yaml.safe_dump(overrides, sort_keys=False) if overrides else "{}\n"), encoding="utf-8")
    env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if spec.resources.devices * spec.resources.nodes > 1 and spec.resources.threads is None:
        env["OMP_NUM_THREADS"] = "1"
    return [step("train", "whisper_train", run_dir, launch="torchrun", log="train.log", env=env),
            step("decode", "whisper_decode", run_dir, timed=True, env={"TOKENIZERS_PARALLELISM": "false"})]


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {"native_config": str(run_dir / "native" / "hparams.yaml")}


# ---------------------------------------------------------------- the native recipe (hparams.yaml)
def hparams_text(spec: Spec, rd: RunDir, test_csvs: list[str]) -> str:
    tr, opt, early, m, dec = (spec.training, spec.training.optimizer, spec.training.early_stopping, spec.model,
                              spec.decoding)
    backend = "gloo" if spec.resources.accelerator == "cpu" else "nccl"
    max_ratio = m.max_new_tokens / WHISPER_ENCODER_FRAMES
    searcher = "S2SWhisperBeamSearcher" if dec.strategy == "beam" else "S2SWhisperGreedySearcher"
    model_arg = "module: [!ref <whisper_base>]" if dec.strategy == "beam" else "model: !ref <whisper_base>"
    beam = f"\n    beam_size: {dec.beam_size}" if dec.strategy == "beam" else ""
    return f"""\
# SpeechBrain recipe generated by spx from ../spec.yaml (hyperpyyaml), laid out as SpeechBrain's
# CommonVoice/ASR/transformer/hparams/train_hf_whisper.yaml. Edit the spec, not this file.
# Run by: python -m {STEPS}.whisper_train RUN_DIR (torchrun for several processes);
# ../native/overrides.yaml (backends.speechbrain) is applied on top as hyperpyyaml overrides.

seed: {tr.seed}
output_folder: {yaml_value(str(rd / 'checkpoints'))}
save_folder: !ref <output_folder>
train_log: {yaml_value(str(rd / 'native' / 'train_log.txt'))}

# ---- data (SpeechBrain CSVs exported from the spx manifests)
train_csv: {yaml_value(str(rd / 'native' / 'train.csv'))}
valid_csv: {yaml_value(str(rd / 'native' / 'valid.csv'))}
test_csvs: {yaml_value(test_csvs)}
sample_rate: 16000
num_workers: {tr.num_workers}
batch_size: {yaml_value(tr.batch_size)}
dynamic_batching: {yaml_value(tr.batch_seconds is not None)}
max_batch_length_seconds: {yaml_value(tr.batch_seconds)}
num_buckets: 20
valid_batch_size: {max(1, dec.batch_size)}

# ---- training
number_of_epochs: {yaml_value(tr.epochs if tr.epochs is not None else 1000000)}
optimizer_step_limit: {yaml_value(tr.max_steps)}
grad_accumulation_factor: {tr.grad_accumulation}
max_grad_norm: {yaml_value(tr.grad_clip if tr.grad_clip is not None else float('inf'))}
precision: {tr.precision}
eval_precision: {tr.precision}
noprogressbar: True
distributed_backend: {backend}
lr: {yaml_value(opt.lr)}
weight_decay: {yaml_value(opt.weight_decay)}
betas: {yaml_value(list(opt.betas))}
warmup_steps: {spec.training.scheduler.warmup_steps}
min_lr: {yaml_value(spec.training.scheduler.min_lr)}
keep_checkpoints: {tr.keep_checkpoints}
early_stopping_monitor: {yaml_value(early.monitor if early else None)}
early_stopping_patience: {yaml_value(early.patience if early else None)}
freeze: {yaml_value(list(spec.freeze))}

# ---- model: Whisper through SpeechBrain's Transformers integration (its own tokenizer and feature extractor)
pretrained_source: {yaml_value(source_of(m.pretrained))}
language: {yaml_value(m.language)}
whisper_task: {m.task}
finetune_method: {spec.finetune.method}
whisper_base: !new:speechbrain.integrations.huggingface.whisper.Whisper
    source: !ref <pretrained_source>
    save_path: {yaml_value(str(rd / 'checkpoints' / 'pretrained_cache'))}
    encoder_only: false
    freeze: false  # freeze: [encoder] freezes the encoder only (the decoder always trains)
    freeze_encoder: {yaml_value('encoder' in spec.freeze)}
    language: !ref <language>
    task: !ref <whisper_task>
{_lora(spec)}log_softmax: !new:speechbrain.nnet.activations.Softmax
    apply_log: True
nll_loss: !name:speechbrain.nnet.losses.nll_loss
modules:
    whisper: !ref <whisper>

# ---- decoding ({dec.strategy}); decode length: model.max_new_tokens over Whisper's {WHISPER_ENCODER_FRAMES} encoder frames
decoding: {dec.strategy}
beam_size: {dec.beam_size}
max_new_tokens: {m.max_new_tokens}
test_batch_size: {dec.batch_size}
valid_search: !new:speechbrain.decoders.seq2seq.S2SWhisperGreedySearcher
    model: !ref <whisper_base>
    min_decode_ratio: 0.0
    max_decode_ratio: {yaml_value(max_ratio)}
test_search: !new:speechbrain.decoders.seq2seq.{searcher}
    {model_arg}
    min_decode_ratio: 0.0
    max_decode_ratio: {yaml_value(max_ratio)}{beam}

# ---- one optimizer over every trainable weight (all pretrained), as the recipe
opt_class: !name:{OPTIMIZERS[opt.name]}
    lr: !ref <lr>
    weight_decay: !ref <weight_decay>
{optimizer_momentum(spec)}
{lr_annealing(spec, 'lr_annealing', 'lr')}

# ---- checkpointing (resume with recover_if_possible) and the epoch loop
{epoch_counter(spec)}
checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
    checkpoints_dir: !ref <save_folder>
    recoverables:
        whisper: !ref <whisper>
        counter: !ref <epoch_counter>
"""


def _lora(spec: Spec) -> str:
    """`whisper`: the integration itself, or (finetune.method lora) AdaptedModel around it with LoRA on the
    attention projections of encoder and decoder (inserted by the train step after freezing; the searchers use
    the integration, which holds the adapters in place)."""
    ft = spec.finetune
    if ft.method != "lora":
        return "whisper: !ref <whisper_base>\n"
    targets = [f"*.{t}" for t in (ft.target_modules or LORA_TARGETS)]
    adapter = DROPOUT_LORA if ft.dropout else "speechbrain.nnet.adapters.LoRA"
    kwargs = {"rank": ft.rank, "alpha": ft.alpha, **({"dropout": ft.dropout} if ft.dropout else {})}
    return f"""\
# LoRA (finetune.method lora): AdaptedModel freezes the base; adapters are inserted by the train step
whisper: !new:speechbrain.nnet.adapters.AdaptedModel
    model_to_adapt: !ref <whisper_base>
    adapter_class: !name:{adapter}
    target_layers: {yaml_value(targets)}
    adapter_kwargs: {yaml_value(kwargs)}
    manual_adapter_insertion: True
"""
