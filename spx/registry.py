"""The one list of backends that the CLI, the spec, `spx doctor`, the bench and its report read.

A leaf module (no spx imports, no toolkit imports): adding a backend is one `Backend` row here plus its folder
`spx/adapters/<name>/` exposing `ADAPTER`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Backend:
    name: str
    probe_module: str                 # what `spx doctor` imports (in a child process) to say the toolkit works
    distribution: str                 # the toolkit's package name, for versions in env.json and the report
    color: str                        # its colour in every bench plot

    @property
    def adapter_module(self) -> str:
        return f"spx.adapters.{self.name}"


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("nemo", "nemo.collections.asr", "nemo-toolkit", "#76b900"),
    Backend("speechbrain", "speechbrain", "speechbrain", "#7b3fb3"),
    Backend("espnet", "espnet2.bin.asr_train", "espnet", "#1f77b4"),
    Backend("hf", "transformers", "transformers", "#ff9d00"),
)}
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)

# packages whose versions every run records and the report discloses, besides the toolkits
BASE_DISTRIBUTIONS = ("torch", "torchaudio", "lightning")
REPORTED_DISTRIBUTIONS: tuple[str, ...] = (*BASE_DISTRIBUTIONS[:2], *(b.distribution for b in BACKENDS.values()),
                                           *BASE_DISTRIBUTIONS[2:])


@dataclass(frozen=True)
class Task:
    name: str
    scorer: str | None  # "module:function" taking (hyps rows, spec) -> metrics; None: no scorer yet

    def score(self) -> Callable[[list[dict[str, Any]], Any], dict[str, Any]] | None:
        if self.scorer is None:
            return None
        module, _, function = self.scorer.partition(":")
        return getattr(importlib.import_module(module), function)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("asr", "spx.bench.scoring:score_asr"),
    Task("tts", "spx.bench.quality:score_tts"),
    Task("classification", "spx.bench.classification:score_classification"),
)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
