"""SpeechBrain Conformer-CTC (`task: asr`, `model.family: conformer_ctc`): the spec becomes a SpeechBrain-native recipe.

render writes run_dir/native/:
  hparams.yaml     the generated hyperpyyaml (modules, Fbank, conv front end + Conformer, CTC head, optimizer,
                   scheduler, SpecAugment, Checkpointer, epoch counter); loaded only by the child processes
  overrides.yaml   `backends.speechbrain` settings, applied untouched as hyperpyyaml overrides (like a recipe's CLI)
  train.csv, valid.csv, <test>.csv   SpeechBrain CSVs (ID,duration,wav,...,wrd) from the run's manifests;
                   train/valid `wrd` hold the cleaned training targets
  tokens.txt       the character vocabulary (char tokenizer)
Steps: train (steps/train.py under torchrun: one process per device, SpeechBrain DDP) and decode (steps/decode.py).
Nothing here imports torch or speechbrain.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from spx.adapters.common.spec_helpers import exported_model_dir
from spx.adapters.speechbrain.helpers import OPTIMIZERS, STEPS, WARMUP_ANNEALING, step, yaml_value
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec

TASK, NAME = "asr", "conformer_ctc"
CPU_PRECISIONS = ("fp32", "bf16")
INIT_FROM = "a trained SpeechBrain model (an spx speechbrain run dir or checkpoint dir)"
INFERENCE = f"{STEPS}.decode"
EXPORT = "spx.adapters.speechbrain.steps.export"

EXPORT_INFO = "spx_export.json"  # in the exported model folder: tokenizer, tokens, module files
FRONTEND_CHANNELS = [64, 32, 32]


def resolve_init_from(init_from: str) -> Path:
    """The local SpeechBrain model spx fine-tunes from: a model exported by spx (run_dir/checkpoints/export:
    hparams.yaml, one <module>.ckpt per module, the tokenizer and spx_export.json) or an spx run dir
    (its train_summary.json names the export)."""
    p = exported_model_dir(init_from, "a SpeechBrain model exported by spx (run_dir/checkpoints/export) or its run dir")
    if not (p / EXPORT_INFO).exists():
        raise SpxError(f"init_from {p} is not a SpeechBrain model exported by spx (no {EXPORT_INFO})",
                       hint="point init_from at run_dir/checkpoints/export of a finished speechbrain run, or at the run dir")
    return p


def export_info(path: Path) -> dict[str, Any]:
    return json.loads((path / EXPORT_INFO).read_text())


def frontend_blocks(subsampling: int) -> int:
    return {4: 2, 8: 3}[subsampling]


def frontend_out_dim(n_mels: int, blocks: int, channels: int) -> int:
    """Feature size after the conv front end: each stride-2 'same' conv halves (ceil) the mel axis."""
    f = n_mels
    for _ in range(blocks):
        f = math.ceil(f / 2)
    return f * channels


# ---------------------------------------------------------------- contract
def check(spec: Spec) -> None:
    aug = spec.augmentation
    if aug.noise is not None:
        raise SpxError("augmentation.noise is not rendered by the speechbrain backend in spx yet",
                       hint="remove augmentation.noise for this backend")
    if aug.speed_perturb:
        bad = [s for s in aug.speed_perturb if not 0.5 <= s <= 2.0]
        if bad:
            raise SpxError(f"augmentation.speed_perturb factors {bad} are out of range",
                           hint="use factors like [0.9, 1.0, 1.1]")
    if spec.init_from:
        resolve_init_from(spec.init_from)
    bad_keys = [k for k in spec.backends.get("speechbrain", {}) if not isinstance(k, str)]
    if bad_keys:
        raise SpxError(f"backends.speechbrain keys must be strings, got {bad_keys}", hint="use hparams key names")


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    from spx.adapters.common.child import char_vocabulary, clean_transcript
    from spx.manifests import read_manifest
    from spx.manifests.exporters import export_speechbrain_csv

    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    lower = spec.tokenizer.lowercase

    def cleaned(path: str) -> list:
        out = []
        for u in read_manifest(path):
            text = clean_transcript(u.text or "", lower)
            d = spec.data
            if d.max_duration is not None and u.duration > d.max_duration:
                continue
            if d.min_duration is not None and u.duration < d.min_duration:
                continue
            if not text:
                continue
            u.text = text
            out.append(u)
        return out

    train = cleaned(spec.data.train)
    valid = cleaned(spec.data.valid)
    if not train:
        raise SpxError(f"no usable training utterances in {spec.data.train} (all empty or filtered by duration)",
                       hint="check data.train and data.min_duration/max_duration")
    if not valid:
        raise SpxError(f"no usable validation utterances in {spec.data.valid}", hint="check data.valid")
    export_speechbrain_csv(train, native / "train.csv")
    export_speechbrain_csv(valid, native / "valid.csv")
    test_csvs = []
    for t in spec.test_sets:
        dst = native / f"{Path(t).stem}.csv"
        export_speechbrain_csv(read_manifest(t), dst)
        test_csvs.append(str(dst))

    init = None
    info: dict | None = None
    load_head = False
    if spec.init_from:
        init = resolve_init_from(spec.init_from)
        info = export_info(init)
    if spec.tokenizer.type == "char":
        tokens = char_vocabulary([u.text for u in train])
        if info is not None and info.get("tokenizer") == "char":
            # keep the pretrained head when it covers the new text (same vocabulary, same indices)
            old = info["tokens"]
            if set(tokens) <= set(old):
                tokens, load_head = list(old), True
        (native / "tokens.txt").write_text("".join(json.dumps(t) + "\n" for t in tokens), encoding="utf-8")
        output_neurons = len(tokens) + 1  # + CTC blank at index 0
    else:
        output_neurons = spec.tokenizer.vocab_size  # SentencePiece <unk> (id 0) is the CTC blank, as in SB recipes
        if info is not None and info.get("tokenizer") == "bpe" and info.get("vocab_size") == spec.tokenizer.vocab_size:
            load_head = True

    devices = spec.resources.devices * spec.resources.nodes
    (native / "hparams.yaml").write_text(hparams_text(spec, run_dir, test_csvs, output_neurons, init, load_head),
                                         encoding="utf-8")
    overrides = spec.backends.get("speechbrain", {})
    import yaml

    (native / "overrides.yaml").write_text(
        "# backends.speechbrain from the spec: applied untouched as hyperpyyaml overrides of hparams.yaml\n"
        + (yaml.safe_dump(overrides, sort_keys=False) if overrides else "{}\n"), encoding="utf-8")
    env = {}
    if devices > 1 and spec.resources.threads is None:
        env["OMP_NUM_THREADS"] = "1"
    return [
        step("train", "train", run_dir, launch="torchrun", log="train.log", env=env),
        step("decode", "decode", run_dir, timed=True),
    ]


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {"native_config": str(run_dir / "native" / "hparams.yaml")}


# ---------------------------------------------------------------- the native recipe (hparams.yaml)
def hparams_text(spec: Spec, rd: RunDir, test_csvs: list[str], output_neurons: int, init: Path | None,
                 load_head: bool) -> str:
    sections = [_header_and_data(spec, rd, test_csvs), _tokenizer(spec, rd, output_neurons), _training(spec),
                _decoding_and_init(spec, init, load_head), _features(spec, init), _augmentation(spec), _model(spec),
                _optimizer(spec), _checkpointing(spec)]
    return "\n".join(sections) + "\n"


def _header_and_data(spec: Spec, rd: RunDir, test_csvs: list[str]) -> str:
    tr = spec.training
    return f"""\
