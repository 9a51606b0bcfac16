"""`spx status`, `spx logs`, `spx cancel`: the same for local (torchrun steps included) and Slurm runs.

Local runs record the pid of the spx process running them in status.json; Slurm runs record the job id.
Only click is imported at module level (the CLI imports this module for `spx --help`).
"""
from __future__ import annotations

from pathlib import Path

import click

from spx.cli.common import CONTEXT, echo_json

TERMINAL = ("finished", "failed", "cancelled", "interrupted", "unsupported")  # unsupported: a bench cell never run


def _run_dirs(paths: tuple[Path, ...]) -> list[Path]:
    if paths:
        return list(paths)
    root = Path("runs")
    if not root.is_dir():
        return []
    # runs/NAME/ and bench folders' runs/NAME/ one level deeper
    found = {p.parent for pattern in ("*/status.json", "*/runs/*/status.json") for p in root.glob(pattern)}
    return sorted(found)


def _pid_alive(pid) -> bool:
    import os

    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie or a recycled pid is not our run: the process must still be an spx process
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ")
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except OSError:
        return True
    return b"spx" in cmdline and ") Z " not in stat


def current_status(rd) -> dict:
    """status.json, refreshed from Slurm (job id) or the process table (pid) for runs that are not done."""
    st = rd.status()
    if st.get("slurm_job_id"):
        from spx.launchers.slurm import refresh_status

        return refresh_status(rd)
    if st.get("state") == "running" and st.get("pid") and not _pid_alive(st.get("pid")):
        # the process died without recording why (killed): say so instead of 'running' forever
        return rd.set_status("failed", error=f"spx process {st.get('pid')} is gone (killed?); "
                                             f"resume with: spx run --resume {rd.path}")
    return st


def _launcher(rd) -> str:
    if not (rd / "spec.yaml").is_file():
        return "?"
    return rd.spec.resources.launcher


def _row(path: Path) -> dict:
    import json

    from spx.rundir import RunDir

    rd = RunDir(path)
    if not (rd / "status.json").exists():
        from spx.errors import SpxError

        raise SpxError(f"{rd.path} is not an spx run directory (no status.json)", hint="pass a folder made by `spx run`")
    st = current_status(rd)
    metrics = {}
    if (rd / "metrics.json").exists():
        metrics = json.loads((rd / "metrics.json").read_text())
    return {"run_dir": str(rd.path), "backend": st.get("backend") or _safe_backend(rd), "launcher": _launcher(rd),
            "state": st.get("state"), "step": st.get("step"), "slurm_job_id": st.get("slurm_job_id"),
            "slurm_state": st.get("slurm_state"), "slurm_reason": st.get("slurm_reason"), "pid": st.get("pid"), "updated": st.get("updated"),
            "error": st.get("error"), "wer": metrics.get("wer")}


def _safe_backend(rd) -> str | None:
    try:
        return rd.backend
    except FileNotFoundError:
        return None


@click.command(context_settings=CONTEXT)
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def status(run_dirs, as_json):
    """State of RUN_DIRS (default: every run under ./runs), refreshed from Slurm or the process table.

    \b
    Examples:
      spx status
      spx status runs/conformer_ctc_tiny-nemo-20261122-101500 --json
    """
    rows = [_row(p) for p in _run_dirs(run_dirs)]
    if as_json:

        echo_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    table.add_column("run dir", overflow="fold")
    for col in ("backend", "launcher", "state", "step", "job / pid", "WER"):
        table.add_column(col, no_wrap=True)
    table.add_column("updated", overflow="fold")
    colors = {"finished": "green", "failed": "red", "cancelled": "yellow", "interrupted": "yellow",
              "running": "cyan", "submitted": "blue", "requeued": "blue"}
    for r in rows:
        slurm = r["slurm_state"] or "?"
        if slurm == "PENDING" and r["slurm_reason"] not in (None, "", "None"):
            slurm += f": {r['slurm_reason']}"  # e.g. Resources, Priority, PartitionConfig (cannot ever fit)
        job = f"{r['slurm_job_id']} ({slurm})" if r["slurm_job_id"] else str(r["pid"] or "")
        state = f"[{colors.get(r['state'], 'white')}]{r['state']}[/]"
        wer = f"{r['wer']:.3f}" if isinstance(r["wer"], (int, float)) else ""
        table.add_row(_short(r["run_dir"]), r["backend"] or "", r["launcher"], state, r["step"] or "", job, wer,
                      r["updated"] or "")
    console = Console()
    if not console.is_terminal:  # piped into a file or grep: do not cut paths to 80 columns
        console = Console(width=max(console.width, 220))
    if not rows:
        console.print("no runs found (pass run dirs, or run from the folder holding ./runs)")
        return
    console.print(table)
    for r in rows:
        if r["state"] in ("failed", "cancelled") and r["error"]:
            console.print(f"[dim]{r['run_dir']}: {r['error']}[/]", highlight=False)


