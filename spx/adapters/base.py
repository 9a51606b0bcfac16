"""The adapter contract every backend implements (spx/adapters/<backend>/__init__.py exposes `ADAPTER`).

An adapter is imported by the core, so its module must not import torch or its toolkit at import
time: toolkit code lives in modules of the backend folder that only the child processes import.

    supports(spec) -> None         raise SpxError *before anything runs* if this backend cannot do the job
    render(spec, run_dir) -> steps write native config + native data into run_dir/native, return the commands
    collect(run_dir) -> dict       normalized outcome read back from run_dir (see RunResult keys below)

Normalized files every backend's child processes write (the contract the bench scores from):
    hyps.jsonl           ASR: {id, ref, hyp, duration, decode_time, test_set}
                         TTS: {id, text, audio (generated wav path), ref_audio, duration, synth_time, test_set}
    speed.json           {device, dtype, batch_size, threads, warmup_batches, repeats, audio_seconds,
                          decode_seconds: [per repeat], clock: "what the clock covers"}
    curve.jsonl          one row per epoch: {epoch, step, train_loss, valid_loss, [valid_wer], lr, time}
    train_summary.json   {wall_seconds, epochs, steps, params, peak_memory_mb, last_checkpoint,
                          best_checkpoint, exported_model, effective_batch, world_size}
"""
from __future__ import annotations

from typing import Any, Protocol

from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import read_json, read_jsonl


class Adapter(Protocol):
    name: str
    tasks: dict[str, set[str]]  # task -> model families this backend renders

    def supports(self, spec: Spec) -> None: ...

    def render(self, spec: Spec, run_dir: RunDir) -> list[Step]: ...

    def collect(self, run_dir: RunDir) -> dict[str, Any]: ...


def collect_normalized(run_dir: RunDir) -> dict[str, Any]:
    """What every adapter's collect returns at least: the normalized files, read back."""
    return {
        "backend": run_dir.backend,
        "status": run_dir.status(),
        "hyps": read_jsonl(run_dir / "hyps.jsonl"),
        "speed": read_json(run_dir / "speed.json"),
        "curve": read_jsonl(run_dir / "curve.jsonl"),
        "train_summary": read_json(run_dir / "train_summary.json"),
    }


def unsupported(spec: Spec, backend: str, tasks: dict[str, set[str]]) -> str | None:
    """Why `backend` cannot run `spec`, or None."""
    fams = tasks.get(spec.task)
    if fams is None:
        return f"spx's {backend!r} backend has no {spec.task!r} task (it has: {', '.join(sorted(tasks))})"
    if spec.model.family not in fams:
        return (f"spx's {backend!r} backend has no {spec.model.family!r} model for task {spec.task!r} "
                f"(it has: {', '.join(sorted(fams))})")
    return None
