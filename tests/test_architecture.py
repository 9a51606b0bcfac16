"""The layout rules of docs/architecture.md, checked on the source: no import cycles among spx modules, and no core
module imports torch or a toolkit when it is imported."""
from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLKITS = ("torch", "torchaudio", "nemo", "speechbrain", "espnet2", "lightning", "transformers", "onnxruntime")

def spx_modules() -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / "spx").rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the spx modules it imports anywhere in its body (a lazy import inside a function counts too:
    it is a dependency all the same)."""
    modules = spx_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm, iterative; components of more than one module are the cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(frozenset(component))
    return out


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [frozenset({"a", "b", "c"})]


def test_no_new_import_cycles_in_spx():
    cycles = [sorted(c) for c in strongly_connected(import_graph())]
    assert not cycles, f"import cycles among spx modules: {cycles} (move the shared code into a leaf module)"


CHILD_COMMON = {"spx.adapters.common.child", "spx.adapters.common.export"}


def core_modules() -> list[str]:
    """Every module the CLI may import in its own process: all of spx except the child-process modules (a backend's
    `steps/` package and the child-side helpers in spx/adapters/common/). A backend's `__init__`, `helpers` and family
    modules are core: the CLI imports them to check and render a job."""
    out = []
    for name in spx_modules():
        parts = name.split(".")
        if parts[:2] == ["spx", "adapters"] and ("steps" in parts or name in CHILD_COMMON):
            continue
        if name in ("spx.__main__",):
            continue
        out.append(name)
    return out


def test_core_modules_import_no_torch_or_toolkit():
    code = ("import importlib, json, sys\n"
            f"for m in {core_modules()!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(t for t in {TOOLKITS!r} if t in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_backend_list_lives_in_the_registry_only():
    """No module spells the backend list out again: they read spx.registry."""
    import re

    spelled = re.compile(r"""["']nemo["']\s*,\s*["']speechbrain["']\s*,\s*["']espnet["']""")
    offenders = [str(p.relative_to(REPO)) for p in spx_modules().values()
                 if p.name != "registry.py" and spelled.search(p.read_text(encoding="utf-8"))]
    assert not offenders, f"backend list written out in {offenders}: use spx.registry.BACKEND_NAMES"


def test_family_modules_import_no_other_family():
    """docs/architecture.md: a family module imports its backend's helpers and the core, never another family (what
    two families share goes to helpers.py), so a family is added or removed as one file."""
    from spx.adapters import get_adapter
    from spx.registry import BACKENDS

    graph = import_graph()
    wrong = []
    for backend in BACKENDS:
        families = {f"spx.adapters.{backend}.{module}" for fams in get_adapter(backend).families.values()
                    for module in fams.values()}
        wrong += [(f, sorted(graph[f] & (families - {f}))) for f in sorted(families) if graph[f] & (families - {f})]
    assert not wrong, f"family modules importing another family: {wrong}"


def test_every_family_exports_or_says_why_not():
    """`spx export` on any run either exports it (EXPORT: the child module) or says why not (EXPORT_REFUSED), so no
    user meets a bare "not yet"."""
    from spx.adapters import get_adapter
    from spx.registry import BACKENDS

    silent = []
    for backend in BACKENDS:
        adapter = get_adapter(backend)
        for task, families in adapter.families.items():
            for family, module in families.items():
                mod = importlib.import_module(f"spx.adapters.{backend}.{module}")
                if not getattr(mod, "EXPORT", None) and not getattr(mod, "EXPORT_REFUSED", None):
                    silent.append(f"{backend} {task} {family}")
    assert not silent, f"families with neither EXPORT nor EXPORT_REFUSED: {silent}"