def _short(path: str) -> str:
    """A run dir relative to the current folder when it is under it (tables stay narrow)."""
    try:
        return str(Path(path).relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def _log_for(rd, st: dict, step: str | None) -> Path:
    from spx.errors import SpxError

    steps = rd.read_steps()
    names = [s.name for s in steps]
    if step is not None:
        if step not in names:
            raise SpxError(f"run {rd.path} has no step {step!r}", hint=f"steps: {', '.join(names)}")
        return rd / next(s for s in steps if s.name == step).log_path
    if st.get("step") in names:
        return rd / next(s for s in steps if s.name == st["step"]).log_path
    # not running a step: the last step that wrote a log, else the Slurm job's own output
    for s in reversed(steps):
        if (rd / s.log_path).exists():
            return rd / s.log_path
    if st.get("slurm_job_id"):
        return rd / f"slurm-{st['slurm_job_id']}.out"
    return rd / steps[0].log_path


@click.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (across steps) until the run ends.")
@click.option("--step", "step_name", help="Show this step's log instead of the current step's.")
@click.option("-n", "--lines", default=40, show_default=True, help="How many last lines to print first.")
def logs(run_dir, follow, step_name, lines):
    """Print the log of RUN_DIR's current step (or --step NAME); -f follows it until the run ends.

    \b
    Examples:
      spx logs runs/conformer_ctc_tiny-espnet-20261122-101500
      spx logs -f runs/conformer_ctc_tiny-nemo-20261122-101500
      spx logs --step train runs/conformer_ctc_tiny-speechbrain-20261122-101500
    """
    import time
    from collections import deque

    from spx.rundir import RunDir

    rd = RunDir(run_dir)
    st = current_status(rd)
    path = _log_for(rd, st, step_name)
    if path.exists():
        with path.open(errors="replace") as fh:
            for line in deque(fh, maxlen=lines):
                click.echo(line, nl=False)
    elif not follow:
        click.echo(f"(no log yet: {path}; state: {st.get('state')})", err=True)
        return
    if not follow:
        return
    pos = path.stat().st_size if path.exists() else 0
    last_check = 0.0
    while True:
        if path.exists() and path.stat().st_size > pos:
            with path.open(errors="replace") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
            click.echo(chunk, nl=False)
            continue
        if time.time() - last_check > 2:
            last_check = time.time()
            st = current_status(rd)
            if st.get("state") in TERMINAL:
                break
            if step_name is None:
                nxt = _log_for(rd, st, None)
                if nxt != path:
                    click.echo(f"\n# spx logs: now {nxt}", err=True)
                    path, pos = nxt, 0
                    continue
        time.sleep(0.5)
    click.echo(f"# spx logs: run {st.get('state')}" + (f": {st['error']}" if st.get("error") else ""), err=True)


@click.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the run to stop.")
def cancel(run_dir, timeout):
    """Stop RUN_DIR: scancel its Slurm job, or interrupt its local process group; state becomes 'cancelled'.

    \b
    Example: spx cancel runs/conformer_ctc_tiny-nemo-20261122-101500
    """
    import os
    import signal
    import time

    from spx.errors import SpxError
    from spx.rundir import RunDir

    rd = RunDir(run_dir)
    rd.read_steps()  # a clear error when RUN_DIR is not a run dir
    st = current_status(rd)
    if st.get("state") in ("finished", "failed", "cancelled"):
        raise SpxError(f"run {rd.path} is already {st.get('state')}; nothing to cancel")
    if st.get("slurm_job_id"):
        from spx.launchers.slurm import cancel as slurm_cancel

        slurm_cancel(rd, str(st["slurm_job_id"]), timeout=timeout)
        click.echo(f"cancelled Slurm job {st['slurm_job_id']} of {rd.path}")
        return
    pid = st.get("pid")
    if not pid or not _pid_alive(pid):
        raise SpxError(f"run {rd.path} has no live process to cancel (state: {st.get('state')}, pid: {pid})",
                       hint="it may have ended already: see `spx status`")
    pid = int(pid)
    # the run's process and its children (torchrun workers) share its process group when it leads one
    pgid = os.getpgid(pid)
    if pgid == pid:
        os.killpg(pgid, signal.SIGINT)
    else:
        os.kill(pid, signal.SIGINT)
    deadline = time.time() + timeout
    while time.time() < deadline and _pid_alive(pid):
        time.sleep(0.3)
    if _pid_alive(pid):
        raise SpxError(f"process {pid} of {rd.path} did not stop within {timeout:.0f} s after SIGINT",
                       hint=f"kill it by hand: kill -TERM {pid}")
    rd.set_status("cancelled", error=f"cancelled by the user (pid {pid})")
    click.echo(f"cancelled {rd.path} (pid {pid})")
