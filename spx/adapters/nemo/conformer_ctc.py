"""NeMo Conformer-CTC (`task: asr`, `model.family: conformer_ctc`): the spec becomes one OmegaConf config for
EncDecCTCModel (characters) or EncDecCTCModelBPE (sentencepiece), with NeMo's ConformerEncoder, Lightning trainer and
exp_manager, plus NeMo JSONL manifests of the cleaned transcripts.

render writes run_dir/native/: config.yaml, train.json, valid.json, test_<name>.json (noise.json with
augmentation.noise; tokenizer_text.txt with a bpe tokenizer). Steps: tokenizer (bpe only), train, decode
(spx.adapters.nemo.steps.*). Nothing here imports torch or NeMo.
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

from spx.adapters.common.spec_helpers import deep_merge
from spx.adapters.nemo.helpers import architecture_differences, exp_manager_config, exported_model_of_run, \
    nemo_model_config, optim_config, tokenizer_kind, trainer_config, write_config
from spx.errors import SpxError
from spx.manifests import iter_manifest
from spx.manifests.exporters import export_nemo
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import read_json

TASK = "asr"
NAME = "conformer_ctc"
CPU_PRECISIONS = ("fp32", "bf16")
INIT_FROM = ("a .nemo file (a run's exported_model), an spx nemo run dir, or a NeMo pretrained CTC model name "
             "(stt_en_conformer_ctc_small, nvidia/stt_en_conformer_ctc_small)")
INFERENCE = "spx.adapters.nemo.steps.decode"
EXPORT = "spx.adapters.nemo.steps.export"
# adapter: NeMo's LinearAdapter in every Conformer block (its PEFT for ASR; NeMo 3.0 has no LoRA for ASR modules)
FINETUNE_METHODS = ("full", "adapter")
FINETUNE_OPTIONS = ("finetune.init_include", "finetune.init_exclude", "training.optimizer.pretrained_lr",
                    "finetune.freeze_pretrained_steps")
FINETUNE_REFUSED = {"finetune.method lora": "NeMo 3.0 has no LoRA for its ASR modules; its parameter-efficient path "
                                           "is LinearAdapter in every Conformer block (finetune.method adapter)"}
ENCODER = "nemo.collections.asr.modules.ConformerEncoder"
ENCODER_WITH_ADAPTERS = "nemo.collections.asr.modules.ConformerEncoderAdapter"
# a pretrained model name: stt_en_conformer_ctc_small (NGC) or nvidia/stt_en_conformer_ctc_small (Hugging Face)
PRETRAINED_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")

NATIVE_CONFIG = "native/config.yaml"
PRECISION = {"fp32": 32, "fp16": "16-mixed", "bf16": "bf16-mixed"}
# spec early_stopping.monitor -> (NeMo's logged metric, mode); the checkpoints are ranked by the same
MONITOR = {"valid_loss": ("val_loss", "min"), "valid_wer": ("val_wer", "min")}
# NeMo (Lhotse) dynamic batching perturbs speed with these rates only
LHOTSE_SPEED_RATES = [0.9, 1.0, 1.1]


def speed_rates(rates: list[float]) -> dict[str, Any]:
    """NeMo's SpeedPerturbation draws from `num_rates` evenly spaced rates in [min, max]."""
    rates = sorted(rates)
    if any(r <= 0 for r in rates):
        raise SpxError(f"augmentation.speed_perturb {rates}: rates must be > 0", where="augmentation.speed_perturb",
                       hint="e.g. [0.9, 1.0, 1.1]")
    n = len(rates)
    grid = [rates[0] + i * (rates[-1] - rates[0]) / (n - 1) for i in range(n)] if n > 1 else rates
    if any(abs(a - b) > 1e-6 for a, b in zip(grid, rates)):
        raise SpxError(f"augmentation.speed_perturb {rates}: NeMo's speed perturbation uses evenly spaced rates",
                       where="augmentation.speed_perturb", hint="use evenly spaced rates such as [0.9, 1.0, 1.1]")
    return {"min_speed_rate": rates[0], "max_speed_rate": rates[-1], "num_rates": n}


def resolve_init(init_from: str) -> str:
    """A .nemo file or an spx nemo run dir (its exported .nemo), resolved; a pretrained model name as it is (the train
    step loads it with NeMo's from_pretrained)."""
    p = Path(init_from).expanduser()
    if p.is_dir():
        if not (p / "train_summary.json").exists():
            raise SpxError(f"init_from {init_from!r} is a folder but not a finished spx nemo run", where="init_from",
                           hint="pass a .nemo file, an spx nemo run dir, or a NeMo pretrained model name")
        return exported_model_of_run(p, init_from)
    if init_from.endswith(".nemo"):
        if not p.is_file():
            raise SpxError(f"init_from {init_from!r}: file not found", where="init_from",
                           hint="pass an existing .nemo file (a run's checkpoints/model.nemo)")
        return str(p.resolve())
    if p.exists() or not PRETRAINED_NAME.fullmatch(init_from):
        raise SpxError(f"init_from {init_from!r} is not a .nemo file", where="init_from",
                       hint="pass a .nemo file (a run's train_summary.json names it as exported_model), "
                            "an spx nemo run dir, or a NeMo pretrained model name such as stt_en_conformer_ctc_small")
    return init_from


