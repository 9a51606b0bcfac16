"""ESPnet ssl_ctc: a pretrained wav2vec2 / HuBERT folder (Transformers layout) as ESPnet's own `frontend: s3prl`
(s3prl's hf_wav2vec2_custom / hf_hubert_custom experts, path_or_url = the folder or hub name), `preencoder: linear`,
the smallest encoder ESPnet has that adds nothing heavy (a transformer of 0 blocks: its final LayerNorm only, no
subsampling, so the frames stay the upstream's 20 ms) and a CTC head on the spec's tokenizer (ctc_weight 1.0, no
decoder), as ESPnet's SSL recipes (egs2/*/asr1/conf/tuning/train_asr_*hubert*) build it with a smaller encoder.

The ASR pipeline is conformer_ctc's (helpers.write_asr_run: tokenize_text -> collect_stats (shapes only) ->
asr_train), run by the same child steps; s3prl 0.4.18 imports with torchaudio 2.11 only through the shims of
steps.s3prl_compat, which the child steps apply and native/run.sh puts in front of each espnet2 entry point.
Fine-tuning: freeze -> --freeze_param; finetune.method lora -> ESPnet's --use_adapter/--adapter lora (loralib) PLUS
--freeze_param frontend.upstream (ESPnet's LoRA leaves the base trainable: espnet#5779, #6107) and
--save_strategy required_grad_only (checkpoints hold the adapters and the new layers; the base stays the pretrained
folder). No torch, no espnet2 here (docs/backends/espnet.md).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from spx.adapters.common.spec_helpers import FREEZE_LAYERS, deep_merge
from spx.adapters.espnet import helpers
from spx.adapters.espnet.helpers import ASR_COMMANDS, ASR_CONF
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import read_json

TASK = "asr"
NAME = "ssl_ctc"
CPU_PRECISIONS = ("fp32",)  # ESPnet's mixed precision is torch.cuda.amp
INIT_FROM = "a finished espnet ssl_ctc run (its exported_model *.pth with config.yaml beside it)"
INFERENCE = f"{helpers.STEPS}.decode"
EXPORT = f"{helpers.STEPS}.ssl_export"  # waveform -> CTC log-probs (s3prl upstream + featurizer in the graph)
FINETUNE_METHODS = ("full", "lora")
FINETUNE_OPTIONS: tuple[str, ...] = ()
FINETUNE_REFUSED = {  # docs/backends/espnet.md
    "training.optimizer.pretrained_lr": "ESPnet trains every unfrozen weight with one optimizer at one learning rate",
    "finetune.freeze_pretrained_steps": "ESPnet's --freeze_param holds for the whole run (no hold for N steps)",
    "finetune.method adapter": "ESPnet's adapters for s3prl frontends are LoRA (finetune.method lora) and Houlsby "
                               "adapters, which spx does not render yet",
}
# model_type in config.json -> s3prl's expert that loads a Transformers folder
UPSTREAMS = {"wav2vec2": "hf_wav2vec2_custom", "hubert": "hf_hubert_custom"}
STRIDE = 320  # s3prl's hf experts report a downsample rate of 320 samples whatever the model has
LORA_TARGETS = ["q_proj", "v_proj"]  # the attention projections of every layer, as on hf
UPSTREAM = "frontend.upstream"                 # ESPnet's name of the whole pretrained model
MODEL = "frontend.upstream.upstream.model"     # the Transformers model inside s3prl's expert
COMPAT = f"{helpers.STEPS}.s3prl_compat"      # the shim wrapper native/run.sh runs espnet2 through
def pretrained_config(spec: Spec) -> dict[str, Any]:
    """config.json of model.encoder.pretrained: a local Transformers folder, or a hub name already in the local
    Hugging Face cache (ESPnet's config needs the model's sizes before anything runs)."""
    name = spec.model.encoder.pretrained
    where = "model.encoder.pretrained"
    p = Path(name).expanduser()
    if p.exists():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise SpxError(f"{where} {name!r} has no config.json: not a Transformers model folder", where=where,
                           hint="point it at a folder written by save_pretrained (config.json + weights)")
        if not (p / "preprocessor_config.json").is_file():
            raise SpxError(f"{where} {name!r} has no preprocessor_config.json: s3prl's expert would fetch "
                           "facebook/wav2vec2-base's feature extractor from the hub instead", where=where,
                           hint="save the model's Wav2Vec2FeatureExtractor into the folder (save_pretrained)")
    else:
        if name.startswith((".", "/", "~")) or name.count("/") != 1:
            raise SpxError(f"{where} {name!r} does not exist", where=where,
                           hint="give a hub model name (facebook/wav2vec2-base) or a local Transformers folder")
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
        if not isinstance(found, str):
            raise SpxError(f"{where} {name!r} is not in the local Hugging Face cache; ESPnet's config needs its "
                           "sizes before the run starts", where=where,
                           hint=f"download it first (`hf download {name}`), or give a local folder")
        cfg = Path(found)
    try:
        return json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SpxError(f"{cfg}: not valid JSON ({exc})", where=where) from None


def upstream_name(config: dict[str, Any], name: str) -> str:
    kind = config.get("model_type")
    if kind == "wavlm":
        raise SpxError(f"model.encoder.pretrained {name!r} is a WavLM model: s3prl 0.4.18 (ESPnet's frontend) loads "
                       "WavLM only from Microsoft's original checkpoints (wavlm_local/wavlm_url), it has no expert for "
                       "a Transformers folder (only hf_wav2vec2_custom and hf_hubert_custom)",
                       where="model.encoder.pretrained",
                       hint="fine-tune WavLM on the hf or speechbrain backend, or a wav2vec2/HuBERT model here")
    if kind not in UPSTREAMS:
        raise SpxError(f"model.encoder.pretrained {name!r} is a {kind!r} model; ESPnet's ssl_ctc takes "
                       f"{', '.join(UPSTREAMS)}", where="model.encoder.pretrained",
                       hint="use a wav2vec2 or HuBERT checkpoint")
    return UPSTREAMS[kind]


def layer_count(config: dict[str, Any]) -> int:
    return int(config["num_hidden_layers"])


def check(spec: Spec) -> None:
    name = spec.model.encoder.pretrained
    config = pretrained_config(spec)
    upstream_name(config, name)
    stride = math.prod(config.get("conv_stride") or [1])
    if stride != STRIDE:
        raise SpxError(f"model.encoder.pretrained {name!r} has a total conv stride of {stride} samples "
                       f"(conv_stride {config.get('conv_stride')}); s3prl's hf experts assume {STRIDE} (20 ms frames) "
                       "and would compute the frame counts wrong", where="model.encoder.pretrained",
                       hint="use a checkpoint with the standard 320-sample stride (every released wav2vec2/HuBERT "
                            "has it), or the hf backend")
    if spec.features.sample_rate != 16000:
        raise SpxError("s3prl's upstreams read 16 kHz audio", where="features.sample_rate",
                       hint="set features.sample_rate: 16000")
    for item in spec.freeze:
        if item.startswith(FREEZE_LAYERS):
            raw = item[len(FREEZE_LAYERS):]
            if not raw.isdigit() or not 1 <= int(raw) <= layer_count(config):
                raise SpxError(f"freeze item {item!r}: the pretrained encoder has {layer_count(config)} layers",
                               where="freeze", hint=f"use encoder.layers:N with 1 <= N <= {layer_count(config)}")
    ft = spec.finetune
    if ft.method == "lora":
        if ft.alpha != int(ft.alpha):
            raise SpxError(f"finetune.alpha {ft.alpha}: ESPnet's LoRA (create_lora_adapter) takes an integer alpha",
                           where="finetune.alpha", hint=f"use finetune.alpha: {round(ft.alpha)}")
        if spec.init_from:
            raise SpxError("finetune.method lora with init_from is not wired for ESPnet ssl_ctc", where="init_from",
                           hint="fine-tune the pretrained folder with LoRA, or an own run with method full")
    if spec.augmentation.noise is not None:
        raise SpxError("augmentation.noise is not rendered for ESPnet by spx yet", where="augmentation.noise",
                       hint="remove augmentation.noise")
    if spec.init_from:
        init = helpers.resolve_init(spec.init_from)
        if init is None:
            raise SpxError(f"init_from {spec.init_from!r}: ESPnet ssl_ctc fine-tunes its own runs (a local *.pth), "
                           "not a hub model", where="init_from", hint=f"give {INIT_FROM}")
        import yaml

        with open(init["config"], encoding="utf-8") as fh:
            if (yaml.safe_load(fh) or {}).get("use_adapter"):
                raise SpxError(f"init_from {spec.init_from!r} is a LoRA run: its model file holds the adapters and "
                               "new layers only (the base is its pretrained folder)", where="init_from",
                               hint="fine-tune the pretrained folder again, or start from a full fine-tuning run")


def freeze_params(spec: Spec) -> list[str]:
    """spec freeze items (and LoRA's frozen base) -> ESPnet --freeze_param prefixes of the s3prl frontend."""
    out: list[str] = []
    for item in spec.freeze:
        if item == "encoder":
            out.append(UPSTREAM)
        elif item == "feature_extractor":  # the conv feature encoder only, as Transformers' freeze_feature_encoder
            out.append(f"{MODEL}.feature_extractor")
        else:
            out += [f"{MODEL}.encoder.layers.{i}" for i in range(int(item[len(FREEZE_LAYERS):]))]
    if spec.finetune.method == "lora":  # ESPnet's LoRA leaves the base trainable (espnet#5779, #6107)
        out = [UPSTREAM]
    return list(dict.fromkeys(out))


def train_config(spec: Spec, durations: list[float]) -> tuple[dict[str, Any], dict[str, Any]]:
    config = pretrained_config(spec)
    hidden = int(config["hidden_size"])
    enc = spec.model.encoder
    cfg, derived = helpers.asr_training_config(spec, durations)
    cfg.update({
        "frontend": "s3prl",
        "frontend_conf": {"frontend_conf": {"upstream": upstream_name(config, enc.pretrained),
                                            "path_or_url": str(Path(enc.pretrained).expanduser().resolve())
                                            if Path(enc.pretrained).expanduser().exists() else enc.pretrained},
                          "multilayer_feature": enc.layer_weighting},
        "normalize": None,  # the upstream's feature extractor normalizes the waveform (its preprocessor_config)
        "preencoder": "linear",
        "preencoder_conf": {"input_size": hidden, "output_size": hidden},
        "encoder": "transformer",  # 0 blocks, no input layer: the final LayerNorm only
        "encoder_conf": {"output_size": hidden, "num_blocks": 0, "input_layer": None, "normalize_before": True,
                         "dropout_rate": 0.0, "positional_dropout_rate": 0.0, "attention_dropout_rate": 0.0},
        "decoder": "none",
        "ctc_conf": {"dropout_rate": spec.model.head_dropout},
        "model_conf": {"ctc_weight": 1.0, "extract_feats_in_collect_stats": False},
        "unused_parameters": True,  # the featurizer's layer weights are unused without multilayer_feature
    })
    cfg = {k: v for k, v in cfg.items() if v is not None or k == "normalize"}
    return deep_merge(cfg, spec.backends.get("espnet", {})), derived


def train_options(spec: Spec) -> list[str]:
    out = ["--freeze_param", *freeze_params(spec)] if freeze_params(spec) else []
    ft = spec.finetune
    if ft.method == "lora":
        conf = {"rank": ft.rank, "alpha": int(ft.alpha), "dropout_rate": ft.dropout,
                "target_modules": ft.target_modules or LORA_TARGETS, "bias_type": "none"}
        out += ["--use_adapter", "true", "--adapter", "lora", "--adapter_conf", json.dumps(conf),
                "--save_strategy", "required_grad_only"]
    return out


def render(spec: Spec, rd: RunDir) -> list[Step]:
    train = helpers.cleaned(helpers.train_utterances(spec), spec.tokenizer.lowercase)
    cfg, derived = train_config(spec, [u.duration for u in train])
    init = helpers.resolve_init(spec.init_from) if spec.init_from else None
    if init is not None:
        helpers.check_init_architecture(spec, init, cfg)
    cmds = helpers.asr_native_commands(spec, [], train_options(spec))
    header = ("# ESPnet ASR config (s3prl frontend, ssl_ctc) rendered by spx from spec.yaml (backends.espnet merged "
              "last).\n# Train with native/run.sh (it runs espnet2 through spx's s3prl compatibility shims).\n")
    return helpers.write_asr_run(spec, rd, cfg, derived, cmds, freeze_params(spec), train, header=header,
                                 run_prefix=[COMPAT], fetch=False)


def collect_extras(rd: RunDir) -> dict[str, Any]:
    cmds = read_json(rd / ASR_COMMANDS) or {}
    return {"native": {"config": str(rd / ASR_CONF), "derived": cmds.get("derived")}}
