"""Defer the module-level imports ESPnet makes for features an spx run may never use, in spx's ESPnet child processes.

`import espnet2.tasks.asr` (or tts) imports every model ESPnet has. A few of those imports are plain `import x`
statements whose module is used only on paths a run may not take; they are loaded here by
`importlib.util.LazyLoader`: the importing module gets the real module object, which executes on its first
attribute access (`g2p_en.G2p`), with the real import errors. Nothing in site-packages is changed, and nothing
outside the child processes that call `defer_unused_imports()` is affected.

Only the first import statement of a deferred module stays lazy: any later `import x` or `from x import y`
elsewhere loads it at once (CPython looks at `x.__spec__`), which is the ordinary behaviour. What each one avoids, by
the child's own import clock (`python -X importtime`, 2 cores; `import espnet2.tasks.asr` takes ~20 s at load 1.5):
  g2p_en   espnet2.text.phoneme_tokenizer's `import g2p_en`: its subtree 4.8 s idle, 26-30 s at load 6-8 (nltk,
           inflect, and nltk's attempts to download its tagger and cmudict over the network); inflect is imported
           anyway (tacotron_cleaner), so a whole `import espnet2.tasks.asr` gets 2.3-2.7 s faster at load 1.5
           (`benchmarks/espnet_cell_split.py --imports`). Used only when a g2p is chosen (`--g2p g2p_en`); spx
           renders `--g2p none`.
  nltk     espnet.nets.e2e_mt_common's `import nltk` (BLEU of MT/ST models), which the decode step's
           espnet2.bin.asr_inference imports through the enh_s2t task: subtree 2.4 s at load 1. g2p_en's
           `from nltk import ...` loads it.
  wandb    espnet2.tasks.abs_task's `try: import wandb except Exception`: subtree 0.7 s idle, 4-5 s at load 4-8.
           Used only with `--use_wandb true`, where a broken wandb now raises its own error at `wandb.login()`
           instead of ESPnet's "Please install wandb".
(hydra, `import hydra` in espnet2.asr.state_spaces.utils, costs ~0.2 s: not worth deferring. The transformers
import of espnet2.asr.encoder.beats_encoder, ~5 s, is `from ... import name`, which no lazy loader can defer.)
LazyLoader is not thread-safe on Python 3.11: the first touch of a deferred module must not race another thread's
(ESPnet's data loader workers are processes).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import types

DEFERRED = ("g2p_en", "nltk", "wandb")


class _FailLoudly(importlib.abc.Loader):
    """The real loader, plus: when the deferred execution fails, the module leaves sys.modules (as after a failed
    eager import) and any later attribute access raises the same ImportError instead of an AttributeError."""

    def __init__(self, real: importlib.abc.Loader, failed: set[str]):
        self.real, self.failed = real, failed

    def __getattr__(self, name: str):  # get_resource_reader, get_data, is_package, ... of the real loader
        return getattr(self.real, name)

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        try:
            self.real.exec_module(module)
        except BaseException as exc:
            name = module.__spec__.name
            self.failed.add(name)  # an import statement after this one is eager and raises the error itself
            if sys.modules.get(name) is module:
                del sys.modules[name]

            def __getattr__(attr: str, _exc=exc, _name=name):
                raise ImportError(f"deferred import of {_name!r} failed: {_exc!r}", name=_name) from _exc

            module.__getattr__ = __getattr__
            raise


class _DeferringFinder(importlib.abc.MetaPathFinder):
    """Finds the deferred names with the other finders and hands back their spec with a lazy loader."""

    def __init__(self, names: tuple[str, ...]):
        self.names = frozenset(names)
        self.failed: set[str] = set()

    def find_spec(self, fullname, path, target=None):
        # availability probes (importlib.util.find_spec, as transformers does for g2p_en) get the lazy spec too: harmless
        if fullname not in self.names or fullname in self.failed:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None  # not installed: the ordinary ModuleNotFoundError, at the import statement
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # namespace package or a legacy loader: imported as usual
        spec.loader = importlib.util.LazyLoader(_FailLoudly(spec.loader, self.failed))
        return spec


_finder: _DeferringFinder | None = None


def defer_unused_imports(names: tuple[str, ...] = DEFERRED) -> None:
    """Install the deferring finder first on sys.meta_path (once per process). Names already imported stay as
    they are."""
    global _finder
    if _finder is None:
        _finder = _DeferringFinder(tuple(n for n in names if n not in sys.modules))
        sys.meta_path.insert(0, _finder)


def still_deferred() -> dict[str, bool]:
    """{name: True while the module is imported but not executed yet} for the names this process deferred.
    type(), not .__class__: looking at an attribute would execute the module."""
    if _finder is None:
        return {}
    return {name: type(sys.modules[name]).__name__ == "_LazyModule" for name in sorted(_finder.names) if name in sys.modules}
