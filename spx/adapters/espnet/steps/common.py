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
    if spec.model.family == "ssl_ctc":  # before espnet2 imports s3prl (its frontend)
        from spx.adapters.espnet.steps.s3prl_compat import apply

        apply()
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
    lets `on_model` hook the model), and, once ESPnet has applied --freeze_param and its adapters (just before it
    builds the optimizers), the trainable, frozen and LoRA parameters (info["trainable"], ["frozen"], ["lora"]) and
    the model itself (info["model"])."""

    class SpxTask(task):
        @classmethod
        def build_model(cls, args):
            model = super().build_model(args)
            info["params"] = child.count_params(model)
            if on_model is not None:
                on_model(model)
            return model

        @classmethod
        def build_optimizers(cls, args, model):
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            info.update(params=total, trainable=trainable, frozen=total - trainable, model=model)
            if getattr(args, "use_adapter", False):
                info["lora"] = keep_lora_apart(model)
            return super().build_optimizers(args, model)

    return SpxTask


def keep_lora_apart(model) -> int:
    """loralib's layers add their low-rank update into the frozen base weight whenever the model goes to eval() (ESPnet
    validates every epoch) and subtract it again on train(): the base drifts by float rounding each time. Computing
    the update beside the base instead (merge_weights off, the same output) keeps the base bit-identical. Returns the
    number of LoRA parameters."""
    import loralib

    n = 0
    for module in model.modules():
        if isinstance(module, loralib.LoRALayer):
            if module.merged:  # create_lora_adapter ends with eval(): folded in an update that is still zero
                module.train(True)
            module.merge_weights = False
    for name, p in model.named_parameters():
        if "lora_" in name:
            n += p.numel()
    return n
