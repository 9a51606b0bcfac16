"""Run a run dir's steps in order, here, in this allocation (a shell, a torchrun host, a Slurm job).

Completed steps are skipped, so running a run dir again resumes it: each training step is rendered
with the toolkit's own resume switched on (NeMo exp_manager resume_if_exists, SpeechBrain
Checkpointer.recover_if_possible, ESPnet --resume true).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from typing import Callable

from spx.errors import RunFailed
from spx.rundir import RunDir, Step

ProgressFn = Callable[[str, dict], None]


def world_size(rd: RunDir) -> tuple[int, int]:
    return rd.spec.resources.devices, rd.spec.resources.nodes


def wrap_command(step: Step, devices: int, nodes: int) -> list[str]:
    """The argv that actually runs: torchrun and tasks steps get one process per device (torchrun on one node)."""
    if nodes > 1 and step.launch != "single" and os.environ.get("SLURM_JOB_ID"):
        # multi-node inside a Slurm job: the form the step's launch mode names (torchrun rendezvous, srun tasks, self)
        from spx.launchers.slurm import multinode_command

        return multinode_command(step, devices, nodes)
    if step.launch not in ("torchrun", "tasks") or devices * nodes == 1:
        return list(step.argv)
    if step.argv[:2] != [step.argv[0], "-m"]:
        raise ValueError(f"torchrun step {step.name!r} must be 'python -m module ...'")
    return [step.argv[0], "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
            "--nnodes=1", *step.argv[1:]]


def _print_progress(step: str, fields: dict) -> None:
    print(f"[{step}] " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


def execute(rd: RunDir, on_progress: ProgressFn | None = None, echo: bool = False, until_timed: bool = False) -> bool:
    """Run every not-yet-completed step; raise RunFailed naming the step and its log on failure. With until_timed,
    stop before the first step that measures speed (state 'waiting'). Returns whether every step is done."""
    on_progress = on_progress or _print_progress
    steps = rd.read_steps()
    done = set(rd.completed_steps())
    devices, nodes = world_size(rd)
    started = time.time()
    rd.set_status("running", started=rd.status().get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  slurm_job_id=os.environ.get("SLURM_JOB_ID"), pid=os.getpid())
    for step in steps:
        if step.name in done:
            continue
        if until_timed and step.timed:
            rd.set_status("waiting", step=step.name, exec_seconds=round(time.time() - started, 1))
            return False
        argv = wrap_command(step, devices, nodes)
        rd.set_status("running", step=step.name)
        log_path = rd / step.log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **step.env, "PYTHONUNBUFFERED": "1", "SPX_RUN_DIR": str(rd.path)}
        tail: deque[str] = deque(maxlen=30)
        with open(log_path, "a", encoding="utf-8", buffering=1) as log:  # line-buffered: a kill -9 keeps the log
            log.write(f"\n# spx: step {step.name} started {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n")
            log.flush()
            proc = subprocess.Popen(argv, cwd=rd.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", start_new_session=True)
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    tail.append(line.rstrip("\n"))
                    if line.startswith("SPX_PROGRESS "):
                        try:
                            on_progress(step.name, json.loads(line[len("SPX_PROGRESS "):]))
                        except json.JSONDecodeError:
                            pass
                    elif echo:
                        print(line, end="", flush=True)
                rc = proc.wait()
            except KeyboardInterrupt:
                _stop(proc)
                log.write(f"# spx: interrupted during step {step.name}\n")
                rd.set_status("interrupted", step=step.name, error=f"interrupted during step {step.name}")
                raise
            except BaseException:
                _stop(proc)
                raise
        if rc != 0:
            last = next((l for l in reversed(tail) if l.strip() and not l.startswith("SPX_PROGRESS")), "")
            msg = f"step {step.name!r} failed (exit {rc}): {last.strip()[:300]}"
            rd.set_status("failed", step=step.name, error=msg, log=str(log_path))
            raise RunFailed(msg, hint=f"full log: {log_path}", where=str(rd.path))
        done.add(step.name)
        rd.set_status("running", completed_steps=[s.name for s in steps if s.name in done])
    rd.set_status("running", step=None, exec_seconds=round(time.time() - started, 1))
    return True


def _stop(proc: subprocess.Popen) -> None:
    """Stop the child's whole process group (torchrun and dataloader workers included)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def python() -> str:
    return sys.executable
