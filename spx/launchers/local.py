"""Run a run dir in this process's allocation with a live progress view, then collect and score it."""
from __future__ import annotations

import time
from typing import Any

from spx.errors import SpxError
from spx.launchers.execute import execute
from spx.rundir import RunDir


def run_here(rd: RunDir, quiet: bool = False) -> dict[str, Any]:
    from rich.console import Console

    from spx.runner import finalize_run

    console = Console(stderr=True)
    t0 = time.time()
    state: dict[str, Any] = {}

    def on_progress(step: str, fields: dict) -> None:
        state.update(fields)
        if quiet:
            return
        parts = [f"[bold]{rd.backend}[/] {step}"]
        for key in ("epoch", "epochs", "step", "train_loss", "valid_loss", "valid_wer", "eta_s", "phase", "repeat", "seconds"):
            if key in fields:
                v = fields[key]
                parts.append(f"{key}={v:.4g}" if isinstance(v, float) else f"{key}={v}")
        console.print(" ".join(parts), highlight=False)

    if not quiet:
        console.print(f"[bold]spx[/] running {rd.path} ({rd.backend}); log files in {rd.path}", highlight=False)
    try:
        execute(rd, on_progress)
        metrics = finalize_run(rd)
    except SpxError:
        raise
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if rd.status().get("state") != "failed":
            rd.set_status("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    rd.set_status("finished", wall_seconds=round(time.time() - t0, 1))
    if not quiet:
        summary = ", ".join(f"{k}={metrics[k]:.4g}" for k in ("wer", "cer", "rtfx") if isinstance(metrics.get(k), float))
        console.print(f"[bold green]finished[/] {rd.path}: {summary}", highlight=False)
    return metrics
