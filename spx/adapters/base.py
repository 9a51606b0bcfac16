"""The adapter contract every backend implements: `spx/adapters/<backend>/__init__.py` exposes `ADAPTER`, an instance
of `BackendAdapter` that declares the backend (its name, and per task the family modules it renders).

Layout of a backend folder (docs/architecture.md):
    __init__.py        ADAPTER = BackendAdapter(name=..., families={task: {family: "module"}}, ...) and nothing else
    helpers.py         the backend's leaf module of helpers its families share (no torch, no toolkit at import time)
    <family>.py        one module per model family, the `Family` functions below (no torch/toolkit at import time)
    steps/<step>.py    the child-process entry points (`python -m spx.adapters.<backend>.steps.<step> RUN_DIR`):
                       the only code that imports torch or the toolkit

A family module defines:
    TASK: str, NAME: str           e.g. "asr", "conformer_ctc"
    PRECISIONS: tuple[str, ...]    training.precision values it trains in at all (default: every one the spec has)
    CPU_PRECISIONS: tuple[str,...] training.precision values its CPU path runs (default ("fp32",))
    FREEZE: bool                   whether it maps `freeze:` (default True; False: a freeze item is refused)
    INIT_FROM: str                 what init_from takes for it, for error hints ("a .nemo file (a run's exported_model)")
    INFERENCE: str | None          the child module whose load_transcriber / load_synthesizer / load_classifier
                                   (run_dir, device) the bench's judge and `spx serve` use (None: it has none)
    EXPORT: str | None             the child module that exports a finished run (`spx export`; None: no export yet)
    EXPORT_REFUSED: str            (optional, with EXPORT None) why the family cannot be exported, shown by spx export
    FINETUNE_METHODS: tuple[str,...]  finetune.method values it runs (default ("full",))
    FINETUNE_OPTIONS: tuple[str,...]  other fine-tuning controls it honours, by spec key
                                   ("training.optimizer.pretrained_lr", "finetune.freeze_pretrained_steps",
                                   "finetune.init_include", "finetune.init_exclude"; default none)
    FINETUNE_REFUSED: dict[str, str]  why it lacks a method or option, shown in the refusal
                                   ({"finetune.method lora": "NeMo 3.0's ASR has no LoRA ..."}; default none)
    check(spec) -> None            raise SpxError before anything is written when this family cannot run the job
    render(spec, run_dir) -> list[Step]   write native/ and return the steps
    collect_extras(run_dir) -> dict       what collect adds to the normalized files (e.g. {"native": {...}})

Normalized files every backend's child processes write (typed in spx/records.py; the bench scores from them):
    hyps.jsonl           ASR: {id, ref, hyp, duration, decode_time, test_set}
                         TTS: {id, text, audio (generated wav path), ref_audio, duration, synth_time, test_set}
                         classification: {id, ref_label, label, scores: {label: prob} top-k, duration, decode_time,
                                          test_set}
    speed.json           {device, dtype, batch_size, threads, warmup_batches, repeats, audio_seconds,
                          decode_seconds: [per repeat], clock: "what the clock covers"}
    curve.jsonl          one row per epoch: {epoch, step, train_loss, valid_loss, [valid_wer], lr, time}
    train_summary.json   {wall_seconds, epochs, steps, params, peak_memory_mb, last_checkpoint,
                          best_checkpoint, exported_model, effective_batch, world_size}
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from spx import records
from spx.adapters.common.spec_helpers import check_cpu_precision, check_fine_tuning, check_nodes
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec


def collect_normalized(run_dir: RunDir) -> dict[str, Any]:
    """What every adapter's collect returns at least: the normalized files, read back."""
    return {"backend": run_dir.backend, "status": run_dir.status(), **records.read_run(run_dir.path, run_dir.spec.task)}


def unsupported(spec: Spec, backend: str, tasks: dict[str, set[str]]) -> str | None:
    """Why `backend` cannot run `spec`, or None."""
    fams = tasks.get(spec.task)
    if fams is None:
        return f"spx's {backend!r} backend has no {spec.task!r} task (it has: {', '.join(sorted(tasks))})"
    if spec.model.family not in fams:
        return (f"spx's {backend!r} backend has no {spec.model.family!r} model for task {spec.task!r} "
                f"(it has: {', '.join(sorted(fams))})")
    return None


def check_init_source(spec: Spec, backend: str) -> None:
    """init_from naming an spx run dir must be a run of this backend and of the same task and family: a NeMo run
    cannot initialise an ESPnet model, nor a Tacotron2 run a FastSpeech2 one."""
    if not spec.init_from:
        return
    p = Path(spec.init_from).expanduser()
    if not (p.is_dir() and (p / "spec.yaml").is_file() and (p / "backend").is_file()):
        return
    theirs = RunDir(p)
    their_backend = theirs.backend
    if their_backend != backend:
        raise SpxError(f"init_from {spec.init_from!r} is a {their_backend} run; this job runs on {backend}",
                       where="init_from", hint=f"fine-tune from a {backend} run of the same family, or run this job "
                                               f"with --backend {their_backend}")
    their_spec = theirs.spec
    if (their_spec.task, their_spec.model.family) != (spec.task, spec.model.family):
        raise SpxError(f"init_from {spec.init_from!r} is a {their_spec.task}/{their_spec.model.family} run; this job "
                       f"is {spec.task}/{spec.model.family}", where="init_from",
                       hint="fine-tune from a run of the same task and model family")


