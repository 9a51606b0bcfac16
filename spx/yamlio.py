"""Safe YAML reading that remembers the line of every key, JSON/JSON-lines reading of run records, and atomic
file writing."""
from __future__ import annotations

import codecs
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from spx.errors import SpxError

KeyPath = tuple[Any, ...]

# Limits no real recipe reaches (the shipped ones are < 3 KiB and nest 4 levels); past them the error is one line
# instead of a RecursionError, minutes of parsing, or an alias bomb's billions of values.
MAX_YAML_BYTES = 1 << 20      # 1 MiB
MAX_YAML_DEPTH = 64           # mappings and lists inside each other, aliases followed
MAX_YAML_VALUES = 20_000      # values in the document, each alias counted as a copy of its anchor
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) that stops at MAX_YAML_DEPTH, before Python's recursion limit does, and at
    MAX_YAML_VALUES nodes."""

    def __init__(self, text: str, source: str):
        self.source = source
        self.depth = 0
        self.nodes = 0
        super().__init__(text)

    def compose_node(self, parent, index):
        if not self.check_event(yaml.AliasEvent):
            self.nodes += 1  # stop parsing early: expanded values are checked after composing
            if self.nodes > MAX_YAML_VALUES:
                raise SpxError(f"holds more than {MAX_YAML_VALUES} values", where=f"{self.source}:{self.peek_event().start_mark.line + 1}",
                               hint="is this really a recipe?")
        opens = self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent)
        if opens:
            self.depth += 1
            if self.depth > MAX_YAML_DEPTH:
                raise SpxError(f"nested more than {MAX_YAML_DEPTH} levels deep", where=f"{self.source}:{self.peek_event().start_mark.line + 1}",
                               hint="a recipe nests a few levels; check for runaway brackets or indentation")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= opens


def _yaml_error(exc: yaml.YAMLError, text: str, source: str, hint: str) -> SpxError:
    if isinstance(exc, yaml.reader.ReaderError):  # a control character (NUL, ESC...): no mark, a position
        line = text.count("\n", 0, exc.position) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        return SpxError(f"invalid YAML: character {char!r} (U+{ord(char):04X}) is not allowed in YAML text",
                        where=f"{source}:{line}", hint="remove the control character; save the file as plain UTF-8 text")
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark else source
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    if context and problem.startswith("but "):  # "expected a single document in the stream, but found another document"
        problem = f"{context}, {problem}"
    return SpxError(f"invalid YAML: {problem}", hint=hint, where=where)


def _dotted(path: KeyPath) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def load_yaml_with_lines(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse untrusted YAML strictly; return the data and a map key-path -> 1-based line number.

    Beyond the safe loader: a key twice in one mapping, nesting past MAX_YAML_DEPTH, more than MAX_YAML_VALUES values
    (alias bombs), recursive aliases and text over MAX_YAML_BYTES are each one SpxError naming `source:line`.
    """
    if len(text) > MAX_YAML_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        raise SpxError(f"{len(text.encode('utf-8', 'surrogatepass')) / 2**20:.1f} MiB of YAML, more than the "
                       f"{MAX_YAML_BYTES // 2**20} MiB a recipe may hold", where=source, hint="is this really a recipe?")
    lines: dict[KeyPath, int] = {}
    try:
        loader = _StrictLoader(text, source)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text, source, "check indentation and quoting") from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, text, source, "check indentation and quoting") from None
        if node is None:
            return None, lines
        try:
            _check_nodes(node, source, lines, loader)  # constructs the keys
            data = loader.construct_document(node)
        except yaml.YAMLError as exc:  # e.g. a `!!python/...` tag the safe loader refuses, or bad !!binary
            raise _yaml_error(exc, text, source, "only plain YAML is accepted (no !!python tags)") from None
    finally:
        loader.dispose()
    return data, lines


