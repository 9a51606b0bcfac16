"""SpeechBrain ssl_ctc (`task: asr`, `model.family: ssl_ctc`): a pretrained wav2vec2 / HuBERT / WavLM encoder loaded
through SpeechBrain's own Transformers integration with a new linear CTC head, fine-tuned by a Brain, as SpeechBrain's
recipe LibriSpeech/ASR/CTC (train_hf_wav2vec.yaml) does: two optimizers (the pretrained model at
training.optimizer.pretrained_lr, the head at training.optimizer.lr), freezing by the integration's own switches,
LoRA through speechbrain.nnet.adapters.

render writes run_dir/native/:
  hparams.yaml     the generated hyperpyyaml: `ssl` (speechbrain.integrations.huggingface.{wav2vec2.Wav2Vec2,
                   hubert.HuBERT, wavlm.WavLM}, source = model.encoder.pretrained; wrapped by AdaptedModel with LoRA for
                   finetune.method lora), `ctc_lin`, the two optimizers and schedules, Checkpointer, epoch counter
  overrides.yaml   `backends.speechbrain`, applied untouched as hyperpyyaml overrides (e.g. merge_lora: true)
  train.csv, valid.csv, <test>.csv, tokens.txt   as the conformer_ctc family writes them
Steps: train (steps/ssl_train.py under torchrun) and decode (steps/ssl_decode.py). No torch or speechbrain here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spx.adapters.common.spec_helpers import FREEZE_LAYERS, exported_model_dir
from spx.adapters.speechbrain.helpers import (
    DROPOUT_LORA, LORA_TARGETS, OPTIMIZERS, STEPS, epoch_counter, lr_annealing, optimizer_momentum, step, write_asr_csvs,
    yaml_value,
)
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec

TASK, NAME = "asr", "ssl_ctc"
CPU_PRECISIONS = ("fp32",)
INIT_FROM = "a finished speechbrain ssl_ctc run dir (or its checkpoints/export) fine-tuned with finetune.method full"
INFERENCE = f"{STEPS}.ssl_decode"
EXPORT = f"{STEPS}.ssl_export"
FINETUNE_METHODS = ("full", "lora")
FINETUNE_OPTIONS = ("training.optimizer.pretrained_lr", "finetune.freeze_pretrained_steps")
EXPORT_INFO = "spx_export.json"
# model_type in the pretrained config.json -> SpeechBrain's class for it (all load through transformers.AutoModel)
SSL_CLASSES = {"wav2vec2": "speechbrain.integrations.huggingface.wav2vec2.Wav2Vec2",
               "hubert": "speechbrain.integrations.huggingface.hubert.HuBERT",
               "wavlm": "speechbrain.integrations.huggingface.wavlm.WavLM"}


def pretrained_config(name: str) -> dict[str, Any] | None:
    """config.json of a local pretrained folder; None for a hub name (SpeechBrain downloads it in the child)."""
    p = Path(name).expanduser()
    where = "model.encoder.pretrained"
    if not p.exists():
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise SpxError(f"{where} {name!r} does not exist", where=where,
                           hint="give a hub model name (facebook/wav2vec2-base) or a local Transformers folder")
        return None
    for needed, why in (("config.json", "not a Transformers model folder"),
                        ("preprocessor_config.json", "SpeechBrain's integration reads the feature extractor's "
                                                     "do_normalize from it")):
        if not (p / needed).is_file():
            raise SpxError(f"{where} {name!r} has no {needed}: {why}", where=where,
                           hint="point it at a folder written by save_pretrained (config.json, weights and the "
                                "Wav2Vec2FeatureExtractor's preprocessor_config.json)")
    try:
        return json.loads((p / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SpxError(f"{p / 'config.json'}: not valid JSON ({exc})", where=where) from None


def model_kind(name: str, config: dict[str, Any] | None) -> str:
    """wav2vec2 | hubert | wavlm: from config.json, or for a hub name from the name (the child logs the real
    model_type: every class loads what the config says through AutoModel)."""
    if config is not None:
        return str(config.get("model_type"))
    low = name.lower()
    return "hubert" if "hubert" in low else "wavlm" if "wavlm" in low else "wav2vec2"


def resolve_init_from(init_from: str) -> Path:
    """An spx speechbrain ssl_ctc export (checkpoints/export with spx_export.json) or the run dir naming it."""
    p = exported_model_dir(init_from, "a finished speechbrain ssl_ctc run dir or its checkpoints/export")
    info_path = p / EXPORT_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info.get("family") != NAME:
        raise SpxError(f"init_from {p} is not an ssl_ctc model exported by spx's speechbrain backend",
                       where="init_from", hint="point init_from at a finished speechbrain ssl_ctc run dir")
    if info.get("method") != "full":
        raise SpxError(f"init_from {p} is a {info.get('method')} model: its export holds the adapter weights only",
                       where="init_from", hint="fine-tune from a finetune.method full run, or start again from "
                                               "model.encoder.pretrained (set backends.speechbrain.merge_lora: true "
                                               "to get a merged Transformers folder to start from)")
    return p


# ---------------------------------------------------------------- contract
def check(spec: Spec) -> None:
    enc = spec.model.encoder
    config = pretrained_config(enc.pretrained)
    kind = model_kind(enc.pretrained, config)
    if kind not in SSL_CLASSES:
        raise SpxError(f"model.encoder.pretrained {enc.pretrained!r} is a {kind!r} model; ssl_ctc takes "
                       f"{', '.join(SSL_CLASSES)}", where="model.encoder.pretrained",
                       hint="use a wav2vec2, HuBERT or WavLM checkpoint")
    if enc.layer_weighting:
        raise SpxError("model.encoder.layer_weighting is not rendered by the speechbrain backend: SpeechBrain's "
                       "WeightedSSLModel is built for frozen SSL benchmarking (raw, unnormalized waveform, no "
                       "padding mask), not for fine-tuning", where="model.encoder.layer_weighting",
                       hint="set it to false on speechbrain")
    aug = spec.augmentation
    for key, value in (("augmentation.noise", aug.noise), ("augmentation.speed_perturb", aug.speed_perturb)):
        if value:
            raise SpxError(f"{key} is not rendered by the speechbrain ssl_ctc family yet", where=key,
                           hint="remove it for this family")
    layers = (config or {}).get("num_hidden_layers")
    for item in spec.freeze:
        if item.startswith(FREEZE_LAYERS):
            raw = item[len(FREEZE_LAYERS):]
            if not raw.isdigit() or int(raw) < 1:
                raise SpxError(f"freeze item {item!r}: {raw!r} is not a number of layers >= 1", where="freeze",
                               hint="e.g. freeze: ['encoder.layers:4'] freezes the first four encoder layers")
            if layers is not None and int(raw) > layers:
                raise SpxError(f"freeze item {item!r}: the pretrained encoder has {layers} layers", where="freeze",
                               hint=f"use encoder.layers:N with 1 <= N <= {layers}, or 'encoder' for all of it")
    if spec.finetune.method == "lora" and "encoder" in spec.freeze:
        raise SpxError("freeze: encoder with finetune.method lora: SpeechBrain's frozen integration runs the encoder "
                       "without gradients, so its LoRA adapters could not train", where="freeze",
                       hint="drop 'encoder' from freeze: LoRA keeps the base weights frozen by itself")
    if spec.init_from:
        resolve_init_from(spec.init_from)
    extra = spec.backends.get("speechbrain", {})
    if extra.get("merge_lora") and spec.finetune.method != "lora":
        raise SpxError("backends.speechbrain.merge_lora applies to finetune.method lora",
                       where="backends.speechbrain.merge_lora", hint="drop it, or set finetune.method: lora")


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    train, test_csvs = write_asr_csvs(spec, native)
    init = resolve_init_from(spec.init_from) if spec.init_from else None
    info = json.loads((init / EXPORT_INFO).read_text()) if init else None
    load_head = False
    if spec.tokenizer.type == "char":
        from spx.adapters.common.child import char_vocabulary

        tokens = char_vocabulary([u.text for u in train])
        if info is not None and info.get("tokenizer") == "char" and set(tokens) <= set(info["tokens"]):
            tokens, load_head = list(info["tokens"]), True  # the fine-tuned head still means the same characters
        (native / "tokens.txt").write_text("".join(json.dumps(t) + "\n" for t in tokens), encoding="utf-8")
        output_neurons = len(tokens) + 1  # + the CTC blank at index 0
    else:
        output_neurons = spec.tokenizer.vocab_size  # SentencePiece <unk> (id 0) is the blank, as in SB recipes
        load_head = bool(info and info.get("tokenizer") == "bpe" and info.get("vocab_size") == output_neurons)
    (native / "hparams.yaml").write_text(hparams_text(spec, run_dir, test_csvs, output_neurons, init, load_head),
                                         encoding="utf-8")
    import yaml

    overrides = spec.backends.get("speechbrain", {})
    (native / "overrides.yaml").write_text(
        "# backends.speechbrain from the spec: applied untouched as hyperpyyaml overrides of hparams.yaml\n"
        + (yaml.safe_dump(overrides, sort_keys=False) if overrides else "{}\n"), encoding="utf-8")
    env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if spec.resources.devices * spec.resources.nodes > 1 and spec.resources.threads is None:
        env["OMP_NUM_THREADS"] = "1"
    return [step("train", "ssl_train", run_dir, launch="torchrun", log="train.log", env=env),
            step("decode", "ssl_decode", run_dir, timed=True, env={"TOKENIZERS_PARALLELISM": "false"})]


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {"native_config": str(run_dir / "native" / "hparams.yaml")}


# ---------------------------------------------------------------- the native recipe (hparams.yaml)
def hparams_text(spec: Spec, rd: RunDir, test_csvs: list[str], output_neurons: int, init: Path | None,
                 load_head: bool) -> str:
    tr, opt, sch, early, ft = (spec.training, spec.training.optimizer, spec.training.scheduler,
                               spec.training.early_stopping, spec.finetune)
    enc = spec.model.encoder
    config = pretrained_config(enc.pretrained)
    kind = model_kind(enc.pretrained, config)
    source = str(Path(enc.pretrained).expanduser().resolve()) if Path(enc.pretrained).expanduser().exists() \
        else enc.pretrained
    backend = "gloo" if spec.resources.accelerator == "cpu" else "nccl"
    sa = spec.augmentation.spec_augment
    lora = ft.method == "lora"
    out = f"""\