def model_blocks(spec: Spec) -> dict[str, Any]:
    """The rendered preprocessor and encoder blocks, backends.nemo merged in (what the train step builds)."""
    blocks = {"preprocessor": preprocessor_config(spec), "encoder": encoder_config(spec)}
    extra = (spec.backends.get("nemo") or {}).get("model") or {}
    return deep_merge(blocks, {k: v for k, v in extra.items() if k in blocks})


def check_source(spec: Spec, source: str) -> None:
    """A .nemo source's tokenizer kind and architecture must be the job's (the train step checks a pretrained name
    the same way once NeMo has it)."""
    cfg = nemo_model_config(source)
    theirs = tokenizer_kind(cfg)
    if theirs != spec.tokenizer.type:
        raise SpxError(f"init_from {spec.init_from!r} is a {theirs} model and this job's tokenizer.type is "
                       f"{spec.tokenizer.type}: NeMo's change_vocabulary keeps the kind of tokenizer",
                       where="tokenizer.type", hint=f"set tokenizer.type: {theirs} (its vocabulary may differ: the "
                                                    "CTC head is then new)")
    diffs = architecture_differences(model_blocks(spec), cfg)
    if diffs:
        raise SpxError(f"init_from {spec.init_from!r} has another architecture than this job: " + "; ".join(diffs[:6]),
                       where="model.encoder", hint="set model.encoder / features (or backends.nemo.model.encoder / "
                                                   "preprocessor) to the source model's values")