def _check_nodes(root: yaml.Node, source: str, lines: dict[KeyPath, int], loader: _StrictLoader) -> None:
    """Record each key's line; refuse duplicate keys, recursive aliases, and alias-expanded depth or size past the limits.

    An alias is the same node object as its anchor: each node is walked once, so the recursion depth is the
    document's own nesting (<= MAX_YAML_DEPTH) and an alias bomb costs its text's size, not its expansion.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (depth, values) with aliases expanded
    open_nodes: set[int] = set()

    def walk(n: yaml.Node, path: KeyPath) -> tuple[int, int]:
        line = n.start_mark.line + 1
        lines.setdefault(path, line)
        if id(n) in measured:
            return measured[id(n)]
        if id(n) in open_nodes:
            raise SpxError(f"the anchor at line {line} holds an alias to itself (a recursive structure)",
                           where=f"{source}:{line}", hint="an alias (*name) may only refer to an anchor (&name) outside it")
        open_nodes.add(id(n))
        depth, values = 0, 1
        if isinstance(n, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, value_node in n.value:
                key_line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    raise SpxError("a mapping key must be a plain value, not a list or mapping",
                                   where=f"{source}:{key_line}", hint="check the indentation and '?' keys")
                key = "<<" if key_node.tag == _MERGE_TAG else loader.construct_object(key_node)
                if key in first_line:
                    raise SpxError(f"duplicate key {_dotted(path + (key_node.value,))!r} (first at line {first_line[key]})",
                                   where=f"{source}:{key_line}",
                                   hint="YAML keeps only the last of the two: merge them into one or delete one")
                first_line[key] = key_line
                lines[path + (key_node.value,)] = key_line
                d, v = walk(value_node, path + (key_node.value,))
                depth, values = max(depth, d), values + v
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                d, v = walk(item, path + (i,))
                depth, values = max(depth, d), values + v
        if isinstance(n, yaml.CollectionNode):
            depth += 1
        if depth > MAX_YAML_DEPTH:
            raise SpxError(f"nested more than {MAX_YAML_DEPTH} levels deep through aliases", where=f"{source}:{line}",
                           hint="a recipe nests a few levels; check the aliases (*name) used here")
        if values > MAX_YAML_VALUES:
            raise SpxError(f"holds more than {MAX_YAML_VALUES} values once aliases are expanded", where=f"{source}:{line}",
                           hint="an alias (*name) copies its anchor's whole value; a recipe needs few of them")
        open_nodes.discard(id(n))
        measured[id(n)] = depth, values
        return depth, values

    walk(root, ())


def load_yaml_file(path: str | Path) -> tuple[Any, dict[KeyPath, int]]:
    """`load_yaml_with_lines` of a file: at most MAX_YAML_BYTES, UTF-8 (a BOM is accepted), any line endings."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise SpxError(f"file not found: {p}", hint="check the path") from None
    except OSError as exc:  # a folder, no permission
        raise SpxError(f"cannot read {p}: {exc.strerror or exc}", hint="check the path") from None
    if len(raw) > MAX_YAML_BYTES:
        raise SpxError(f"{p.stat().st_size / 2**20:.1f} MiB, more than the {MAX_YAML_BYTES // 2**20} MiB a recipe may hold",
                       where=str(p), hint="is this really a recipe?")
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start  # in the file
        line = raw.count(b"\n", 0, offset) + 1
        raise SpxError(f"not UTF-8 text (byte {offset}: {raw[offset:offset + 1]!r})", hint="save the file as UTF-8",
                       where=f"{p}:{line}") from None
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


_DAMAGED_HINT = "it was cut off or edited: re-run the step that writes it (a bench cell: spx bench --force)"


def read_json(path: Path) -> Any:
    """A run record (metrics.json, speed.json, ...): its content, None when the file does not exist, one SpxError
    naming the file when it is not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpxError(f"{path} is not valid JSON ({exc})", hint=_DAMAGED_HINT) from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines run record (hyps.jsonl, curve.jsonl): its rows, [] when the file does not exist, one SpxError
    naming file:line for a row that is not JSON."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise SpxError(f"{path}:{n}: not valid JSON ({exc.msg})", hint=_DAMAGED_HINT) from None
    return rows