# SpeechBrain recipe generated by spx from ../spec.yaml (hyperpyyaml), laid out as SpeechBrain's
# LibriSpeech/ASR/CTC/hparams/train_hf_wav2vec.yaml. Edit the spec, not this file.
# Run by: python -m {STEPS}.ssl_train RUN_DIR (torchrun for several processes);
# ../native/overrides.yaml (backends.speechbrain) is applied on top as hyperpyyaml overrides.

seed: {tr.seed}
output_folder: {yaml_value(str(rd / 'checkpoints'))}
save_folder: !ref <output_folder>
train_log: {yaml_value(str(rd / 'native' / 'train_log.txt'))}

# ---- data (SpeechBrain CSVs exported from the spx manifests)
train_csv: {yaml_value(str(rd / 'native' / 'train.csv'))}
valid_csv: {yaml_value(str(rd / 'native' / 'valid.csv'))}
test_csvs: {yaml_value(test_csvs)}
sample_rate: {spec.features.sample_rate}
num_workers: {tr.num_workers}
batch_size: {yaml_value(tr.batch_size)}
dynamic_batching: {yaml_value(tr.batch_seconds is not None)}
max_batch_length_seconds: {yaml_value(tr.batch_seconds)}
num_buckets: 20
valid_batch_size: {max(1, spec.decoding.batch_size)}

