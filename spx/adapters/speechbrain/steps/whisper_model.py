"""Child-process side of SpeechBrain whisper shared by train, decode and the tests: the generated hyperpyyaml loaded
into SpeechBrain's Whisper integration with the spec's decoder prefix set, freezing of the conv front-end / first N
encoder layers, the token targets, the exported model's loading and the batch transcriber."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from spx.adapters.speechbrain.steps.ssl_model import ADAPTER_PARTS, count, load_modules, load_ssl_hparams
from spx.adapters.speechbrain.whisper import EXPORT_INFO
from spx.rundir import RunDir

SEARCHERS = ("valid_search", "test_search")


def multilingual(whisper: Any, source: str) -> bool:
    """SpeechBrain decides by vocabulary size (>= 51865); a local checkpoint's generation config may say so itself
    (Transformers' own flag), which is what a small multilingual model has."""
    gen = Path(source) / "generation_config.json"
    flag = json.loads(gen.read_text()).get("is_multilingual") if gen.is_file() else None
    return bool(whisper.is_multilingual or flag)


def load_whisper_hparams(rd: RunDir) -> dict[str, Any]:
    """native/hparams.yaml (+ overrides) with the decoder prompted <|startoftranscript|><|lang|><|task|>
    <|notimestamps|> for training and both searchers (SpeechBrain's integration sets this prefix for multilingual
    vocabularies only, and its searchers read it when they are built)."""
    hparams = load_ssl_hparams(rd)
    whisper = hparams["whisper_base"]
    language, task = hparams["language"], hparams["whisper_task"]
    if multilingual(whisper, hparams["pretrained_source"]):
        whisper.tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    elif (language, task) != ("en", "transcribe"):
        raise RuntimeError(f"model.pretrained {hparams['pretrained_source']} is an English-only Whisper: it takes "
                           f"no language/task tokens, so model.language {language!r} / model.task {task!r} cannot "
                           "be prompted (use language en, task transcribe, or a multilingual checkpoint)")
    for name in SEARCHERS:
        hparams[name].set_task(task)  # rebuilds the searcher's initial tokens from the tokenizer's prefix
    return hparams


def freeze_parts(hparams: dict[str, Any]) -> list[str]:
    """freeze: feature_extractor (the conv front-end) and encoder.layers:N; `encoder` is the integration's own
    freeze_encoder switch."""
    encoder = hparams["whisper_base"].model.encoder
    frozen: list[str] = []
    for item in hparams["freeze"]:
        if item == "feature_extractor":
            parts = {"conv1": encoder.conv1, "conv2": encoder.conv2}
        elif item.startswith("encoder.layers:"):
            n = int(item.split(":", 1)[1])
            if n > len(encoder.layers):
                raise RuntimeError(f"freeze {item!r}: the pretrained encoder has {len(encoder.layers)} layers")
            parts = {f"layers.{i}": layer for i, layer in enumerate(list(encoder.layers)[:n])}
        else:
            continue
        for prefix, module in parts.items():
            for name, p in module.named_parameters():
                p.requires_grad_(False)
                frozen.append(f"encoder.{prefix}.{name}")
    return frozen


def prepare(hparams: dict[str, Any]) -> list[str]:
    """The model as the train step trains it: the freeze items applied, then (lora) the adapters inserted."""
    frozen = freeze_parts(hparams)
    if hparams["finetune_method"] == "lora":
        hparams["whisper"].insert_adapters()
    return frozen


def param_report(hparams: dict[str, Any]) -> dict[str, int]:
    whisper = hparams["whisper"]
    params = list(whisper.parameters())
    total, trainable = count(params), count(p for p in params if p.requires_grad)
    out = {"params": total, "trainable_params": trainable, "frozen_params": total - trainable}
    if hparams["finetune_method"] == "lora":
        out["lora_params"] = count(p for n, p in whisper.named_parameters() if n.split(".")[-2] in ADAPTER_PARTS)
        out["lora_layers"] = len(whisper.replace_layers)
    return out


def token_targets(tokenizer: Any, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder input, next-token targets): prefix + text tokens + <|endoftext|>, shifted by one, as the recipe's
    data pipeline builds them."""
    ids = tokenizer.build_inputs_with_special_tokens(tokenizer.encode(text, add_special_tokens=False))
    return torch.LongTensor(ids[:-1]), torch.LongTensor(ids[1:])


def hyps_to_text(tokenizer: Any, hyps: list[list[int]]) -> list[str]:
    return [t.strip() for t in tokenizer.batch_decode([list(map(int, h)) for h in hyps], skip_special_tokens=True)]


def load_exported(rd: RunDir, device: str):
    """(hparams, export dir) of a finished run: the run's hparams (the integration built from its source), then the
    exported whisper weights through SpeechBrain's Pretrainer."""
    summary = json.loads((rd / "train_summary.json").read_text())
    export = Path(summary["exported_model"])
    info = json.loads((export / EXPORT_INFO).read_text())
    hparams = load_whisper_hparams(rd)
    if info["method"] == "lora":  # the export holds the adapters only: the base comes from its source
        hparams["whisper"].insert_adapters()
    load_modules({"whisper": hparams["whisper"]}, export, Path(hparams["output_folder"]) / "exported")
    hparams["whisper"].to(device).eval()
    return hparams, export


def transcriber(hparams: dict[str, Any], device: str, dtype: str) -> Callable[[list[np.ndarray]], list[str]]:
    whisper, search = hparams["whisper_base"], hparams["test_search"]
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
            mel = whisper._get_mel(batch.to(device))
            enc = whisper.forward_encoder(mel)
            hyps = search(enc, rel)[0]
        return hyps_to_text(whisper.tokenizer, hyps)

    return transcribe