def check(spec: Spec) -> None:
    aug, tr = spec.augmentation, spec.training
    if aug.speed_perturb:
        speed_rates(aug.speed_perturb)
    if tr.batch_seconds:
        if aug.speed_perturb and sorted(aug.speed_perturb) != LHOTSE_SPEED_RATES:
            raise SpxError("with training.batch_seconds NeMo (Lhotse) speed perturbation is fixed to [0.9, 1.0, 1.1]",
                           where="augmentation.speed_perturb",
                           hint="use [0.9, 1.0, 1.1], or training.batch_size instead of batch_seconds")
        if aug.noise:
            raise SpxError("augmentation.noise with training.batch_seconds is not supported on nemo",
                           where="augmentation.noise", hint="use training.batch_size with noise")
    if spec.finetune.method == "adapter" and spec.freeze:
        raise SpxError("finetune.method adapter freezes the whole pretrained model already; freeze has nothing left "
                       "to do", where="freeze", hint="drop freeze, or use finetune.method full with freeze")
    ft, opt = spec.finetune, spec.training.optimizer
    if ft.method == "adapter" and (opt.pretrained_lr is not None or ft.freeze_pretrained_steps):
        key = "training.optimizer.pretrained_lr" if opt.pretrained_lr is not None else "finetune.freeze_pretrained_steps"
        raise SpxError(f"{key} acts on the pretrained encoder, which finetune.method adapter keeps frozen (its "
                       "adapters live in the encoder and train at training.optimizer.lr)", where=key,
                       hint=f"drop {key}, or use finetune.method full")
    if spec.init_from:
        source = resolve_init(spec.init_from)  # missing file / unfinished run: say so before anything is written
        if source.endswith(".nemo"):
            check_source(spec, source)


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    from spx.adapters.common.child import char_vocabulary, clean_transcript

    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    lower = spec.tokenizer.lowercase

    def cleaned(path: str):
        for u in iter_manifest(path):
            if u.text is not None:
                u.text = clean_transcript(u.text, lower)
            yield u

    export_nemo(cleaned(spec.data.train), native / "train.json")
    export_nemo(cleaned(spec.data.valid), native / "valid.json")
    for t in spec.test_sets:
        export_nemo(cleaned(t), native / f"test_{Path(t).stem}.json")
    texts = [u.text or "" for u in cleaned(spec.data.train)]
    durations = [u.duration for u in iter_manifest(spec.data.train)]
    if not texts:
        raise SpxError("the training manifest has no utterances", where=spec.data.train, hint="check data.train")

    steps: list[Step] = []
    py = sys.executable
    if spec.tokenizer.type == "bpe":
        (native / "tokenizer_text.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        steps.append(Step("tokenizer", [py, "-m", "spx.adapters.nemo.steps.prep", str(run_dir)]))
    write_config(spec, run_dir / NATIVE_CONFIG, native_config(spec, run_dir, char_vocabulary(texts), durations))
    steps.append(Step("train", [py, "-m", "spx.adapters.nemo.steps.train", str(run_dir)], launch="tasks",
                      log="train.log"))
    steps.append(Step("decode", [py, "-m", "spx.adapters.nemo.steps.decode", str(run_dir)], timed=True))
    return steps


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {"native_config": str(run_dir / NATIVE_CONFIG),
            "model_summary": read_json(run_dir / "native" / "model_summary.json")}


# ------------------------------------------------------------------ native config
def dataset_config(spec: Spec, run_dir: RunDir, manifest: Path, train: bool, labels: list[str] | None
                   ) -> dict[str, Any]:
    """NeMo's train_ds / validation_ds / test_ds; labels: the character vocabulary (None with a bpe tokenizer)."""
    feat, tr, aug = spec.features, spec.training, spec.augmentation
    d: dict[str, Any] = {
        "manifest_filepath": str(manifest),
        "sample_rate": feat.sample_rate,
        "batch_size": tr.batch_size or 16,
        "shuffle": train,
        "num_workers": tr.num_workers,
        "pin_memory": False,
        "trim_silence": False,
        "normalize_transcripts": False,  # spx already cleaned the transcripts (same on every backend)
    }
    if labels is not None:
        d["labels"] = labels
        d["parser"] = "base"
    if not train:
        return d
    if spec.data.max_duration:
        d["max_duration"] = spec.data.max_duration
    if spec.data.min_duration:
        d["min_duration"] = spec.data.min_duration
    if tr.batch_seconds:
        # NeMo's native dynamic batching: Lhotse sampler with a per-device audio-seconds budget (augmentation
        # limits checked in check())
        d.update({"use_lhotse": True, "batch_duration": tr.batch_seconds, "batch_size": None, "shuffle": True,
                  "seed": tr.seed, "drop_last": False})
        if aug.speed_perturb:
            d["perturb_speed"] = True
        return d
    augmentor: dict[str, Any] = {}
    if aug.speed_perturb:
        augmentor["speed"] = {"prob": 1.0, "sr": feat.sample_rate, "resample_type": "fft",
                              **speed_rates(aug.speed_perturb)}
    if aug.noise:
        noise_manifest = run_dir / "native" / "noise.json"
        export_nemo(iter_manifest(aug.noise.manifest), noise_manifest)
        augmentor["noise"] = {"prob": aug.noise.prob, "manifest_path": str(noise_manifest),
                              "min_snr_db": aug.noise.snr_db[0], "max_snr_db": aug.noise.snr_db[1]}
    if augmentor:
        d["augmentor"] = augmentor
    return d


def preprocessor_config(spec: Spec) -> dict[str, Any]:
    """NeMo's log-mel front end from spec.features."""
    feat = spec.features
    return {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "sample_rate": feat.sample_rate,
        "normalize": "per_feature",
        "window_size": feat.win_length_ms / 1000.0,
        "window_stride": feat.hop_length_ms / 1000.0,
        "window": "hann",
        "features": feat.n_mels,
        "n_fft": feat.n_fft,
        "log": True,
        "frame_splicing": 1,
        "dither": 1e-5,
        "pad_to": 0,
        "pad_value": 0.0,
    }


def encoder_config(spec: Spec) -> dict[str, Any]:
    """NeMo's ConformerEncoder from spec.model.encoder (its adapter-capable subclass for finetune.method adapter)."""
    enc, feat = spec.model.encoder, spec.features
    return {
        "_target_": ENCODER_WITH_ADAPTERS if spec.finetune.method == "adapter" else ENCODER,
        "feat_in": feat.n_mels,
        "feat_out": -1,
        "n_layers": enc.layers,
        "d_model": enc.d_model,
        "subsampling": "striding",
        "subsampling_factor": enc.subsampling,
        "subsampling_conv_channels": -1,
        "causal_downsampling": False,
        "ff_expansion_factor": enc.ff_expansion,
        "self_attention_model": "rel_pos",
        "n_heads": enc.heads,
        "att_context_size": [-1, -1],
        "xscaling": True,
        "untie_biases": True,
        "pos_emb_max_len": 5000,
        "conv_kernel_size": enc.conv_kernel,
        "conv_norm_type": "batch_norm",
        "dropout": enc.dropout,
        "dropout_pre_encoder": enc.dropout,
        "dropout_emb": 0.0,
        "dropout_att": enc.dropout,
    }


def native_config(spec: Spec, run_dir: RunDir, labels: list[str], durations: list[float]) -> dict[str, Any]:
    enc, feat, tr, aug = spec.model.encoder, spec.features, spec.training, spec.augmentation
    native = run_dir / "native"
    ckpt_dir = run_dir / "checkpoints"
    bpe = spec.tokenizer.type == "bpe"
    devices, nodes = spec.resources.devices, spec.resources.nodes
    world = devices * nodes
    ds_labels = None if bpe else labels

    optim = optim_config(tr)
    if tr.batch_seconds and not tr.max_steps:
        # a Lhotse loader has no length: give the schedule its length from the manifest durations
        per_epoch = math.ceil(sum(durations) / tr.batch_seconds / world / tr.grad_accumulation)
        optim["sched"]["max_steps"] = max(1, per_epoch * (tr.epochs or 1))

    decoding: dict[str, Any] = {"strategy": "greedy_batch"}
    if spec.decoding.strategy == "beam":
        decoding = {"strategy": "beam_batch", "beam": {"beam_size": spec.decoding.beam_size,
                                                       "return_best_hypothesis": True}}

    model: dict[str, Any] = {
        "sample_rate": feat.sample_rate,
        "log_prediction": False,
        "ctc_reduction": "mean_batch",
        "skip_nan_grad": False,
        "train_ds": dataset_config(spec, run_dir, native / "train.json", True, ds_labels),
        "validation_ds": dataset_config(spec, run_dir, native / "valid.json", False, ds_labels),
        "test_ds": dataset_config(spec, run_dir, native / f"test_{Path(spec.test_sets[0]).stem}.json", False,
                                  ds_labels),
        "preprocessor": preprocessor_config(spec),
        "spec_augment": None,
        "encoder": encoder_config(spec),
        "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
            "feat_in": enc.d_model,
            "num_classes": -1,
            "vocabulary": [] if bpe else labels,
        },
        "decoding": decoding,
        "optim": optim,
    }
    if tr.optimizer.pretrained_lr is not None or spec.finetune.freeze_pretrained_steps:
        # NeMo's per-module learning rates: the pretrained encoder in its own group, the CTC head at optim.lr
        model["optim_param_groups"] = {"encoder": {"lr": tr.optimizer.pretrained_lr or tr.optimizer.lr}}
    if bpe:
        model["tokenizer"] = {"dir": str(native / "tokenizer"), "type": "bpe"}
    else:
        model["labels"] = labels
    if aug.spec_augment:
        sa = aug.spec_augment
        model["spec_augment"] = {
            "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
            "freq_masks": sa.freq_masks, "freq_width": sa.freq_width,
            "time_masks": sa.time_masks, "time_width": sa.time_width, "rect_masks": 0,
        }

    # CPU processes talk over gloo; GPUs over nccl (the child picks when accelerator is auto)
    trainer = trainer_config(spec, tr.epochs, devices=devices, nodes=nodes, strategy="auto" if world == 1 else "ddp",
                             precision=PRECISION[tr.precision])
    trainer["use_distributed_sampler"] = not tr.batch_seconds
    cfg: dict[str, Any] = {
        "name": spec.name,
        "model": model,
        "trainer": trainer,
        "exp_manager": exp_manager_config(spec, run_dir, *MONITOR[tr.early_stopping.monitor if tr.early_stopping
                                                                else "valid_loss"]),
        # spx-run settings NeMo has no config key for (read by spx.adapters.nemo.steps.train)
        "spx": {
            "seed": tr.seed,
            "freeze": list(spec.freeze),
            "init_from": spec.init_from,
            "finetune": {"method": spec.finetune.method, "adapter_dim": spec.finetune.rank,
                         "adapter_dropout": spec.finetune.dropout,
                         "freeze_pretrained_steps": spec.finetune.freeze_pretrained_steps},
            "threads": spec.resources.threads,
            "exported_model": str(ckpt_dir / "model.nemo"),
            "tokenizer": {"type": spec.tokenizer.type, "vocab_size": spec.tokenizer.vocab_size},
            "batch_size": tr.batch_size,
            "batch_seconds": tr.batch_seconds,
        },
    }
    if spec.init_from:
        # NeMo's own fine-tuning keys (ModelPT.maybe_init_from_pretrained_checkpoint): the source alone, or with
        # include / exclude in NeMo's {name: {path | name, include, exclude}} form for a partial init
        src = resolve_init(spec.init_from)
        key, field = ("init_from_nemo_model", "path") if src.endswith(".nemo") else ("init_from_pretrained_model",
                                                                                     "name")
        ft = spec.finetune
        cfg[key] = src if ft.init_include is None and not ft.init_exclude else {
            "spx": {field: src, "include": ft.init_include or [""], "exclude": list(ft.init_exclude)}}
    return cfg
