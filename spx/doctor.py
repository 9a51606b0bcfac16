"""`spx doctor`: what this environment can run. Imports toolkits in a child process (the core stays light)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

from spx.registry import BACKENDS

_PROBE = r"""
import json, importlib, sys, time
out = {}
for name, mod in json.loads(sys.argv[1]):
    t = time.time()
    try:
        importlib.import_module(mod)
        top = importlib.import_module(mod.split(".")[0])
        out[name] = {"ok": True, "version": getattr(top, "__version__", None), "import_seconds": round(time.time() - t, 1)}
    except Exception as e:
        out[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
import torch
gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print("SPX_DOCTOR " + json.dumps({"backends": out, "torch": torch.__version__, "cuda": torch.version.cuda,
      "cuda_available": torch.cuda.is_available(), "gpus": gpus,
      "bf16_supported": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
      "cpu_threads": torch.get_num_threads()}))
"""


def report() -> dict[str, Any]:
    probes = json.dumps([(name, b.probe_module) for name, b in BACKENDS.items()])
    proc = subprocess.run([sys.executable, "-c", _PROBE, probes], capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("SPX_DOCTOR ")), None)
    if line is None:
        data: dict[str, Any] = {"backends": {b: {"ok": False, "error": proc.stderr.strip().splitlines()[-1:]}
                                             for b in BACKENDS}}
    else:
        data = json.loads(line[len("SPX_DOCTOR "):])
    data["tools"] = {t: shutil.which(t) for t in ("sbatch", "squeue", "srun", "ffmpeg", "sox", "espeak-ng")}
    data["python"] = sys.version.split()[0]
    return data


def render(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title="backends")
    for col in ("backend", "imports", "version", "import s"):
        t.add_column(col)
    for name, b in data["backends"].items():
        t.add_row(name, "[green]yes[/]" if b["ok"] else f"[red]no[/] {b.get('error', '')}", str(b.get("version") or ""),
                  str(b.get("import_seconds") or ""))
    c.print(t)
    c.print(f"torch {data.get('torch')} (CUDA {data.get('cuda')}), GPUs: {', '.join(data.get('gpus') or []) or 'none'}, "
            f"bf16: {data.get('bf16_supported')}, threads: {data.get('cpu_threads')}, python {data['python']}")
    c.print("tools: " + ", ".join(f"{k} {'[green]yes[/]' if v else '[red]no[/]'}" for k, v in data["tools"].items()))
