"""Slurm launcher: write run_dir/slurm.sbatch, submit it with sbatch, and query/cancel the job.

The batch script runs `python -m spx exec RUN_DIR` (same interpreter as the submitting spx) in the run dir, so a
requeued job runs the run dir again: completed steps are skipped and the training step resumes from its last
checkpoint with the toolkit's own resume. Multi-node steps run the way each step's `launch` mode says
(`multinode_command`): torchrun rendezvous, srun tasks read by the toolkit (Lightning's SLURMEnvironment), or the
toolkit's own launcher (ESPnet's `--dist_launcher slurm`); the launcher never names a backend.

Every value that reaches the script is validated (the `#SBATCH` values) or `shlex.quote`d (paths, argv):
no spec value can add a line or a command to the script.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any

from spx.errors import SpxError
from spx.rundir import RunDir, Step

SCRIPT = "slurm.sbatch"
OUTPUT = "slurm-%j.out"
RDZV_PORT_BASE = 29400

# sbatch directive values: no whitespace, quotes, newlines or shell metacharacters (sbatch reads `#SBATCH` lines
# itself, but a newline would start a new script line, so refuse anything outside these sets).
_VALUE_RULES: dict[str, tuple[str, str]] = {
    "partition": (r"[A-Za-z0-9_.,-]+", "letters, digits and . _ - , (comma-separated partitions)"),
    "account": (r"[A-Za-z0-9_.-]+", "letters, digits and . _ -"),
    "qos": (r"[A-Za-z0-9_.,-]+", "letters, digits and . _ - ,"),
    "time": (r"(\d+(-\d{1,2})?(:\d{1,2}){0,2}|UNLIMITED|INFINITE|unlimited|infinite)",
             "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"),
    "mem": (r"\d+[KMGTkmgt]?", "a number with an optional K/M/G/T suffix, e.g. 16G"),
    "constraint": (r"[A-Za-z0-9_.,:&|\[\]*()!-]+", "feature names joined with & | , [ ] * ( ) !"),
}
_EXTRA_RULE = re.compile(r"--[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.,:@/+%=*-]+)?")
# options spx itself relies on: the job must write its log into the run dir and run there
_RESERVED = {"--output", "--error", "--chdir", "--open-mode", "--wrap", "--parsable", "--array", "--signal",
             "--requeue", "--no-requeue", "--nodes", "--ntasks-per-node", "--ntasks", "--cpus-per-task"}
# Slurm job states, grouped the way `spx status` shows them
_ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
           "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
_FAILED = {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"}


# ------------------------------------------------------------------ spec -> script
def _load_spec(rd: RunDir):
    return rd.spec


def _check_value(key: str, value: str, where: str) -> str:
    pattern, allowed = _VALUE_RULES[key]
    if not re.fullmatch(pattern, value):
        raise SpxError(f"resources.slurm.{key}: {value!r} is not a valid Slurm {key}", where=where,
                       hint=f"use {allowed}")
    return value


def _check_extra(item: str, where: str) -> str:
    if not isinstance(item, str) or not _EXTRA_RULE.fullmatch(item):
        raise SpxError(f"resources.slurm.extra: {item!r} is not a single '--option' or '--option=value' item",
                       where=where, hint="one sbatch option per list item, e.g. '--exclusive' or '--gres=gpu:a100:4' "
                                         "(no spaces, quotes, newlines or shell characters)")
    if item.split("=", 1)[0] in _RESERVED:
        raise SpxError(f"resources.slurm.extra: {item.split('=', 1)[0]} is set by spx itself", where=where,
                       hint="use the resources.* / resources.slurm.* keys (nodes, devices, cpus_per_task, requeue, "
                            "signal_seconds); spx writes the log to RUN_DIR/slurm-%j.out")
    return item


def sbatch_options(spec, rd: RunDir) -> list[str]:
    """The `#SBATCH` options of the run, in order (validated)."""
    res = spec.resources
    sl = res.slurm
    where = f"{rd / 'spec.yaml'}"
    opts = [f"--job-name=spx-{spec.name}-{rd.backend}",
            f"--output={rd / OUTPUT}",
            "--open-mode=append",  # a requeued job appends to the same log
            f"--chdir={rd.path}",
            f"--nodes={res.nodes}",
            f"--ntasks-per-node={res.devices}",
            f"--cpus-per-task={sl.cpus_per_task}"]
    for path in (rd.path,):
        if any(c.isspace() for c in str(path)) or any(c in str(path) for c in "\"'\\"):
            raise SpxError(f"run dir path {str(path)!r} has spaces or quotes, which sbatch directives cannot carry",
                           hint="choose a --run-dir without spaces or quotes")
    gpus = sl.gpus_per_node
    if gpus is None and res.accelerator == "gpu":
        gpus = res.devices
    if gpus:
        opts.append(f"--gpus-per-node={int(gpus)}")
    if sl.mem:
        opts.append(f"--mem={_check_value('mem', sl.mem, where)}")
    opts.append(f"--time={_check_value('time', sl.time, where)}")
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(sl, key)
        if value:
            opts.append(f"--{key}={_check_value(key, value, where)}")
    if sl.requeue:
        opts += ["--requeue", f"--signal=B:USR1@{int(sl.signal_seconds)}"]
    else:
        opts.append("--no-requeue")
    opts += [_check_extra(x, where) for x in sl.extra]
    return opts


def render_script(rd: RunDir, python: str | None = None) -> str:
    """The batch script text for run dir `rd` (see the module docstring)."""
    spec = _load_spec(rd)
    python = python or sys.executable
    run_dir = shlex.quote(str(rd.path))
    lines = ["#!/bin/bash",
             f"# spx: Slurm batch script of this run dir (resubmit by hand with: sbatch {run_dir}/{SCRIPT})"]
    lines += [f"#SBATCH {opt}" for opt in sbatch_options(spec, rd)]
    lines += ["set -uo pipefail",
              f"cd {run_dir}",
              'echo "spx: job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} on $(hostname) at $(date -Is)"']
    if spec.resources.slurm.requeue:
        lines += ["# Slurm sends USR1 signal_seconds before the time limit (or on preemption): requeue the job;",
                  "# the requeued job runs `spx exec` again, which skips finished steps and resumes training.",
                  "requeue_job() {",
                  '  echo "spx: USR1 received (time limit near or preemption): requeueing job ${SLURM_JOB_ID}"',
                  '  scontrol requeue "${SLURM_JOB_ID}"',
                  "}",
                  "trap requeue_job USR1"]
    lines += [f"{shlex.quote(python)} -m spx exec {run_dir} &",
              "child=$!",
              "# `wait` returns early when a trapped signal arrives; keep waiting for the run itself",
              'while true; do wait "${child}"; rc=$?; kill -0 "${child}" 2>/dev/null || break; done',
              'echo "spx: spx exec exited with ${rc} at $(date -Is)"',
              'exit "${rc}"',
              ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ submit
def _sbatch(argv_tail: list[str], where: str) -> str:
    if shutil.which("sbatch") is None:
        raise SpxError("sbatch not found on PATH", where=where,
                       hint="run on a Slurm login node, or use --launcher local (Debian: apt install slurm-client)")
    argv = ["sbatch", "--parsable", *argv_tail]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SpxError(f"sbatch refused the job: {proc.stderr.strip() or proc.stdout.strip()}", where=where,
                       hint="check resources.slurm (partition, account, time, mem) against `sinfo` and your limits")
    out = proc.stdout.strip().splitlines()
    job_id = out[-1].split(";")[0].strip() if out else ""
    if not job_id.isdigit():
        raise SpxError(f"sbatch printed no job id: {proc.stdout!r}", where=where)
    return job_id


def write_script(rd: RunDir) -> str:
    from spx.yamlio import atomic_write_text

    atomic_write_text(rd / SCRIPT, render_script(rd))
    os.chmod(rd / SCRIPT, 0o755)
    return str(rd / SCRIPT)


def submit(rd: RunDir, dependency: str | None = None, quiet: bool = False) -> str:
    """Write the script, submit it, record the job id in status.json; returns the job id."""
    script = write_script(rd)
    tail = ([f"--dependency={dependency}"] if dependency else []) + [script]
    job_id = _sbatch(tail, str(rd.path))
    rd.set_status("submitted", slurm_job_id=job_id, launcher="slurm",
                  submit_command=shlex.join(["sbatch", "--parsable", *tail]),
                  submitted=time.strftime("%Y-%m-%dT%H:%M:%S%z"), error=None, pid=None)
    if not quiet:
        print(f"spx: submitted {rd.path} as Slurm job {job_id}; follow it with `spx logs -f {rd.path}`",
              file=sys.stderr, flush=True)
    return job_id


def submit_bench(cells: list[RunDir], report_argv: list[str], cwd: str | None = None) -> dict[str, Any]:
    """Submit every cell as its own job, then one report job that runs `report_argv` after all of them end
    (afterany: a failed cell still yields a report). Returns {"cells": {run_dir: job_id}, "report": job_id}."""
    if not cells:
        raise SpxError("no bench cells to submit")
    ids = {str(rd.path): submit(rd, quiet=True) for rd in cells}
    cwd = os.path.abspath(cwd or os.getcwd())
    log = os.path.join(cwd, "spx-report-%j.out")
    if any(c.isspace() for c in log):
        raise SpxError(f"report folder {cwd!r} has spaces, which sbatch directives cannot carry",
                       hint="run the bench from a folder without spaces")
    script = "\n".join(["#!/bin/bash",
                        "#SBATCH --job-name=spx-report",
                        f"#SBATCH --output={log}",
                        "#SBATCH --ntasks=1",
                        "#SBATCH --cpus-per-task=1",
                        "set -euo pipefail",
                        f"cd {shlex.quote(cwd)}",
                        shlex.join(report_argv),
                        ""])
    script_path = os.path.join(cwd, "spx-report.sbatch")
    from spx.yamlio import atomic_write_text

    atomic_write_text(script_path, script)
    report = _sbatch([f"--dependency=afterany:{':'.join(ids.values())}", "--kill-on-invalid-dep=no", script_path],
                     cwd)
    return {"cells": ids, "report": report, "report_log": log.replace("%j", report), "report_script": script_path}


# ------------------------------------------------------------------ multi-node launch lines
def master_addr() -> str:
    """First host of the allocation (where rank 0 and the rendezvous store run)."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        raise SpxError("multi-node launch outside a Slurm allocation (no SLURM_JOB_NODELIST)",
                       hint="submit with --launcher slurm, or use resources.nodes=1")
    proc = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SpxError(f"`scontrol show hostnames {nodelist}` failed: {proc.stderr.strip()}")
    return proc.stdout.split()[0]