@dataclass
class BackendAdapter:
    """One backend: its name, the family modules it renders per task, and the checks every backend applies the same
    way. Everything family-specific is in the family module (see the module docstring)."""

    name: str
    families: dict[str, dict[str, str]]  # task -> {family -> module name inside spx.adapters.<name>}
    hint: str = ""                       # what to do when a job is not supported here
    loggers: tuple[str, ...] = ("tensorboard", "wandb")  # the spec.logging loggers the toolkit has
    _modules: dict[str, ModuleType] = field(default_factory=dict, repr=False)

    @property
    def tasks(self) -> dict[str, set[str]]:
        return {task: set(fams) for task, fams in self.families.items()}

    def family(self, spec: Spec) -> ModuleType:
        """The family module that renders `spec` (imported on first use; it imports no toolkit)."""
        why = unsupported(spec, self.name, self.tasks)
        if why:
            raise SpxError(f"{why}; this job is task {spec.task!r}, model.family {spec.model.family!r}",
                           where="task" if spec.task not in self.families else "model.family",
                           hint=self.hint or "run it on a backend that has it (spx doctor lists them)")
        module = f"spx.adapters.{self.name}.{self.families[spec.task][spec.model.family]}"
        if module not in self._modules:
            self._modules[module] = importlib.import_module(module)
        return self._modules[module]

    def supports(self, spec: Spec) -> None:
        """Raise SpxError before anything is written when this backend cannot run the job."""
        fam = self.family(spec)
        what = f"spx's {self.name} {spec.model.family} family"
        check_nodes(spec)
        missing = [name for name in ("tensorboard", "wandb", "mlflow") if getattr(spec.logging, name)
                   and name not in self.loggers]
        if missing:
            raise SpxError(f"{self.name} has no {' or '.join(missing)} logger", where=f"logging.{missing[0]}",
                           hint=f"set logging.{missing[0]}: false; {self.name} logs to {', '.join(self.loggers)}")
        precisions = getattr(fam, "PRECISIONS", None)
        if precisions is not None and spec.training.precision not in precisions:
            raise SpxError(f"{what} trains in {' or '.join(precisions)}, not {spec.training.precision}",
                           where="training.precision", hint=f"set training.precision: {precisions[0]}")
        if spec.freeze and not getattr(fam, "FREEZE", True):
            raise SpxError(f"{what} has no mapping for freeze", where="freeze",
                           hint="remove freeze (fine-tune all weights), or use a family that maps it")
        check_cpu_precision(spec, self.name, getattr(fam, "CPU_PRECISIONS", ("fp32",)))
        check_fine_tuning(spec, getattr(fam, "INIT_FROM", f"a trained {self.name} {spec.model.family} model"), self.name,
                          getattr(fam, "FINETUNE_METHODS", ("full",)), getattr(fam, "FINETUNE_OPTIONS", ()),
                          getattr(fam, "FINETUNE_REFUSED", {}))
        check_init_source(spec, self.name)
        fam.check(spec)

    def render(self, spec: Spec, run_dir: RunDir) -> list[Step]:
        self.supports(spec)
        return self.family(spec).render(spec, run_dir)

    def collect(self, run_dir: RunDir) -> dict[str, Any]:
        out = collect_normalized(run_dir)
        out.update(self.family(run_dir.spec).collect_extras(run_dir))
        return out

    def inference_module(self, spec: Spec) -> str:
        """The child module holding the family's model loader (load_transcriber / load_synthesizer /
        load_classifier(run_dir, device)): the bench's judge and export/serve import it in a child process."""
        module = getattr(self.family(spec), "INFERENCE", None)
        if not module:
            raise SpxError(f"spx's {self.name} {spec.model.family} family has no model loader for inference",
                           hint="use a run of a family that has one")
        return module

    def export_module(self, spec: Spec) -> str:
        """The child module that exports a finished run of the family (`spx export` runs it in a child process)."""
        family = self.family(spec)
        module = getattr(family, "EXPORT", None)
        refused = getattr(family, "EXPORT_REFUSED", None)
        if not module and refused:
            raise SpxError(f"spx cannot export {self.name} {spec.model.family} models: {refused}",
                           hint="export a run of a family that has an exporter (docs/deploy.md lists them)")
        if not module:
            raise SpxError(f"spx cannot export {self.name} {spec.model.family} models yet",
                           hint="export a run of a family that has an exporter (docs/deploy.md lists them)")
        return module
