"""Run the recipes x backends matrix (one run dir per cell), isolate failures, then write the report."""
from __future__ import annotations

import json
import os
import shlex
import time
import traceback
from pathlib import Path
from typing import Any

from spx.errors import SpxError

SPEC_KEYS_IGNORED = (("data", "train"), ("data", "valid"), ("data", "test"), ("resources", "launcher"))


def default_recipe() -> Path:
    from spx.envinfo import REPO_ROOT

    return REPO_ROOT / "recipes" / "conformer_ctc.yaml"


def cell_path(out: Path, recipe: Path, backend: str) -> Path:
    return out / "runs" / f"{recipe.stem}-{backend}"


def _comparable(spec_data: dict[str, Any]) -> dict[str, Any]:
    """A spec without what render_run rewrites (manifest paths) or what does not change results (launcher)."""
    data = json.loads(json.dumps(spec_data, default=str))
    for path in SPEC_KEYS_IGNORED:
        node = data
        for part in path[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return data


def finished_with_same_spec(cell: Path, spec) -> tuple[bool, str]:
    """(skip?, why) for a cell dir: skip a finished, scored cell whose spec is the one asked for."""
    from spx.rundir import RunDir

    status_file = cell / "status.json"
    if not status_file.exists():
        return False, "new"
    state = json.loads(status_file.read_text()).get("state")
    if state != "finished" or not (cell / "metrics.json").exists():
        return False, f"previous state {state}"
    try:
        old = RunDir(cell).spec.model_dump(mode="json")
    except Exception as exc:  # an unreadable old spec means we cannot trust the old result
        return False, f"its spec.yaml is unreadable ({type(exc).__name__})"
    if _comparable(old) != _comparable(spec.model_dump(mode="json")):
        return False, "spec changed since it ran"
    return True, "finished"


def _record_failure(cell: Path, backend: str, recipe: Path, exc: BaseException) -> None:
    """Leave a failed cell that the report can show: status.json with the error and a log with the traceback."""
    from spx.rundir import RunDir
    from spx.yamlio import atomic_write_text

    cell.mkdir(parents=True, exist_ok=True)
    rd = RunDir(cell)
    log = cell / "bench.log"
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"# spx bench {time.strftime('%Y-%m-%d %H:%M:%S')}: cell {cell.name} failed\n")
        fh.write("".join(traceback.format_exception(exc)))
    if not (cell / "backend").exists():
        atomic_write_text(cell / "backend", backend + "\n")
    st = rd.status()
    if st.get("state") != "failed":
        msg = exc.one_line() if isinstance(exc, SpxError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, SpxError) and exc.hint:
            msg += f" (hint: {exc.hint})"
        rd.set_status("failed", error=msg, log=str(log), recipe=str(recipe), backend=backend)
    elif not st.get("log"):
        rd.set_status("failed", log=str(log))


def refusal(spec, backend: str) -> str | None:
    """Why `backend` cannot run `spec` (its adapter's supports() refused it, before anything is written), or None.
    The bench marks such a cell unsupported, with this reason, instead of running it into a failure."""
    from spx.adapters import get_adapter

    try:
        get_adapter(backend).supports(spec)
    except SpxError as exc:
        return exc.one_line() + (f" (hint: {exc.hint})" if exc.hint else "")
    return None


def check_some_backend_runs(specs: list[tuple[Path, Any]], backends: list[str]) -> dict[tuple[Path, str], str]:
    """{(recipe, backend): reason} of the cells whose backend refuses the recipe; a recipe that every backend of the
    matrix refuses is one SpxError naming each reason (nothing would run for it: bad input, or the wrong backends)."""
    refused: dict[tuple[Path, str], str] = {}
    for recipe, spec in specs:
        for backend in backends:
            why = refusal(spec, backend)
            if why is not None:
                refused[(recipe, backend)] = why
        if all((recipe, b) in refused for b in backends):
            raise SpxError(f"{recipe}: no backend of the bench runs it: "
                           + "; ".join(f"{b}: {refused[(recipe, b)]}" for b in backends),
                           hint="fix the recipe, or bench it on backends that have its task and model family "
                                "(--backends; without it spx picks them)")
    return refused


def record_unsupported(cell: Path, backend: str, recipe: Path, spec, reason: str) -> None:
    """An unsupported cell on disk, for the report (also --report-only): its spec.yaml (the task the report files it
    under), backend and status.json state unsupported with the reason. What an earlier run left there is replaced,
    as a re-run of a changed cell replaces it."""
    import shutil

    from spx.rundir import RunDir
    from spx.spec import spec_to_yaml
    from spx.yamlio import atomic_write_text

    if cell.exists():
        shutil.rmtree(cell)
    cell.mkdir(parents=True)
    atomic_write_text(cell / "spec.yaml", spec_to_yaml(spec))
    atomic_write_text(cell / "backend", backend + "\n")
    RunDir(cell).set_status("unsupported", reason=reason, recipe=str(recipe), backend=backend)