# ---- tokenizer (a new CTC head on it)
tokenizer_type: {spec.tokenizer.type}
tokenizer_dir: {yaml_value(str(rd / 'native' / 'tokenizer'))}
tokens_file: {yaml_value(str(rd / 'native' / 'tokens.txt'))}
vocab_size: {yaml_value(spec.tokenizer.vocab_size)}
output_neurons: {output_neurons}
blank_index: 0

# ---- training
number_of_epochs: {yaml_value(tr.epochs if tr.epochs is not None else 1000000)}
optimizer_step_limit: {yaml_value(tr.max_steps)}
grad_accumulation_factor: {tr.grad_accumulation}
max_grad_norm: {yaml_value(tr.grad_clip if tr.grad_clip is not None else float('inf'))}
precision: {tr.precision}
eval_precision: {tr.precision}
noprogressbar: True
distributed_backend: {backend}
lr: {yaml_value(opt.lr)}  # the new CTC head
lr_pretrained: {yaml_value(opt.pretrained_lr if opt.pretrained_lr is not None else opt.lr)}  # the pretrained model
freeze_pretrained_steps: {ft.freeze_pretrained_steps}  # optimizer steps the pretrained model waits for the head
weight_decay: {yaml_value(opt.weight_decay)}
betas: {yaml_value(list(opt.betas))}
warmup_steps: {sch.warmup_steps}
min_lr: {yaml_value(sch.min_lr)}
keep_checkpoints: {tr.keep_checkpoints}
early_stopping_monitor: {yaml_value(early.monitor if early else None)}
early_stopping_patience: {yaml_value(early.patience if early else None)}