# SpeechBrain recipe generated by spx from ../spec.yaml (hyperpyyaml). Edit the spec, not this file.
# Run by: python -m {STEPS}.train RUN_DIR  (torchrun for several processes);
# ../native/overrides.yaml (backends.speechbrain) is applied on top as hyperpyyaml overrides.

seed: {tr.seed}
output_folder: {yaml_value(str(rd / 'checkpoints'))}
save_folder: !ref <output_folder>
train_log: {yaml_value(str(rd / 'native' / 'train_log.txt'))}

# ---- data (SpeechBrain CSVs exported from the spx manifests)
train_csv: {yaml_value(str(rd / 'native' / 'train.csv'))}
valid_csv: {yaml_value(str(rd / 'native' / 'valid.csv'))}
test_csvs: {yaml_value(test_csvs)}
sorting: random
sample_rate: {spec.features.sample_rate}
num_workers: {tr.num_workers}
batch_size: {yaml_value(tr.batch_size)}
dynamic_batching: {yaml_value(tr.batch_seconds is not None)}
max_batch_length_seconds: {yaml_value(tr.batch_seconds)}  # DynamicBatchSampler budget per device
num_buckets: 20
valid_batch_size: {max(1, spec.decoding.batch_size)}
"""


def _tokenizer(spec: Spec, rd: RunDir, output_neurons: int) -> str:
    return f"""\
