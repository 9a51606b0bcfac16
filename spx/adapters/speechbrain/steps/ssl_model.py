"""Child-process side of SpeechBrain ssl_ctc shared by train, decode and the tests: the generated hyperpyyaml loaded
into modules (SpeechBrain's Transformers integration + LoRA adapters + the CTC head), initialisation from an spx
export, freezing of the first N layers, the forward pass, the exported model's loading, LoRA merging."""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml
from speechbrain.nnet.adapters import LoRA, replace_module

from spx.adapters.speechbrain.ssl_ctc import EXPORT_INFO
from spx.adapters.speechbrain.steps.model import ctc_decoder
from spx.rundir import RunDir

ADAPTER_PARTS = ("adapter_down_proj", "adapter_up_proj")  # the parameter names SpeechBrain's LoRA adds


class DropoutLoRA(LoRA):
    """SpeechBrain's LoRA with dropout on the adapter branch's input (finetune.dropout; peft's lora_dropout)."""

    def __init__(self, target_module, rank=16, alpha=1.0, dropout=0.0):
        super().__init__(target_module, rank=rank, alpha=alpha)
        self.adapter_dropout = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor):
        return self.pretrained_module(x) + self.adapter_up_proj(self.adapter_down_proj(self.adapter_dropout(x))) \
            * self.scaling


def load_ssl_hparams(rd: RunDir) -> dict[str, Any]:
    """native/hparams.yaml with backends.speechbrain applied as overrides; for a hub name the encoder width (which
    the render could not read offline) comes from the downloaded config."""
    native = rd / "native"
    overrides = yaml.safe_load((native / "overrides.yaml").read_text()) or {}
    text = (native / "hparams.yaml").read_text(encoding="utf-8")
    if re.search(r"^encoder_dim: null", text, re.M) and "encoder_dim" not in overrides:
        from transformers import AutoConfig

        source = overrides.get("pretrained_source") or json.loads(
            re.search(r"^pretrained_source: (.*)$", text, re.M).group(1))
        overrides["encoder_dim"] = AutoConfig.from_pretrained(source).hidden_size
    return load_hyperpyyaml(text, overrides)


def hf_model(hparams: dict[str, Any]):
    """The transformers model inside SpeechBrain's integration (Wav2Vec2Model / HubertModel / WavLMModel)."""
    return hparams["ssl_base"].model


def configure_spec_augment(hparams: dict[str, Any]) -> None:
    """spec augmentation.spec_augment -> Transformers' masking inside the model (the integration's
    apply_spec_augment), widths converted from fbank frames/bins to latent frames/channels (as the hf backend)."""
    sa = hparams["spec_augment"]
    if not sa:
        return
    model = hf_model(hparams)
    config = model.config
    if not hasattr(model, "masked_spec_embed"):
        raise RuntimeError(f"augmentation.spec_augment: {hparams['pretrained_source']} was built without a mask "
                           "embedding (mask_time_prob and mask_feature_prob 0 in its config); set spec_augment: null")
    latent_ms = math.prod(config.conv_stride) / 16.0  # 16 kHz samples per latent frame -> ms
    time_len = max(1, round(sa["time_width"] * hparams["feature_frame_ms"] / latent_ms))
    feat_len = max(1, round(sa["freq_width"] / hparams["n_mels"] * config.hidden_size))
    config.mask_time_prob = 0.05 if sa["time_masks"] else 0.0
    config.mask_time_length, config.mask_time_min_masks = time_len, sa["time_masks"]
    config.mask_feature_prob = min(1.0, sa["freq_masks"] * feat_len / config.hidden_size) if sa["freq_masks"] else 0.0
    config.mask_feature_length, config.mask_feature_min_masks = feat_len, sa["freq_masks"]


def freeze_layers(hparams: dict[str, Any]) -> list[str]:
    """freeze: encoder.layers:N (feature_extractor and encoder are the integration's own switches)."""
    frozen = []
    layers = hf_model(hparams).encoder.layers
    for item in hparams["freeze"]:
        if item.startswith("encoder.layers:"):
            n = int(item.split(":", 1)[1])
            if n > len(layers):
                raise RuntimeError(f"freeze {item!r}: the pretrained encoder has {len(layers)} layers")
            for i, layer in enumerate(list(layers)[:n]):
                for name, p in layer.named_parameters():
                    p.requires_grad_(False)
                    frozen.append(f"encoder.layers.{i}.{name}")
    return frozen


def load_modules(modules: dict[str, torch.nn.Module], export: Path, collect_in: Path) -> None:
    """Module files of an spx ssl_ctc export (<name>.ckpt, the Checkpointer's names) into `modules`, with
    SpeechBrain's Pretrainer."""
    from speechbrain.utils.parameter_transfer import Pretrainer

    pre = Pretrainer(collect_in=str(collect_in), loadables=modules,
                     paths={n: str(export / f"{n}.ckpt") for n in modules})
    pre.collect_files()
    pre.load_collected()


