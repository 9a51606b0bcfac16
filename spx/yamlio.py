"""Safe YAML reading that remembers the line of every key, and atomic file writing."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from spx.errors import SpxError

KeyPath = tuple[Any, ...]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) that records the line of each mapping key and list item."""


def load_yaml_with_lines(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse untrusted YAML safely; return the data and a map key-path -> 1-based line number."""
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpxError(f"invalid YAML: {problem}", hint="check indentation and quoting", where=where) from None
    lines: dict[KeyPath, int] = {}
    if node is None:
        return None, lines
    seen: set[int] = set()  # an alias is the same node object: visit each once (recursive aliases, alias bombs)

    def walk(n: yaml.Node, path: KeyPath) -> None:
        lines[path] = n.start_mark.line + 1
        if id(n) in seen:
            return
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise SpxError("a mapping key must be a plain value, not a list or mapping",
                                   where=f"{source}:{key_node.start_mark.line + 1}", hint="check the indentation and '?' keys")
                key = key_node.value
                lines[path + (key,)] = key_node.start_mark.line + 1
                walk(value_node, path + (key,))
                lines[path + (key,)] = key_node.start_mark.line + 1
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, path + (i,))

    walk(node, ())
    try:
        data = _LineLoader(text).get_single_data()
    except yaml.YAMLError as exc:  # e.g. a `!!python/...` tag the safe loader refuses, or bad !!binary
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpxError(f"invalid YAML: {problem}", hint="only plain YAML is accepted (no !!python tags)", where=where) from None
    return data, lines


def load_yaml_file(path: str | Path) -> tuple[Any, dict[KeyPath, int]]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpxError(f"file not found: {p}", hint="check the path") from None
    except UnicodeDecodeError as exc:
        raise SpxError(f"not UTF-8 text (byte {exc.start})", hint="save the file as UTF-8", where=str(p)) from None
    return load_yaml_with_lines(text, str(p))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
