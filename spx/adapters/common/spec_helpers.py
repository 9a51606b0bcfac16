"""Checks and helpers that every backend's adapter applies to the spec the same way (a leaf, imported by the core:
no torch, no toolkit). A backend says what differs (its hint, the precisions its CPU path runs); the rule is here."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from spx.errors import SpxError
from spx.spec import Spec

FREEZE_LAYERS = "encoder.layers:"
# the characters child.clean_transcript keeps: one fixed inventory for every TTS family, so a checkpoint fine-tunes on
# any corpus
TTS_CHARACTERS: tuple[str, ...] = tuple(" '0123456789abcdefghijklmnopqrstuvwxyz")


def frozen_layer_count(item: str, layers: int) -> int:
    """N of a `freeze: [encoder.layers:N]` item, checked against the encoder's `layers`."""
    raw = item[len(FREEZE_LAYERS):]
    try:
        n = int(raw)
    except ValueError:
        raise SpxError(f"freeze item {item!r}: {raw!r} is not a number of layers", where="freeze",
                       hint="e.g. freeze: ['encoder.layers:1'] freezes the first encoder block") from None
    if not 1 <= n <= layers:
        raise SpxError(f"freeze item {item!r}: the encoder has {layers} layers (model.encoder.layers)", where="freeze",
                       hint=f"use encoder.layers:N with 1 <= N <= {layers}, or 'encoder' to freeze all of it")
    return n


def check_fine_tuning(spec: Spec, init_hint: str, backend: str = "", methods: tuple[str, ...] = ("full",),
                      options: tuple[str, ...] = (), reasons: dict[str, str] | None = None) -> None:
    """Every `encoder.layers:N` in range, freezing only with something to start from (`init_hint` says what
    init_from takes on this backend), and the finetune: controls the family runs (`methods`, `options`: its
    FINETUNE_METHODS / FINETUNE_OPTIONS; a caller that passes none accepts only full fine-tuning, as before;
    `reasons`: its FINETUNE_REFUSED, why it lacks one, by "finetune.method <m>" or option key)."""
    check_finetune_support(spec, backend, methods, options, reasons or {})
    encoder = getattr(spec.model, "encoder", None)
    pretrained = pretrained_model(spec)
    for item in spec.freeze:
        if item.startswith(FREEZE_LAYERS):
            if pretrained is not None:  # the layer count is the pretrained model's: its family checks it
                continue
            if not hasattr(encoder, "layers"):
                raise SpxError(f"freeze item {item!r}: model.family {spec.model.family} has no encoder layers to count",
                               where="freeze", hint="freeze 'encoder' or 'feature_extractor' for this family")
            frozen_layer_count(item, encoder.layers)
    if spec.freeze and not spec.init_from and pretrained is None:
        raise SpxError("freeze is set but init_from is not: freezing untrained weights makes no sense", where="freeze",
                       hint=f"set init_from to {init_hint}, or drop freeze")


def exported_model_dir(init_from: str, what: str) -> Path:
    """init_from as the folder of an exported model: the folder itself, or the one a finished run dir's
    train_summary.json names (`exported_model`). `what` names what init_from takes, for the error hints."""
    p = Path(init_from).expanduser()
    if not p.exists():
        raise SpxError(f"init_from {init_from!r} does not exist", where="init_from", hint=f"give {what}")
    p = p.resolve()
    if (p / "train_summary.json").is_file():
        exported = json.loads((p / "train_summary.json").read_text()).get("exported_model")
        if not exported:
            raise SpxError(f"init_from {p}: its train_summary.json names no exported_model", where="init_from",
                           hint="train it to the end first")
        p = Path(exported)
    return p


def pretrained_model(spec: Spec) -> str | None:
    """The pretrained model a family starts from by design (model.encoder.pretrained / model.pretrained), or None."""
    encoder = getattr(spec.model, "encoder", None)
    return getattr(encoder, "pretrained", None) or getattr(spec.model, "pretrained", None)


# the fine-tuning controls beyond freeze: (spec key, is it set?) -> what a family must declare to accept it
FINETUNE_OPTIONS = {
    "training.optimizer.pretrained_lr": lambda spec: spec.training.optimizer.pretrained_lr is not None,
    "finetune.freeze_pretrained_steps": lambda spec: spec.finetune.freeze_pretrained_steps > 0,
    "finetune.init_include": lambda spec: spec.finetune.init_include is not None,
    "finetune.init_exclude": lambda spec: bool(spec.finetune.init_exclude),
}