# ---- tokenizer
tokenizer_type: {spec.tokenizer.type}
tokenizer_dir: {yaml_value(str(rd / 'native' / 'tokenizer'))}
tokens_file: {yaml_value(str(rd / 'native' / 'tokens.txt'))}
vocab_size: {yaml_value(spec.tokenizer.vocab_size)}
output_neurons: {output_neurons}
blank_index: 0
"""


def _training(spec: Spec) -> str:
    tr, opt, sch, early = spec.training, spec.training.optimizer, spec.training.scheduler, spec.training.early_stopping
    backend = "gloo" if spec.resources.accelerator == "cpu" else "nccl"  # "auto": the child uses gloo without CUDA
    return f"""\
# ---- training (Brain run options are read from these keys)
number_of_epochs: {yaml_value(tr.epochs if tr.epochs is not None else 1000000)}
optimizer_step_limit: {yaml_value(tr.max_steps)}
grad_accumulation_factor: {tr.grad_accumulation}
max_grad_norm: {yaml_value(tr.grad_clip if tr.grad_clip is not None else float('inf'))}
precision: {tr.precision}
eval_precision: {tr.precision}
noprogressbar: True
distributed_backend: {backend}
world_size: {spec.resources.devices * spec.resources.nodes}
lr: {yaml_value(opt.lr)}
weight_decay: {yaml_value(opt.weight_decay)}
betas: {yaml_value(list(opt.betas))}
scheduler: {sch.name}
warmup_steps: {sch.warmup_steps}
min_lr: {yaml_value(sch.min_lr)}
keep_checkpoints: {tr.keep_checkpoints}
early_stopping_monitor: {yaml_value(early.monitor if early else None)}
early_stopping_patience: {yaml_value(early.patience if early else None)}
"""


def _decoding_and_init(spec: Spec, init: Path | None, load_head: bool) -> str:
    d = spec.decoding
    return f"""\
# ---- decoding
decoding: {d.strategy}
beam_size: {d.beam_size}
test_batch_size: {d.batch_size}

# ---- pretrained init (speechbrain Pretrainer) and freezing
init_from: {yaml_value(str(init) if init else None)}
init_load_head: {yaml_value(load_head)}
freeze: {yaml_value(list(spec.freeze))}
"""


def _features(spec: Spec, init: Path | None) -> str:
    feat = spec.features
    return f"""\
# ---- features
n_mels: {feat.n_mels}
compute_features: !new:speechbrain.lobes.features.Fbank
    sample_rate: !ref <sample_rate>
    n_fft: {feat.n_fft}
    n_mels: !ref <n_mels>
    win_length: {yaml_value(feat.win_length_ms)}
    hop_length: {yaml_value(feat.hop_length_ms)}
normalize: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    update_until_epoch: {0 if init else 4}
"""


def _augmentation(spec: Spec) -> str:
    aug = spec.augmentation
    out = "# ---- augmentation\n"
    if aug.speed_perturb:
        speeds = [int(round(s * 100)) for s in aug.speed_perturb]
        out += f"""\
speed_perturb: !new:speechbrain.augment.time_domain.SpeedPerturb
    orig_freq: !ref <sample_rate>
    speeds: {yaml_value(speeds)}
wav_augment: !new:speechbrain.augment.augmenter.Augmenter
    min_augmentations: 1
    max_augmentations: 1
    augment_prob: 1.0
    augmentations: [!ref <speed_perturb>]
"""
    else:
        out += "wav_augment: null\n"
    sa = aug.spec_augment
    drops = [(name, width, count, dim) for name, width, count, dim in (
        ("time_drop", sa.time_width, sa.time_masks, 1), ("freq_drop", sa.freq_width, sa.freq_masks, 2)) if count] \
        if sa else []
    if not drops:
        return out + "fea_augment: null\n"
    for name, width, count, dim in drops:
        out += f"""\
{name}: !new:speechbrain.augment.freq_domain.SpectrogramDrop
    drop_length_low: 0
    drop_length_high: {width}
    drop_count_low: {count}
    drop_count_high: {count}
    replace: zeros
    dim: {dim}
"""
    return out + f"""\
fea_augment: !new:speechbrain.augment.augmenter.Augmenter
    min_augmentations: {len(drops)}
    max_augmentations: {len(drops)}
    augment_prob: 1.0
    augmentations: [{', '.join(f'!ref <{name}>' for name, *_ in drops)}]
