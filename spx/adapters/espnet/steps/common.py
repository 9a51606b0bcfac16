"""What the ESPnet child steps share: their start, running a native espnet2 argv in this process, and ESPnet's task
class with spx's parameter count. Imported only by the child steps (espnet2 is imported inside the functions)."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

from spx.adapters.common import child
from spx.adapters.espnet.steps.lazy_imports import defer_unused_imports


def start(run_dir: str):
    """(spec, run dir) of a child step that runs ESPnet's commands: the unused imports deferred before anything
    imports espnet2, and the run dir as the working directory (the native argv lists are relative to it)."""
    defer_unused_imports()
    spec, rd = child.load_run(run_dir)
    os.chdir(rd.path)
    return spec, rd


def run_native(argv: list[str], main: Callable[..., Any] | None = None, log: bool = True) -> None:
    """Run a native argv (module first) in this process through its entry point's main(cmd=...) (or `main`, a
    subclass's), after logging it (unless told not to: ranks other than 0) as the command ESPnet alone would run."""
    if log:
        print("# native: python -m " + " ".join(argv), file=sys.stderr, flush=True)
    (main or importlib.import_module(argv[0]).main)(cmd=argv[1:])


def counting_task(task: type, info: dict[str, Any], on_model: Callable[[Any], None] | None = None) -> type:
    """ESPnet's task class (ASRTask, TTSTask, GANTTSTask); spx only counts the parameters into info["params"] (and
    lets `on_model` hook the model)."""

    class SpxTask(task):
        @classmethod
        def build_model(cls, args):
            model = super().build_model(args)
            info["params"] = child.count_params(model)
            if on_model is not None:
                on_model(model)
            return model

    return SpxTask
