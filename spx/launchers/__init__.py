"""Launchers: the same run dir runs as a local process or a Slurm job.

    local     spx runs the steps here, one process each; a step that needs resources.devices processes (its
              `launch` is "torchrun") runs under `torch.distributed.run` (spx.launchers.execute.wrap_command)
    slurm     spx writes run_dir/slurm.sbatch, submits it with sbatch; the job runs `spx exec RUN_DIR`, which
              starts torchrun (or the toolkit's own multi-node form) the same way inside the allocation
"""
from __future__ import annotations

from typing import Any

from spx.rundir import RunDir


def launcher_name(rd: RunDir) -> str:
    return rd.spec.resources.launcher


def launch(rd: RunDir) -> dict[str, Any] | None:
    """Start the run with the launcher its spec names; returns metrics when it ran here."""
    name = launcher_name(rd)
    if name == "slurm":
        from spx.launchers.slurm import submit

        submit(rd)
        return None
    from spx.launchers.local import run_here

    return run_here(rd)