class MatrixView:
    """Live table of the matrix: state, step, latest progress line of each cell (read from its files)."""

    def __init__(self, cells: list[tuple[str, str, Path]]):
        self.cells = cells
        self.started: dict[Path, float] = {}
        self.note: dict[Path, str] = {}

    def _progress(self, cell: Path, step: str | None) -> str:
        if not step:
            return ""
        try:
            steps = json.loads((cell / "steps.json").read_text())
            log = cell / next((s.get("log") or f"logs/{s['name']}.log") for s in steps if s["name"] == step)
            with log.open("rb") as fh:
                fh.seek(max(0, log.stat().st_size - 8192))
                tail = fh.read().decode("utf-8", "replace").splitlines()
        except (OSError, StopIteration, json.JSONDecodeError, KeyError):
            return ""
        for line in reversed(tail):
            if line.startswith("SPX_PROGRESS "):
                try:
                    f = json.loads(line[len("SPX_PROGRESS "):])
                except json.JSONDecodeError:
                    return ""
                keys = ("epoch", "epochs", "step", "train_loss", "valid_loss", "phase", "repeat", "of")
                return " ".join(f"{k}={f[k]:.3g}" if isinstance(f[k], float) else f"{k}={f[k]}" for k in keys if k in f)
        return ""

    def __rich__(self):
        from rich.table import Table

        t = Table(title="spx bench", expand=False)
        for col in ("cell", "state", "step", "progress", "elapsed"):
            t.add_column(col)
        for recipe, backend, cell in self.cells:
            try:
                st = json.loads((cell / "status.json").read_text())
            except (OSError, json.JSONDecodeError):
                st = {}
            state = self.note.get(cell) or st.get("state", "pending")
            color = {"finished": "green", "failed": "red", "running": "yellow", "waiting": "blue",
                     "skipped": "cyan", "unsupported": "magenta"}.get(state, "white")
            elapsed = f"{time.time() - self.started[cell]:.0f}s" if cell in self.started and state == "running" else ""
            step = st.get("step") if state in ("running", "waiting") else ""
            t.add_row(f"{recipe}-{backend}", f"[{color}]{state}[/]", step or "", self._progress(cell, step), elapsed)
        return t


def backends_for(specs: list[Any]) -> list[str]:
    """The registry's backends that have every spec's task and model family (`spx bench` without --backends)."""
    from spx.adapters import get_adapter
    from spx.adapters.base import unsupported
    from spx.registry import BACKEND_NAMES

    names = [b for b in BACKEND_NAMES if all(unsupported(s, b, get_adapter(b).tasks) is None for s in specs)]
    if not names:
        raise SpxError("no backend has every recipe's task and model family",
                       hint="bench recipes of one family together, or name --backends")
    return names


