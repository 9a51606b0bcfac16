"""`spx export` (core side): check the run, run the backend's export child module into a temp dir, publish the
artefact by renaming it only when the child's parity check passed (nothing half-written)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from spx.adapters import get_adapter
from spx.errors import RunFailed, SpxError
from spx.rundir import RunDir

PARITY_FAILED_EXIT = 3  # the child's exit status when the artefact was written but failed its parity check


def finished_run(path: Path) -> RunDir:
    """The run dir, or an SpxError saying why it cannot be exported or served."""
    if not (path / "spec.yaml").is_file() or not (path / "backend").is_file():
        raise SpxError(f"{path} is not an spx run dir (no spec.yaml/backend)", where=str(path),
                       hint="pass the run dir `spx run` wrote (runs/NAME-BACKEND-TIME)")
    rd = RunDir(path)
    state = rd.status().get("state")
    if state != "finished" or not (path / "train_summary.json").is_file():
        raise SpxError(f"run {path} is not finished (state {state!r})", where=str(path),
                       hint="export a finished run; resume this one with: spx run --resume RUN_DIR")
    return rd


def default_out(rd: RunDir, fmt: str, quantize: str | None) -> Path:
    return rd.path / "export" / (fmt + (f"-{quantize}" if quantize else ""))


def export(run_dir: Path, fmt: str, quantize: str | None = None, opset: int = 17, out: Path | None = None,
           force: bool = False, parity_utterances: int = 0) -> dict[str, Any]:
    rd = finished_run(run_dir)
    module = get_adapter(rd.backend).export_module(rd.spec)
    out = (out or default_out(rd, fmt, quantize)).resolve()
    if out.exists() and not force:
        raise SpxError(f"{out} exists", where="--out", hint="pass --force to replace it, or another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    argv = [sys.executable, "-m", module, str(rd.path.resolve()), str(tmp), "--format", fmt, "--opset", str(opset),
            "--parity-utterances", str(parity_utterances)] + (["--quantize", quantize] if quantize else [])
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log = proc.stdout
        summary = [line for line in log.splitlines() if line.startswith("spx export:")]
        print("\n".join(summary), flush=True)
        if proc.returncode == PARITY_FAILED_EXIT:
            info = json.loads((tmp / "export.json").read_text())
            raise RunFailed(f"the exported model failed its parity check: {info['parity']['summary']} "
                            f"(rule: {info['parity']['rule']}); nothing was written to {out}",
                            hint="report it with the run's backend and spec (spx export --debug shows the log)")
        if proc.returncode != 0:
            raise RunFailed(f"{rd.backend} export failed (exit {proc.returncode}); nothing was written to {out}. "
                            f"Last lines:\n{chr(10).join(log.splitlines()[-15:])}",
                            hint="the export log is above; the run dir is unchanged")
        info = json.loads((tmp / "export.json").read_text())
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["path"] = str(out)
    return info