def rendezvous_port() -> int:
    """A port every node computes the same way from the job id (no extra communication needed)."""
    return RDZV_PORT_BASE + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000


def multinode_command(step: Step, devices: int, nodes: int, addr: str | None = None, port: int | None = None,
                      cpus_per_task: int | None = None) -> list[str]:
    """The argv that runs `step` on `nodes` nodes x `devices` processes from inside the batch script, as the step's
    `launch` says (spx.rundir.Step); no backend is named here.

    tasks     srun starts `devices` tasks per node; the toolkit reads SLURM_PROCID/LOCALID/NTASKS and the nodelist
              (Lightning's SLURMEnvironment: NeMo's trainer.num_nodes/devices come from the rendered config).
    self      the toolkit spawns its own workers: srun starts one task per node running the argv plus the step's
              self_launch["gpu"] on GPUs (e.g. ESPnet's --dist_launcher slurm), or, on CPU, a torchrun agent per node
              running it plus self_launch["cpu"] (ESPnet's external-launcher mode reads RANK/WORLD_SIZE/MASTER_*).
    torchrun  srun starts one torchrun agent per node; c10d rendezvous on the first node (SpeechBrain, spx's ESPnet
              train step).
    """
    addr = addr or master_addr()
    port = port or rendezvous_port()
    cpus = cpus_per_task or int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))
    srun = ["srun", f"--nodes={nodes}", "--kill-on-bad-exit=1", "--export=ALL"]
    one_per_node = [*srun, f"--ntasks={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={cpus * devices}"]
    if step.launch == "tasks":
        return [*srun, f"--ntasks={nodes * devices}", f"--ntasks-per-node={devices}", f"--cpus-per-task={cpus}",
                *step.argv]
    torchrun = [step.argv[0], "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={devices}",
                f"--rdzv_id={os.environ.get('SLURM_JOB_ID', 'spx')}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={addr}:{port}"]
    if step.argv[1:2] != ["-m"]:
        raise SpxError(f"step {step.name!r} must be 'python -m module ...' to run on several nodes")
    if step.launch == "self":
        gpu = bool(os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("SLURM_GPUS_ON_NODE")
                   or os.environ.get("SLURM_GPUS_PER_NODE"))
        fill = {"devices": str(devices), "addr": addr, "port": str(port)}
        extra = [a.format(**fill) for a in step.self_launch.get("gpu" if gpu else "cpu", [])]
        if gpu:
            return [*one_per_node, *step.argv, *extra]
        return [*one_per_node, *torchrun, *step.argv[1:], *extra]
    return [*one_per_node, *torchrun, *step.argv[1:]]