def prepare(hparams: dict[str, Any], init: Path | None = None, load_head: bool = False) -> dict[str, Any]:
    """The model as the train step trains it: init_from weights (full model) into the base, the first N layers
    frozen, SpecAugment configured, then the LoRA adapters inserted (after every weight is in place, as
    AdaptedModel's manual insertion is meant for). Returns what was loaded/frozen."""
    details: dict[str, Any] = {}
    if init is not None:
        # a full-method export: ssl.ckpt is the whole integration module, loaded into the base before any adapter
        modules = {"ssl": hparams["ssl_base"], **({"ctc_lin": hparams["ctc_lin"]} if load_head else {})}
        load_modules(modules, init, Path(hparams["output_folder"]) / "init_from")
        details["loaded"] = sorted(modules)
        details["new_head"] = not load_head
    frozen = freeze_layers(hparams)
    if frozen:
        details["frozen_layers_tensors"] = len(frozen)
    configure_spec_augment(hparams)
    if hparams["finetune_method"] == "lora":
        hparams["ssl"].insert_adapters()
        details["lora_layers"] = len(hparams["ssl"].replace_layers)
    return details


def encoder_output(modules: Any, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
    """[B, T', hidden]: what SpeechBrain's integration computes from a batch of waveforms (its own input
    normalization, when the feature extractor says do_normalize, and padding mask)."""
    return modules.ssl(wavs, wav_lens)


def log_probs(modules: Any, hparams: dict[str, Any], wavs: torch.Tensor, wav_lens: torch.Tensor,
              hold_encoder: bool = False) -> torch.Tensor:
    """encoder -> dropout -> linear CTC head -> log-softmax. hold_encoder: the pretrained part runs without
    gradients (finetune.freeze_pretrained_steps)."""
    if hold_encoder:
        with torch.no_grad():
            feats = encoder_output(modules, wavs, wav_lens)
    else:
        feats = encoder_output(modules, wavs, wav_lens)
    return hparams["log_softmax"](modules.ctc_lin(modules.head_dropout(feats)))


def count(params) -> int:
    return int(sum(p.numel() for p in params))


def param_report(hparams: dict[str, Any]) -> dict[str, int]:
    params = [*hparams["ssl"].parameters(), *hparams["ctc_lin"].parameters()]
    total, trainable = count(params), count(p for p in params if p.requires_grad)
    out = {"params": total, "trainable_params": trainable, "frozen_params": total - trainable}
    if hparams["finetune_method"] == "lora":
        out["lora_params"] = count(p for n, p in hparams["ssl"].named_parameters() if n.split(".")[-2] in ADAPTER_PARTS)
    return out


def base_digest(ssl: torch.nn.Module) -> str:
    """sha256 over the pretrained weights LoRA must leave untouched (everything but the adapters)."""
    h = hashlib.sha256()
    for n, p in sorted(ssl.named_parameters(), key=lambda kv: kv[0]):
        if not any(part in n.split(".") for part in ADAPTER_PARTS):
            h.update(n.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def merged_model(ssl: torch.nn.Module):
    """A copy of the transformers model with every LoRA update folded into its base weight (W + s * B A)."""
    adapted = copy.deepcopy(ssl).adapted_model  # the integration module, adapters inside
    for name, module in list(adapted.named_modules()):
        if isinstance(module, LoRA):
            base = module.pretrained_module
            if not isinstance(base, torch.nn.Linear):
                raise RuntimeError(f"merge_lora: {name} wraps a {type(base).__name__}; only Linear layers merge")
            with torch.no_grad():
                base.weight += module.scaling * (module.adapter_up_proj.weight @ module.adapter_down_proj.weight)
            replace_module(adapted, name, base)
    return adapted.model


def load_exported(rd: RunDir, device: str):
    """(modules, hparams, tokenizer, export dir) of a finished run: the run's hparams (the pretrained base from its
    source), LoRA adapters inserted for a LoRA run, then the exported ssl/ctc_lin weights."""
    from spx.adapters.speechbrain.steps.model import Tokenizer, char_tokenizer

    summary = json.loads((rd / "train_summary.json").read_text())
    export = Path(summary["exported_model"])
    info = json.loads((export / EXPORT_INFO).read_text())
    hparams = load_ssl_hparams(rd)
    if info["method"] == "lora":
        hparams["ssl"].insert_adapters()
    load_modules({"ssl": hparams["ssl"], "ctc_lin": hparams["ctc_lin"]}, export,
                 Path(hparams["output_folder"]) / "exported")
    if info["tokenizer"] == "char":
        tokenizer = char_tokenizer(info["tokens"], export / "label_encoder.txt")
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        sp.load(str(export / next(f for f in info["tokenizer_files"] if f.endswith(".model"))))
        tokenizer = Tokenizer("bpe", spm=sp)
    modules = torch.nn.ModuleDict({k: hparams[k] for k in ("ssl", "ctc_lin", "head_dropout")}).to(device).eval()
    return modules, hparams, tokenizer, export


def transcriber(modules: Any, hparams: dict[str, Any], tokenizer: Any, device: str, dtype: str
                ) -> Callable[[list[np.ndarray]], list[str]]:
    decode = ctc_decoder(hparams, tokenizer)
    autocast = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    dev_type = "cuda" if device.startswith("cuda") else "cpu"

    @torch.no_grad()
    def transcribe(audio: list[np.ndarray]) -> list[str]:
        lens = torch.tensor([len(a) for a in audio], dtype=torch.float32)
        batch = torch.zeros(len(audio), int(lens.max()))
        for i, a in enumerate(audio):
            batch[i, : len(a)] = torch.from_numpy(a)
        rel = (lens / lens.max()).to(device)
        with torch.autocast(dev_type, dtype=autocast or torch.float32, enabled=autocast is not None):
            lp = log_probs(modules, hparams, batch.to(device), rel)
        return decode(lp.float(), rel)

    return transcribe
