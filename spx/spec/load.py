"""Load a recipe: safe YAML + dotlist overrides -> validated Spec, errors pointing at file:line and key."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from spx.errors import SpxError
from spx.spec.models import ASR_FAMILIES, CLASSIFICATION_FAMILIES, TTS_FAMILIES, Spec, SpecKeyError
from spx.yamlio import KeyPath, dump_yaml, load_yaml_file, load_yaml_with_lines

PATH_KEYS = (("data", "train"), ("data", "valid"), ("data", "test"), ("augmentation", "noise", "manifest"))
# a local path or a name (hub model, whisper size): resolved against the recipe's folder only when it exists there
PATH_OR_NAME_KEYS = (("init_from",), ("tts", "vocoder"), ("tts", "duration_teacher"), ("tts", "judge"),
                     ("model", "encoder", "pretrained"), ("model", "pretrained"))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply Hydra-style `a.b.c=value` overrides; values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise SpxError(f"override {item!r} is not KEY=VALUE", hint="e.g. training.epochs=5")
        try:
            value = load_yaml_with_lines(raw, "value")[0] if raw != "" else ""
        except SpxError as exc:  # the recipe's own rules: no duplicate keys, depth and size limits, safe tags
            shown = repr(item) if len(item) <= 80 else f"{item[:60]!r}... ({len(item)} characters)"
            hint = "quote strings with spaces, e.g. name='my run'" if exc.message.startswith("invalid YAML") else exc.hint
            raise SpxError(f"override {shown}: {exc.message}", hint=hint) from None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpxError(f"override {item!r}: {part!r} is not a mapping", hint="override a leaf key")
            node = child
        node[parts[-1]] = value
    return data


def _field_names(model: type[BaseModel] | None) -> list[str]:
    return list(model.model_fields) if model else []


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the key at `loc` (for did-you-mean)."""
    model: Any = Spec
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else (args[0] if len(args) == 1 else None)
    return model if isinstance(model, type) else None


# discriminated unions add the family tag (e.g. 'conformer_ctc') to an error's loc; it is dropped for the user
FAMILY_TAGS = tuple(sorted(ASR_FAMILIES)) + tuple(sorted(TTS_FAMILIES)) + tuple(sorted(CLASSIFICATION_FAMILIES))


def _line_for(loc: tuple[Any, ...], lines: dict[KeyPath, int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def format_validation_error(exc: ValidationError, source: str, lines: dict[KeyPath, int]) -> SpxError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in FAMILY_TAGS))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, SpecKeyError):  # a check across sections names the key to fix
        loc = tuple(cause.key.split("."))
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_for(loc, lines)
    where = f"{source}:{line}" if line else source
    hint = None
    if err["type"] == "extra_forbidden":
        fields = _field_names(_model_at(loc))
        close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        msg = f"unknown key {key!r}"
        hint = f"did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))!r}?" if close else (
            f"allowed keys here: {', '.join(fields)}" if fields else None)
    elif err["type"] == "missing":
        msg = f"missing required key {key!r}"
        hint = "see `spx spec schema` for every key"
    else:
        text = err["msg"].removeprefix("Value error, ")
        msg = f"{key}: {text}"
        if "input" in err and not isinstance(err["input"], (dict, list)):
            msg += f" (got {err['input']!r})"
        if err["type"] == "union_tag_invalid" or "tag" in err["type"]:
            hint = f"model.family must be one of {', '.join(FAMILY_TAGS)}"
    extra = len(exc.errors()) - 1
    if extra:
        msg += f" (+{extra} more problem{'s' if extra > 1 else ''})"
    return SpxError(msg, hint=hint, where=where)


def _resolve_paths(data: dict[str, Any], base: Path, source: str, lines: dict[KeyPath, int]) -> None:
    from spx.demo.resolve import demo_path, is_demo_path  # spx-demo://tts/train.jsonl: the demo corpus (no I/O)

    for path in PATH_KEYS:
        node: Any = data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or path[-1] not in node:
            continue
        value = node[path[-1]]
        key = ".".join(path)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and "\x00" in v:  # no file system takes it (pathlib raises ValueError)
                line = _line_for(path, lines)
                raise SpxError(f"{key}: the path {v!r} contains a NUL character",
                               where=f"{source}:{line}" if line else source, hint="give the path of a file or folder")
        resolve = lambda v: (demo_path(v, key) if is_demo_path(v) else  # noqa: E731
                             str((base / v).resolve()) if isinstance(v, str) and "://" not in v else v)
        node[path[-1]] = [resolve(v) for v in value] if isinstance(value, list) else resolve(value)
    for path in PATH_OR_NAME_KEYS:
        node = data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(path[-1]) if isinstance(node, dict) else None
        if isinstance(value, str) and (base / value).exists():
            node[path[-1]] = str((base / value).resolve())


def spec_from_data(data: Any, source: str, lines: dict[KeyPath, int] | None = None,
                   overrides: list[str] | None = None, base: Path | None = None) -> Spec:
    if data is None:
        raise SpxError("the recipe is empty", where=source, hint="copy one of recipes/*.yaml and edit it")
    if not isinstance(data, dict):
        raise SpxError(f"a recipe must be a YAML mapping, got {type(data).__name__}", where=source,
                       hint="start the file with keys such as 'task:', 'model:', 'data:'")
    data = apply_overrides(data, overrides or [])
    if base is not None:
        _resolve_paths(data, base, source, lines or {})
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source, lines or {}) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read a recipe file safely, apply overrides, resolve relative data paths against the recipe's folder."""
    data, lines = load_yaml_file(path)
    return spec_from_data(data, str(path), lines, overrides, base=Path(path).resolve().parent)


def spec_to_yaml(spec: Spec) -> str:
    return dump_yaml(spec.model_dump(mode="json"))