# ------------------------------------------------------------------ query / cancel
def _run(argv: list[str]) -> subprocess.CompletedProcess | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None


def job_state(job_id: str) -> dict[str, str] | None:
    """{state, reason, restarts, exit_code} of a Slurm job from squeue, scontrol or sacct; None when unknown."""
    proc = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T|%r"])
    if proc and proc.returncode == 0 and proc.stdout.strip():
        state, reason = proc.stdout.strip().splitlines()[0].split("|", 1)
        info = {"state": state, "reason": reason}
        info.update({k: v for k, v in (_scontrol(job_id) or {}).items() if k in ("restarts", "exit_code")})
        return info
    info = _scontrol(job_id)
    if info:
        return info
    proc = _run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State,ExitCode"])
    if proc and proc.returncode == 0 and proc.stdout.strip():
        state, exit_code = proc.stdout.strip().splitlines()[0].split("|", 1)
        return {"state": state.split()[0], "reason": "", "exit_code": exit_code}
    return None


def _scontrol(job_id: str) -> dict[str, str] | None:
    proc = _run(["scontrol", "show", "job", "-o", str(job_id)])
    if not proc or proc.returncode != 0 or "JobState=" not in proc.stdout:
        return None
    fields = dict(tok.split("=", 1) for tok in proc.stdout.split() if "=" in tok)
    return {"state": fields.get("JobState", ""), "reason": fields.get("Reason", ""),
            "restarts": fields.get("Restarts", "0"), "exit_code": fields.get("ExitCode", "")}


