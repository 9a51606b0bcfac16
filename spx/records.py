"""The run records every backend's child processes write and collect / the bench read: one typed schema each
(msgspec Structs), checked when a record is written and when it is read, so a child that writes a wrong field type
or leaves out a required one fails there, not later in the report.

    status.json          Status          spx itself (spx.rundir.RunDir.set_status)
    train_summary.json   TrainSummary    the train step (spx.adapters.common.child.write_train_summary)
    curve.jsonl          CurveRow        the train step, one row per epoch (append_curve)
    speed.json           Speed           the decode / synthesis step (decode_and_time, synthesize_and_time)
    hyps.jsonl           AsrHyp | TtsHyp | ClsHyp by task
    metrics.json         Metrics         spx.runner.finalize_run (the task's scorer adds its own keys)

Records are open: a family may add fields of its own (FastPitch's pitch statistics, a TTS curve's mel loss); the
fields named here are required (no default) or optional, and typed. Readers get plain dicts (JSON as written)
after the check. A leaf module: no torch, no toolkit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

from spx.errors import SpxError
from spx.yamlio import atomic_write_json, read_json, read_jsonl

Number = int | float


class Status(msgspec.Struct, kw_only=True):
    state: Literal["rendered", "submitted", "running", "waiting", "finished", "failed", "interrupted", "cancelled",
                   "unsupported", "unknown"]
    updated: str | None = None
    step: str | None = None
    completed_steps: list[str] = []
    error: str | None = None
    reason: str | None = None  # state unsupported (a bench cell): why the backend refused the recipe
    log: str | None = None
    backend: str | None = None
    launcher: str | None = None
    slurm_job_id: str | None = None
    pid: int | None = None
    wall_seconds: Number | None = None
    exec_seconds: Number | None = None


class TrainSummary(msgspec.Struct, kw_only=True):
    wall_seconds: Number
    epochs: int
    steps: int
    params: int
    trainable_params: int | None = None
    frozen_params: int | None = None
    lora_params: int | None = None      # finetune.method lora: the adapters' size (trainable = adapters + new head)
    adapter_params: int | None = None   # finetune.method adapter: the adapters' size (trainable = adapters + new head)
    peak_memory_mb: Number | None = None
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    exported_model: str | None = None
    effective_batch: int | None = None
    world_size: int | None = None
    init_from: str | None = None                # the model it started from
    init_details: dict[str, Any] | None = None  # what was loaded from it (tensors, a new head, ...)
    device: str | None = None
    threads: int | None = None


class CurveRow(msgspec.Struct, kw_only=True):
    epoch: int
    step: int | None = None  # ESPnet's TTS reporter counts epochs only
    train_loss: Number | None = None
    valid_loss: Number | None = None
    valid_wer: Number | None = None
    lr: Number | None = None
    time: Number | None = None


class Speed(msgspec.Struct, kw_only=True):
    device: str
    dtype: str
    batch_size: int
    threads: int
    warmup_batches: int
    repeats: int
    audio_seconds: Number
    decode_seconds: list[Number]
    clock: str
    median_decode_seconds: Number | None = None
    utterances: int | None = None


class AsrHyp(msgspec.Struct, kw_only=True):
    id: str
    ref: str
    hyp: str
    duration: Number
    decode_time: Number
    test_set: str


class TtsHyp(msgspec.Struct, kw_only=True):
    id: str
    text: str
    audio: str
    duration: Number
    synth_time: Number
    test_set: str
    ref_audio: str | None = None
    speaker: str | None = None
    sample_rate: int | None = None


class ClsHyp(msgspec.Struct, kw_only=True):
    id: str
    ref_label: str | None
    label: str
    scores: dict[str, Number]
    duration: Number
    decode_time: Number
    test_set: str


class Metrics(msgspec.Struct, kw_only=True):
    backend: str | None
    task: str
    normalizer: str | None = None
    rtf: Number | None = None
    rtfx: Number | None = None


HYP_TYPES: dict[str, type[msgspec.Struct]] = {"asr": AsrHyp, "tts": TtsHyp, "classification": ClsHyp}
_HINT = "it was written by another spx version or edited: re-run the step that writes it (a bench cell: spx bench --force)"


def check(record: Any, kind: type[msgspec.Struct], where: str) -> Any:
    """`record` (a dict as JSON holds it) checked against `kind`; returned as is. One SpxError naming `where`."""
    try:
        msgspec.convert(record, kind)
    except msgspec.ValidationError as exc:
        raise SpxError(f"{where}: not a valid {kind.__name__} record ({exc})", hint=_HINT) from None
    return record


def write(path: str | Path, kind: type[msgspec.Struct], record: dict[str, Any]) -> Path:
    """Check, then write atomically."""
    return atomic_write_json(path, check(record, kind, str(path)))


def read(path: str | Path, kind: type[msgspec.Struct]) -> dict[str, Any] | None:
    """The record at `path` (None when the file does not exist), checked."""
    data = read_json(Path(path))
    return None if data is None else check(data, kind, str(path))


def read_rows(path: str | Path, kind: type[msgspec.Struct]) -> list[dict[str, Any]]:
    """The rows of a JSON-lines record, each checked ([] when the file does not exist)."""
    rows = read_jsonl(Path(path))
    for n, row in enumerate(rows, 1):
        check(row, kind, f"{path}: row {n}")
    return rows


def read_run(path: str | Path, task: str) -> dict[str, Any]:
    """The normalized records of one run dir, checked: what collect and the bench both read."""
    path = Path(path)
    return {
        "hyps": read_rows(path / "hyps.jsonl", HYP_TYPES[task]) if task in HYP_TYPES else read_jsonl(path / "hyps.jsonl"),
        "speed": read(path / "speed.json", Speed),
        "curve": read_rows(path / "curve.jsonl", CurveRow),
        "train_summary": read(path / "train_summary.json", TrainSummary),
    }