"""


def _model(spec: Spec) -> str:
    enc = spec.model.encoder
    blocks = frontend_blocks(enc.subsampling)
    channels = FRONTEND_CHANNELS[:blocks]
    modules = "".join(f"    {m}: !ref <{m}>\n" for m in ("CNN", "enc", "ctc_lin", "normalize"))
    # no dropout inside the conv blocks: NeMo and ESPnet drop out only after the front end (SpeechBrain's
    # custom_src_module does the same), and dropout on these [B, T, F, C] maps cost ~20% of a CPU step
    return f"""\
# ---- model: conv front end (subsampling x{enc.subsampling}) -> Conformer encoder -> linear CTC head
d_model: {enc.d_model}
CNN: !new:speechbrain.lobes.models.convolution.ConvolutionFrontEnd
    input_shape: [8, 10, !ref <n_mels>]
    num_blocks: {blocks}
    num_layers_per_block: 1
    out_channels: {yaml_value(channels)}
    kernel_sizes: {yaml_value([3] * blocks)}
    strides: {yaml_value([2] * blocks)}
    residuals: {yaml_value([False] * blocks)}
    dropout: 0.0
Transformer: !new:speechbrain.lobes.models.transformer.TransformerASR.TransformerASR
    input_size: {frontend_out_dim(spec.features.n_mels, blocks, channels[-1])}
    tgt_vocab: !ref <output_neurons>
    d_model: !ref <d_model>
    nhead: {enc.heads}
    num_encoder_layers: {enc.layers}
    num_decoder_layers: 0
    d_ffn: {enc.ff_expansion * enc.d_model}
    dropout: {yaml_value(enc.dropout)}
    kernel_size: {enc.conv_kernel}
    encoder_module: conformer
    attention_type: RelPosMHAXL
    normalize_before: True
    causal: False
    conformer_activation: !name:speechbrain.nnet.activations.Swish
enc: !new:speechbrain.lobes.models.transformer.TransformerASR.EncoderWrapper  # forward() = encode()
    transformer: !ref <Transformer>
ctc_lin: !new:speechbrain.nnet.linear.Linear
    input_size: !ref <d_model>
    n_neurons: !ref <output_neurons>
log_softmax: !new:speechbrain.nnet.activations.Softmax
    apply_log: True
ctc_cost: !name:speechbrain.nnet.losses.ctc_loss
    blank_index: !ref <blank_index>
modules:
{modules}model: !new:torch.nn.ModuleList
    - [!ref <CNN>, !ref <Transformer>, !ref <ctc_lin>]
"""


def _optimizer(spec: Spec) -> str:
    opt, sch = spec.training.optimizer, spec.training.scheduler
    momentum = "    betas: !ref <betas>" if opt.name in ("adam", "adamw") else "    momentum: 0.9"
    if sch.name == "noam":
        annealing = f"""\
lr_annealing: !name:speechbrain.nnet.schedulers.NoamScheduler
    lr_initial: !ref <lr>
    n_warmup_steps: {max(1, sch.warmup_steps)}"""
    elif sch.name == "linear":
        annealing = """\
lr_annealing: !name:speechbrain.nnet.schedulers.LinearWarmupScheduler
    initial_value: !ref <lr>
    num_warmup_steps: !ref <warmup_steps>"""
    else:
        annealing = f"""\
lr_annealing: !name:{WARMUP_ANNEALING}
    shape: {sch.name}
    lr: !ref <lr>
    warmup_steps: !ref <warmup_steps>
    min_lr: !ref <min_lr>"""
    return f"""\
# ---- optimizer and scheduler (stepped once per optimizer update)
opt_class: !name:{OPTIMIZERS[opt.name]}
    lr: !ref <lr>
    weight_decay: !ref <weight_decay>
{momentum}
{annealing}
"""


def _checkpointing(spec: Spec) -> str:
    if spec.training.early_stopping:
        counter = """\
epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounterWithStopper
    limit: !ref <number_of_epochs>
    limit_to_stop: !ref <early_stopping_patience>
    limit_warmup: 0
    direction: min"""
    else:
        counter = """\
epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter
    limit: !ref <number_of_epochs>"""
    return f"""\
# ---- checkpointing (resume with recover_if_possible) and the epoch loop
{counter}
checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
    checkpoints_dir: !ref <save_folder>
    recoverables:
        CNN: !ref <CNN>
        Transformer: !ref <Transformer>
        ctc_lin: !ref <ctc_lin>
        normalizer: !ref <normalize>
        counter: !ref <epoch_counter>
"""