def refresh_status(rd: RunDir) -> dict[str, Any]:
    """status.json, reconciled with what Slurm says about the run's job (written back when the job ended
    without spx exec recording it: cancelled, killed, timed out)."""
    st = rd.status()
    job_id = st.get("slurm_job_id")
    if not job_id:
        return st
    info = job_state(str(job_id))
    if info is None:
        return {**st, "slurm_state": "UNKNOWN"}
    slurm_state = info["state"].split()[0].rstrip("+")
    view = {**st, "slurm_state": slurm_state, "slurm_reason": info.get("reason", ""),
            "slurm_restarts": info.get("restarts", "0")}
    local = st.get("state")
    # a cancelled or requeued job kills the step first, so spx exec may have recorded a 'failed' step on its way out
    if slurm_state.startswith("CANCELLED") and local not in ("cancelled", "finished"):
        return rd.set_status("cancelled", error=f"Slurm job {job_id} was cancelled",
                             slurm_state=slurm_state) | {"slurm_reason": info.get("reason", "")}
    if slurm_state in _FAILED and local not in ("finished", "failed", "cancelled"):
        return rd.set_status("failed", error=f"Slurm job {job_id} ended {slurm_state}: see {rd / OUTPUT.replace('%j', str(job_id))}",
                             slurm_state=slurm_state)
    if slurm_state == "COMPLETED" and local in ("submitted", "running"):
        # the job script exited 0 but spx exec never wrote 'finished': say so rather than guess
        return rd.set_status("failed", error=f"Slurm job {job_id} completed without spx finishing the run: "
                                             f"see {rd / OUTPUT.replace('%j', str(job_id))}", slurm_state=slurm_state)
    if slurm_state in ("PENDING", "REQUEUED", "REQUEUE_HOLD") and local in ("running", "interrupted", "failed"):
        view["state"] = "requeued"
    return view


def cancel(rd: RunDir, job_id: str, timeout: float = 60) -> dict[str, Any]:
    proc = _run(["scancel", str(job_id)])
    if proc is None:
        raise SpxError("scancel not found on PATH", where=str(rd.path), hint="cancel from a Slurm login node")
    if proc.returncode != 0:
        raise SpxError(f"scancel {job_id} failed: {proc.stderr.strip()}", where=str(rd.path))
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_state(str(job_id))
        if info is None or info["state"] not in _ACTIVE:
            break
        time.sleep(0.5)
    return rd.set_status("cancelled", error=f"cancelled by the user (Slurm job {job_id})")