def check_finetune_support(spec: Spec, backend: str, methods: tuple[str, ...], options: tuple[str, ...],
                           reasons: dict[str, str]) -> None:
    """finetune.method must be one the family runs (`methods`, from its FINETUNE_METHODS; default full only), and
    every other fine-tuning control that is set one it declares (`options`, its FINETUNE_OPTIONS); `reasons` says
    why the family lacks one, where it knows."""
    where = f"spx's {backend} {spec.model.family} family" if backend else f"this backend's {spec.model.family} family"

    def why(key: str) -> str:
        return f": {reasons[key]}" if key in reasons else ""

    if spec.finetune.method not in methods:
        reason = why(f"finetune.method {spec.finetune.method}")
        raise SpxError(f"finetune.method {spec.finetune.method} is not supported by {where} (it has: "
                       f"{', '.join(methods)}){reason}", where="finetune.method",
                       hint="use finetune.method " + " or ".join(methods) + ", or a backend/family that has "
                            f"{spec.finetune.method} (docs/backends/hf.md lists them)")
    for key, is_set in FINETUNE_OPTIONS.items():
        if is_set(spec) and key not in options:
            raise SpxError(f"{key} is not supported by {where}{why(key)}", where=key,
                           hint=f"drop {key}, or use a backend/family that has it (docs/backends/hf.md lists them)")


def check_cpu_precision(spec: Spec, backend: str, runs_on_cpu: tuple[str, ...]) -> None:
    """training.precision on `resources.accelerator: cpu` must be one the backend's CPU path runs."""
    p = spec.training.precision
    if spec.resources.accelerator == "cpu" and p not in runs_on_cpu:
        raise SpxError(f"training.precision {p} needs a GPU on {backend}, but resources.accelerator is cpu",
                       where="training.precision",
                       hint=f"use {' or '.join(runs_on_cpu)} on CPU, or resources.accelerator gpu")


def check_nodes(spec: Spec) -> None:
    """Several nodes need a launcher that has them: the local launcher runs on this machine only."""
    if spec.resources.nodes > 1 and spec.resources.launcher != "slurm":
        raise SpxError("resources.nodes > 1 needs the slurm launcher", where="resources.nodes",
                       hint="set resources.launcher: slurm, or nodes: 1")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A `backends.<name>` pass-through merged into a rendered config: dicts merge key by key, anything else replaces
    the rendered value. Returns a new dict; neither argument changes."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def speaker_table(spec: Spec, model: str) -> dict[str, int]:
    """Speaker name -> id from the training manifest (tts.multi_speaker); every valid/test speaker must be one of them,
    since a speaker-id `model` can only speak as its training speakers."""
    from spx.manifests import read_manifest

    if not spec.tts.multi_speaker:
        return {}
    train = read_manifest(spec.data.train)
    missing = [u.id for u in train if not u.speaker]
    if missing:
        raise SpxError(f"tts.multi_speaker needs a speaker on every row; {len(missing)} training row(s) have none "
                       f"(first: {missing[0]!r})", where=spec.data.train, hint="add 'speaker' to each manifest row")
    table = {s: i for i, s in enumerate(sorted({u.speaker for u in train}))}
    for path in [spec.data.valid, *spec.test_sets]:
        for u in read_manifest(path):
            if u.speaker not in table:
                raise SpxError(f"row {u.id!r} has speaker {u.speaker!r}, which is not in the training set",
                               where=path, hint=f"a speaker-id {model} can only speak as its training speakers")
    return table


def tts_mel_settings(spec: Spec) -> dict[str, Any]:
    """The mel spectrogram of a TTS job (the acoustic model's targets, the vocoder's input), STFT sizes in samples at
    tts.sample_rate; every backend renders it in its own key names."""
    sr = spec.tts.sample_rate
    return {"sample_rate": sr, "n_mels": spec.tts.n_mels, "n_fft": spec.features.n_fft,
            "win_length": int(round(spec.features.win_length_ms * sr / 1000)),
            "hop_length": int(round(spec.features.hop_length_ms * sr / 1000)), "f_min": 0.0, "f_max": sr / 2}