# ---- decoding
decoding: {spec.decoding.strategy}
beam_size: {spec.decoding.beam_size}
test_batch_size: {spec.decoding.batch_size}

# ---- init and fine-tuning
init_from: {yaml_value(str(init) if init else None)}  # an spx ssl_ctc export: ssl.ckpt (+ ctc_lin.ckpt)
init_load_head: {yaml_value(load_head)}
freeze: {yaml_value(list(spec.freeze))}
finetune_method: {ft.method}
merge_lora: False  # backends.speechbrain.merge_lora: true also exports the LoRA merged into a Transformers folder

# ---- model: pretrained SSL encoder ({kind}) -> dropout -> linear CTC head
pretrained_source: {yaml_value(source)}
pretrained_kind: {kind}
encoder_dim: {yaml_value(config.get('hidden_size') if config else None)}  # null: read from the hub config by the child
spec_augment: {yaml_value(sa.model_dump() if sa else None)}  # masks inside the model (Transformers' mask_time_*)
feature_frame_ms: {yaml_value(spec.features.hop_length_ms)}
n_mels: {spec.features.n_mels}
ssl_base: !new:{SSL_CLASSES[kind]}
    source: !ref <pretrained_source>
    save_path: {yaml_value(str(rd / 'checkpoints' / 'pretrained_cache'))}
    output_norm: False
    freeze: {yaml_value('encoder' in spec.freeze)}
    freeze_feature_extractor: {yaml_value('feature_extractor' in spec.freeze)}
    apply_spec_augment: {yaml_value(sa is not None)}
"""
    if lora:
        targets = [f"*.{t}" for t in (ft.target_modules or LORA_TARGETS)]
        adapter = DROPOUT_LORA if ft.dropout else "speechbrain.nnet.adapters.LoRA"
        kwargs = {"rank": ft.rank, "alpha": ft.alpha, **({"dropout": ft.dropout} if ft.dropout else {})}
        out += f"""\
# LoRA (finetune.method lora): AdaptedModel freezes the base; adapters are inserted after init (manual insertion)
ssl: !new:speechbrain.nnet.adapters.AdaptedModel
    model_to_adapt: !ref <ssl_base>
    adapter_class: !name:{adapter}
    target_layers: {yaml_value(targets)}
    adapter_kwargs: {yaml_value(kwargs)}
    manual_adapter_insertion: True
"""
    else:
        out += "ssl: !ref <ssl_base>\n"
    out += f"""\
head_dropout: !new:torch.nn.Dropout
    p: {yaml_value(spec.model.head_dropout)}
ctc_lin: !new:speechbrain.nnet.linear.Linear
    input_size: !ref <encoder_dim>
    n_neurons: !ref <output_neurons>
log_softmax: !new:speechbrain.nnet.activations.Softmax
    apply_log: True
ctc_cost: !name:speechbrain.nnet.losses.ctc_loss
    blank_index: !ref <blank_index>
modules:
    ssl: !ref <ssl>
    head_dropout: !ref <head_dropout>
    ctc_lin: !ref <ctc_lin>

# ---- two optimizers, as the recipe: the pretrained model and the new head
pretrained_opt_class: !name:{OPTIMIZERS[opt.name]}
    lr: !ref <lr_pretrained>
    weight_decay: !ref <weight_decay>
{optimizer_momentum(spec)}
head_opt_class: !name:{OPTIMIZERS[opt.name]}
    lr: !ref <lr>
    weight_decay: !ref <weight_decay>
{optimizer_momentum(spec)}
{lr_annealing(spec, 'lr_annealing_head', 'lr')}
{lr_annealing(spec, 'lr_annealing_pretrained', 'lr_pretrained')}

# ---- checkpointing (resume with recover_if_possible) and the epoch loop
{epoch_counter(spec)}
checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
    checkpoints_dir: !ref <save_folder>
    recoverables:
        ssl: !ref <ssl>
        ctc_lin: !ref <ctc_lin>
        counter: !ref <epoch_counter>
"""
    return out
