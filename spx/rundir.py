"""The run directory: a complete, readable record of one job on one backend.

Layout (paths relative to the run dir):
  spec.yaml          resolved spec (overrides applied, paths absolute)
  backend            the backend's name
  steps.json         the exact commands, machine-readable (argv lists)
  command.sh         the same commands as a shell script a person can read and re-run
  env.json           spx version + git SHA, package versions, python, host; device info from the child
  manifests/         the spx manifests used (train/valid/test)
  native/            the toolkit's own config(s) and data files
  train.log          full native log of the training step; logs/<step>.log for the others
  checkpoints/       the toolkit's checkpoints (and the final exported model)
  curve.jsonl        training curve: one row per epoch {epoch, step, train_loss, valid_loss, ...}
  train_summary.json wall time, params, peak memory, best/last checkpoint
  hyps.jsonl         per test utterance {id, ref, hyp, duration, decode_time, test_set}
  speed.json         decoding-speed protocol and timings (RTF/RTFx inputs)
  metrics.json       scored results (WER/CER/..., RTF), written by spx after collect
  status.json        {state: rendered|running|finished|failed|interrupted, error, step, times}
"""
from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from spx.errors import SpxError
from spx.yamlio import atomic_write_json

# waiting: its steps up to the first timed one are done (`spx bench` runs the timed steps one cell at a time)
State = Literal["rendered", "submitted", "running", "waiting", "finished", "failed", "interrupted", "cancelled",
                "unsupported"]
LaunchMode = Literal["single", "torchrun", "tasks", "self"]


@dataclass
class Step:
    """One command of a run. `launch` says how it runs with several processes:
    single   - always one process (data prep, decoding, stats);
    torchrun - one process per device under torchrun (several nodes: one torchrun agent per node, c10d rendezvous);
               the toolkit reads RANK/WORLD_SIZE (SpeechBrain, spx's ESPnet train step);
    tasks    - one process per device: torchrun on one node; under Slurm, srun starts one task per device and the
               toolkit reads SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS itself (Lightning's SLURMEnvironment: NeMo);
    self     - the toolkit spawns its own processes from its own options: one task per node runs the argv plus
               `self_launch["gpu"]` (GPU) or, under a torchrun agent, `self_launch["cpu"]` (CPU); their
               {devices}, {addr} and {port} are filled in (e.g. ESPnet's --ngpu/--dist_launcher slurm).
    `timed`: the step measures speed (RTF/RTFx), so `spx bench` runs it alone on the machine, never beside another
    cell's training."""

    name: str
    argv: list[str]
    launch: LaunchMode = "single"
    log: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timed: bool = False
    self_launch: dict[str, list[str]] = field(default_factory=dict)

    @property
    def log_path(self) -> str:
        return self.log or f"logs/{self.name}.log"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def __str__(self) -> str:
        return str(self.path)

    # -------------------------------------------------------------- steps
    def write_steps(self, steps: list[Step]) -> None:
        import shlex

        atomic_write_json(self / "steps.json", [asdict(s) for s in steps])
        lines = ["#!/usr/bin/env bash", "# Exact commands of this run, in order (spx exec runs them from steps.json).",
                 "set -euo pipefail", f"cd {shlex.quote(str(self.path))}"]
        for s in steps:
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in s.env.items())
            lines.append(f"# step {s.name} (launch: {s.launch}; log: {s.log_path})")
            lines.append((env + " " if env else "") + shlex.join(s.argv) + f" >> {shlex.quote(s.log_path)} 2>&1")
        from spx.yamlio import atomic_write_text

        atomic_write_text(self / "command.sh", "\n".join(lines) + "\n")
        os.chmod(self / "command.sh", 0o755)

    def read_steps(self) -> list[Step]:
        try:
            return [Step(**d) for d in json.loads((self / "steps.json").read_text())]
        except FileNotFoundError:
            raise SpxError(f"{self.path} is not an spx run directory (no steps.json)", hint="pass a folder made by `spx run`") from None

    @property
    def backend(self) -> str:
        return (self / "backend").read_text().strip()

    @functools.cached_property
    def spec(self):
        """The run's resolved spec (spec.yaml), validated once and kept: every reader of a run dir uses this."""
        import yaml

        from spx.spec import Spec

        path = self / "spec.yaml"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpxError(f"{self.path} is not an spx run directory (no spec.yaml)",
                           hint="pass a folder made by `spx run`") from None
        return Spec.model_validate(yaml.safe_load(text))

    # -------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self / "status.json").read_text())
        except FileNotFoundError:
            return {"state": "unknown"}

    def set_status(self, state: State, **fields: Any) -> dict[str, Any]:
        st = self.status()
        st.update(fields)
        st["state"] = state
        st["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if state != "failed" and "error" in st and state in ("running", "finished"):
            st.pop("error", None)
        from spx import records

        records.write(self / "status.json", records.Status, st)
        return st

    def completed_steps(self) -> list[str]:
        return list(self.status().get("completed_steps", []))


def require_same_job(path: str, backend: str, family: str, where: str = "init_from") -> None:
    """Fine-tuning starts from the same job: when `path` is an spx run dir, it must be a `backend` run of model
    family `family`. Other paths (a native checkpoint) are left to the toolkit's strict load."""
    p = Path(path).expanduser()
    if not (p / "spec.yaml").is_file():
        return
    theirs = ((p / "backend").read_text().strip() if (p / "backend").is_file() else None, RunDir(p).spec.model.family)
    if theirs != (backend, family):
        raise SpxError(f"{where} {path!r} is an spx run of {theirs[0]} {theirs[1]}, not of {backend} {family}",
                       where=where, hint="fine-tune from a run of the same backend and family")