def run_bench(recipes: list[Path], backends: list[str] | None, out: Path, force: bool = False, launcher: str = "local",
              report_only: bool = False, overrides: list[str] | None = None, seed: int = 0,
              argv: list[str] | None = None, jobs: int | None = None,
              dry_run: bool = False, variants: list[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Run the matrix and write the report; returns (results, names of the cells that failed in this call).
    jobs: cells trained side by side (None: parallel_cells); the timed steps always run one cell at a time.
    dry_run: render the cells that would run and print their native commands; run nothing, write no report.
    variants: besides "torch" (the cell itself), exports decoded on the deploy engine (spx.bench.variants)."""
    from rich.console import Console

    console = Console(stderr=True)
    out = out.resolve()
    command = "spx " + shlex.join((argv or [])[1:]) if argv else "spx bench"
    if report_only:
        if recipes:
            raise SpxError("--report-only takes no RECIPES: it reports every cell in --out",
                           hint=f"spx bench --report-only --out {out}")
        return write_bench_report(out, seed, [command], console), []

    from spx.spec import load_spec

    recipes = recipes or [default_recipe()]
    extra = [f"resources.launcher={launcher}"] if launcher == "slurm" else []
    specs = [(r, load_spec(r, list(overrides or []) + extra)) for r in recipes]  # all validated before anything runs
    variants = variants or ["torch"]
    backends = backends or backends_for([spec for _, spec in specs])
    if variants != ["torch"]:
        from spx.bench.variants import check_tasks

        check_tasks([spec for _, spec in specs], variants, backends)
    stems = [r.stem for r in recipes]
    if len(set(stems)) != len(stems):
        raise SpxError(f"two recipes share a file name ({', '.join(stems)}): cells are named <recipe>-<backend>",
                       hint="rename one of the recipe files")
    refused = check_some_backend_runs(specs, backends)
    matrix = [(r, spec, b, cell_path(out, r, b)) for r, spec in specs for b in backends if (r, b) not in refused]
    (out / "runs").mkdir(parents=True, exist_ok=True)

    if dry_run:
        for (recipe, backend), why in refused.items():
            console.print(f"{cell_path(out, recipe, backend).name}: unsupported, would not run: {why}", highlight=False)
        return _render_only(matrix, force, console), []
    for (recipe, backend), why in refused.items():  # not failures: the report shows them, the exit status ignores them
        record_unsupported(cell_path(out, recipe, backend), backend, recipe, dict(specs)[recipe], why)
        console.log(f"{cell_path(out, recipe, backend).name}: unsupported: {why}")
    if launcher == "slurm":
        return _submit_slurm(matrix, out, force, seed, console), []

    from rich.live import Live

    from spx.launchers.local import run_here
    from spx.rundir import RunDir
    from spx.runner import render_run

    if jobs is None:
        jobs = parallel_cells([spec for _, spec, _, _ in matrix])
        command += f" --jobs {jobs}"  # the recorded command says what ran, whatever machine re-runs it
    view = MatrixView([(r.stem, b, c) for r, _, b, c in matrix]
                      + [(r.stem, b, cell_path(out, r, b)) for r, b in refused])
    t_all = time.time()
    failed_now: list[str] = []

    def failed(cell: Path, backend: str, recipe: Path, exc: BaseException) -> None:
        _record_failure(cell, backend, recipe, exc)
        failed_now.append(cell.name)
        st = RunDir(cell).status()
        console.log(f"[red]{cell.name}: failed[/]: {st.get('error')} (log: {st.get('log')})")

    with Live(view, console=console, refresh_per_second=2, transient=False):
        todo = []
        for recipe, spec, backend, cell in matrix:
            skip, why = (False, "--force") if force else finished_with_same_spec(cell, spec)
            if skip:
                view.note[cell] = "skipped"
                console.log(f"{cell.name}: finished earlier, skipped (--force re-runs it)")
                continue
            console.log(f"{cell.name}: running ({why})")
            try:
                todo.append((recipe, backend, cell, render_run(spec, backend, cell, force=True)))
            except Exception as exc:  # one cell failing never loses the others: record it, go on
                failed(cell, backend, recipe, exc)
        try:
            if jobs > 1 and len(todo) > 1:
                console.log(f"training {min(jobs, len(todo))} cells side by side; each speed measurement runs alone")
                todo = _train_side_by_side(todo, jobs, view, console, failed)
            for recipe, backend, cell, rd in todo:  # the remaining steps (all of them when jobs == 1), one cell at a time
                view.started[cell] = time.time()
                try:
                    run_here(rd, quiet=True)
                    console.log(f"{cell.name}: finished in {time.time() - view.started[cell]:.0f}s")
                except Exception as exc:  # one cell failing never loses the others: record it, go on
                    failed(cell, backend, recipe, exc)
        except KeyboardInterrupt:
            console.log("interrupted; writing the report of what finished")
            write_bench_report(out, seed, [command], console)
            raise
    console.log(f"matrix done in {time.time() - t_all:.0f}s")
    if variants != ["torch"]:
        from spx.bench.variants import run_variants

        for _, _, backend, cell in matrix:
            if RunDir(cell).status().get("state") == "finished" and (cell / "metrics.json").exists():
                run_variants(cell, variants, console)
    return write_bench_report(out, seed, [command], console), failed_now


def gpu_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU to its processes (checked without importing torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


# Trainings per core that `spx bench` runs at once by default. Two, not one: the OS then shares the cores among
# cells of unequal length, where one per core leaves a core idle once the shortest cell is done (the default
# bench on 2 cores, 3 cells at 1 thread: 534 s with 3 at once, 622 s with 2; results identical).
CELLS_PER_CORE = 2


def parallel_cells(specs: list) -> int:
    """How many cells `spx bench` trains side by side when --jobs is not given: on CPU, with resources.threads
    set, up to CELLS_PER_CORE per core; otherwise (a GPU, several processes per cell, or threads unset, where torch
    takes every core) one at a time."""
    cores = os.cpu_count() or 1
    for spec in specs:
        r = spec.resources
        on_gpu = r.accelerator == "gpu" or (r.accelerator == "auto" and gpu_visible())
        if r.threads is None or on_gpu or r.devices * r.nodes > 1:
            return 1
    threads = max(spec.resources.threads for spec in specs)
    return max(1, min(len(specs), CELLS_PER_CORE * cores // threads))


def _train_side_by_side(todo: list, jobs: int, view: "MatrixView", console, failed) -> list:
    """Run each cell's steps up to its first timed one (`spx exec --until-timed`), `jobs` cells at a time, as child
    processes; returns the cells that got there, in matrix order. Failures are recorded through `failed`."""
    import signal
    import subprocess
    import sys

    queue, running, ready = list(todo), {}, []
    try:
        while queue or running:
            while queue and len(running) < jobs:
                item = queue.pop(0)
                cell = item[2]
                log_path = cell / "logs" / "bench_exec.log"
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log = log_path.open("a", encoding="utf-8")
                view.started[cell] = time.time()
                proc = subprocess.Popen([sys.executable, "-m", "spx", "exec", "--until-timed", str(cell)],
                                        stdout=log, stderr=subprocess.STDOUT)
                running[proc] = (item, log, log_path)
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                (recipe, backend, cell, rd), log, log_path = running.pop(proc)
                log.close()
                if proc.returncode == 0:
                    console.log(f"{cell.name}: trained in {time.time() - view.started[cell]:.0f}s")
                    ready.append((recipe, backend, cell, rd))
                else:
                    failed(cell, backend, recipe, RuntimeError(
                        f"`spx exec --until-timed` exited with {proc.returncode}; see {log_path}"))
    except KeyboardInterrupt:
        # the children share the terminal's process group and got the same Ctrl-C; each stops its step
        for proc, (_, log, _) in running.items():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
        raise
    order = [item[2] for item in todo]
    return sorted(ready, key=lambda item: order.index(item[2]))


def _render_only(matrix, force: bool, console) -> dict[str, Any]:
    """`spx bench --dry-run`: each cell's run dir rendered as the bench would, its native commands printed."""
    from spx.runner import render_run

    for _, spec, backend, cell in matrix:
        skip, why = (False, "--force") if force else finished_with_same_spec(cell, spec)
        if skip:
            console.print(f"{cell.name}: finished earlier, would be skipped (--force re-runs it)", highlight=False)
            continue
        if cell.exists() and any(cell.iterdir()):  # a dry run never overwrites what an earlier run left
            console.print(f"{cell.name}: would be re-run ({why}); left as it is", highlight=False)
            continue
        rd = render_run(spec, backend, cell)
        console.print(f"rendered {rd.path} ({why})", highlight=False)
        print((rd / "command.sh").read_text(), flush=True)
    return {"rows": []}


def _submit_slurm(matrix, out: Path, force: bool, seed: int, console) -> dict[str, Any]:
    import sys

    from spx.runner import render_run

    cells = []
    for recipe, spec, backend, cell in matrix:
        skip, _ = (False, "") if force else finished_with_same_spec(cell, spec)
        if skip:
            continue
        try:
            cells.append(render_run(spec, backend, cell, force=True))
        except Exception as exc:
            _record_failure(cell, backend, recipe, exc)
    if not cells:
        console.print("every cell finished earlier: nothing to submit; writing the report here", highlight=False)
        return write_bench_report(out, seed, ["spx bench --launcher slurm"], console)
    report_argv = [sys.executable, "-m", "spx", "bench", "--report-only", "--out", str(out), "--seed", str(seed)]
    from spx.launchers.slurm import submit_bench  # imported only when asked for

    info = submit_bench(cells, report_argv, cwd=str(out))
    console.print(f"submitted {len(cells)} cells to Slurm (jobs {', '.join(info['cells'].values())}); report job "
                  f"{info['report']} writes {out}/report.html when they end (log {info['report_log']})", highlight=False)
    return {"rows": [], "slurm": info}


def write_bench_report(out: Path, seed: int, commands: list[str], console=None) -> dict[str, Any]:
    from spx.bench.report import write_report
    from spx.bench.results import build_results, discover_cells

    cells = discover_cells(out)
    if not cells:
        raise SpxError(f"{out}/runs has no cells", hint="run `spx bench --out DIR` first")
    prior = out / "results.json"
    if prior.exists():  # keep the commands that made earlier cells of this folder
        try:
            old = json.loads(prior.read_text()).get("reproducibility", {}).get("commands", [])
            commands = [c for c in old if c not in commands] + commands
        except (json.JSONDecodeError, AttributeError):
            pass
    res = build_results(cells, seed=seed, commands=commands)
    files = write_report(res, out)
    if console is not None:
        print_summary(res, console)
        console.print("report: " + ", ".join(str(p) for p in files.values()), highlight=False)
    return res


def render_from_json(path: Path, out: Path) -> dict[str, Any]:
    from rich.console import Console

    from spx.bench.report import write_report
    from spx.bench.results import load_results

    res = load_results(path)
    same = out.resolve() == path.resolve().parent
    files = write_report(res, out, write_json=not same)
    console = Console(stderr=True)
    print_summary(res, console)
    console.print("report: " + ", ".join(str(p) for p in files.values()), highlight=False)
    return res


def print_summary(res: dict[str, Any], console) -> None:
    from rich import box
    from rich.table import Table

    from spx.bench.report import params_str, pct

    from spx.bench.report import failed_rows, unsupported_rows

    rows = res["rows"]
    failed = failed_rows(res)
    tts_rows = [r for r in rows if r.get("task") == "tts" and r not in failed]
    cls_rows = [r for r in rows if r.get("task") == "classification" and r not in failed]
    asr_rows = [r for r in rows if r not in tts_rows and r not in cls_rows]
    if asr_rows:
        t = Table(title="spx bench results", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("recipe", "backend", "WER % [95% CI]", "CER %", "RTFx", "train s", "params"):
            t.add_column(col, justify="left" if col in ("recipe", "backend") else "right", no_wrap=True)
        for r in asr_rows:
            if "error" in r or "unsupported" in r:
                t.add_row(r["recipe"], r["backend"], f"[{'red' if 'error' in r else 'magenta'}]{r['state']}[/]", "—",
                          "—", "—", "—")
                continue
            ci = r.get("wer_ci")
            s = r.get("speed") or {}
            t.add_row(r["recipe"], r["backend"], pct(r.get("wer")) + (f" [{pct(ci[0])}, {pct(ci[1])}]" if ci else ""),
                      pct(r.get("cer")), f"{s['rtfx']:.1f}" if s else "—",
                      f"{r['train_wall_s']:.0f}" if r.get("train_wall_s") else "—", params_str(r.get("params")))
        console.print(t)
    if tts_rows:
        t = Table(title="spx bench TTS results", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("recipe", "backend", "vocoder", "DNSMOS OVRL", "DistillMOS", "judge WER %", "MCD dB", "synth RTF", "train s"):
            t.add_column(col, justify="left" if col in ("recipe", "backend", "vocoder") else "right", no_wrap=True)

        def num(r: dict[str, Any], key: str) -> str:
            v = (r.get("tts") or {}).get(key, {}).get("value")
            return "—" if v is None else (pct(v) if key == "wer" else f"{v:.2f}")

        for r in tts_rows:
            if "unsupported" in r:
                t.add_row(r["recipe"], r["backend"], f"[magenta]{r['state']}[/]", *["—"] * 6)
                continue
            rtf = r.get("synthesis_rtf")
            t.add_row(r["recipe"], r["backend"], str(r.get("vocoder") or "—"), num(r, "dnsmos_ovrl"), num(r, "distillmos"),
                      num(r, "wer"), num(r, "mcd"), "—" if rtf is None else f"{rtf:.3f}",
                      f"{r['train_wall_s']:.0f}" if r.get("train_wall_s") else "—")
        console.print(t)
    if cls_rows:
        from spx.bench.report import accuracy_cell, num as num_str

        t = Table(title="spx bench classification results", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("recipe", "backend", "accuracy % [95% CI]", "macro-F1 %", "RTFx", "train s"):
            t.add_column(col, justify="left" if col in ("recipe", "backend") else "right", no_wrap=True)
        for r in cls_rows:
            if "unsupported" in r:
                t.add_row(r["recipe"], r["backend"], f"[magenta]{r['state']}[/]", *["—"] * 3)
                continue
            s = r.get("speed") or {}
            t.add_row(r["recipe"], r["backend"], f"{pct(r.get('accuracy'))} {accuracy_cell(r)}", pct(r.get("macro_f1")),
                      f"{s['rtfx']:.1f}" if s else "—", num_str(r.get("train_wall_s"), 0))
        console.print(t)
    for r in unsupported_rows(res):
        console.print(f"[magenta]{r['recipe']}-{r['backend']} unsupported[/] (not run, not a failure): {r['unsupported']}",
                      highlight=False)
    for r in failed:
        console.print(f"[red]{r['recipe']}-{r['backend']} {r['state']}[/]: {r.get('error')}\n  log: {r.get('log') or r['run_dir']}",
                      highlight=False)
