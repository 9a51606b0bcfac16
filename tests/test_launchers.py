"""`spx status`, `spx logs`, `spx cancel` on local runs (real `spx exec` processes running real steps)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, run_spx
from spx.rundir import RunDir, Step
from test_slurm import make_run_dir, wait_until

PY = sys.executable


def start_exec(rd: RunDir) -> subprocess.Popen:
    """`spx exec RUN_DIR` as a user's shell would start it: its own process group."""
    return subprocess.Popen([PY, "-m", "spx", "exec", str(rd.path)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def rows(*paths, cwd=None) -> list[dict]:
    return json.loads(run_spx("status", "--json", *paths, cwd=cwd, check=True).stdout)


def processes_with(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if marker in cmd and ") Z " not in stat:
                pids.append(int(d.name))
    return pids


def test_cancel_a_local_run_stops_its_steps_and_status_says_cancelled(tmp_path):
    marker = f"spx-sleep-marker-{os.getpid()}-{time.time_ns()}"
    rd = make_run_dir(tmp_path / "rd", [
        Step("prepare", [PY, "-c", "print('prepared')"]),
        Step("train", [PY, "-c", f"import time\nprint('training {marker}', flush=True)\ntime.sleep(600)"],
             log="train.log")])
    proc = start_exec(rd)
    try:
        wait_until(lambda: (rd / "train.log").exists() and "training" in (rd / "train.log").read_text(), 60,
                   "the train step to start")
        row = rows(rd.path)[0]
        assert (row["state"], row["step"], row["pid"], row["launcher"]) == ("running", "train", proc.pid, "local")
        assert processes_with(marker)
        logs = run_spx("logs", rd.path, check=True).stdout
        assert f"training {marker}" in logs
        assert "prepared" in run_spx("logs", rd.path, "--step", "prepare", check=True).stdout
        res = run_spx("cancel", rd.path, check=True)
        assert "cancelled" in res.stdout
        assert proc.wait(timeout=30) != 0
        assert not processes_with(marker), "the step's process outlived the cancel"
        row = rows(rd.path)[0]
        assert row["state"] == "cancelled" and "cancelled by the user" in row["error"]
        again = run_spx("cancel", rd.path)
        assert again.returncode == 2 and "already cancelled" in again.stderr and "Traceback" not in again.stderr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_logs_follow_prints_every_step_until_the_run_ends(tmp_path):
    rd = make_run_dir(tmp_path / "rd", [
        Step("one", [PY, "-c", "import time\nfor i in range(3):\n    print(f'one-{i}', flush=True); time.sleep(0.5)"]),
        Step("two", [PY, "-c", "import sys, time\nfor i in range(3):\n    print(f'two-{i}', flush=True); "
                               "time.sleep(0.5)\nsys.exit(4)"])])
    proc = start_exec(rd)
    try:
        wait_until(lambda: rd.status().get("state") == "running", 30, "the run to start", poll=0.2)
        follow = run_spx("logs", "-f", rd.path, timeout=120, check=True)
        for line in ("one-0", "one-2", "two-0", "two-2"):
            assert line in follow.stdout, follow.stdout
        assert "run failed" in follow.stderr and "step 'two' failed (exit 4)" in follow.stderr
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rows(rd.path)[0]["state"] == "failed"


def test_status_lists_runs_under_runs_and_notices_a_dead_process(tmp_path):
    rd = make_run_dir(tmp_path / "runs" / "job-speechbrain", [Step("train", [PY, "-c", "pass"])])
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    rd.set_status("running", step="train", pid=dead.pid)
    fin = make_run_dir(tmp_path / "runs" / "other-nemo", [Step("train", [PY, "-c", "pass"])], backend="nemo")
    fin.set_status("finished")
    (fin / "metrics.json").write_text(json.dumps({"wer": 0.125}))
    listed = {Path(r["run_dir"]).name: r for r in rows(cwd=tmp_path)}
    assert set(listed) == {"job-speechbrain", "other-nemo"}
    assert listed["job-speechbrain"]["state"] == "failed" and "is gone" in listed["job-speechbrain"]["error"]
    assert listed["other-nemo"]["state"] == "finished" and listed["other-nemo"]["wer"] == 0.125
    table = run_spx("status", cwd=tmp_path, check=True).stdout
    assert "other-nemo" in table and "0.125" in table and "finished" in table


def test_status_logs_cancel_refuse_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "plain").mkdir()
    for args in (("status", tmp_path / "plain"), ("logs", tmp_path / "plain"), ("cancel", tmp_path / "plain")):
        res = run_spx(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert "not an spx run directory" in res.stderr and "Traceback" not in res.stderr


def test_logs_of_a_step_that_does_not_exist_is_a_clear_error(tmp_path):
    rd = make_run_dir(tmp_path / "rd", [Step("train", [PY, "-c", "pass"])])
    res = run_spx("logs", rd.path, "--step", "nope")
    assert res.returncode == 2 and "has no step 'nope'" in res.stderr and "steps: train" in res.stderr


def _interval_step(name: str, seconds: float, timed: bool = False, fail: bool = False) -> Step:
    """A step that records when it ran (start, end) in <run dir>/<name>.interval, then optionally fails."""
    code = ("import json, sys, time; t0 = time.time(); time.sleep(float(sys.argv[2])); "
            "open(sys.argv[1] + '.interval', 'w').write(json.dumps([t0, time.time()])); sys.exit(int(sys.argv[3]))")
    return Step(name, [PY, "-c", code, name, str(seconds), "3" if fail else "0"], timed=timed)


def test_bench_trains_cells_side_by_side_and_times_each_cell_alone(tmp_path):
    """`spx bench --jobs 2`: the untimed steps of two cells overlap; a timed step never overlaps anything, and a
    cell that fails beside another leaves the other's result."""
    from rich.console import Console

    from spx.bench.runner import MatrixView, _train_side_by_side
    from spx.launchers.execute import execute

    cells = {name: make_run_dir(tmp_path / name, [_interval_step("train", 2.0, fail=name == "c"),
                                                  _interval_step("decode", 0.5, timed=True)])
             for name in ("a", "b", "c")}
    failures = []
    todo = [("recipe.yaml", "speechbrain", rd.path, rd) for rd in cells.values()]
    view = MatrixView([("recipe", "speechbrain", rd.path) for rd in cells.values()])
    ready = _train_side_by_side(todo, 2, view, Console(file=open(os.devnull, "w")),
                                lambda cell, backend, recipe, exc: failures.append((cell.name, str(exc))))
    assert [item[2].name for item in ready] == ["a", "b"]
    assert [name for name, _ in failures] == ["c"] and "exited with" in failures[0][1]
    assert cells["c"].status()["state"] == "failed"
    for name in ("a", "b"):
        st = cells[name].status()
        assert st["state"] == "waiting" and st["step"] == "decode" and st["completed_steps"] == ["train"]
        assert not (cells[name] / "decode.interval").exists()
    for _, _, _, rd in ready:  # what run_bench does next: the remaining (timed) steps, one cell at a time
        assert execute(rd, on_progress=lambda step, fields: None) is True
    span = {(name, step): json.loads((cells[name] / f"{step}.interval").read_text())
            for name in ("a", "b") for step in ("train", "decode")}
    span["c", "train"] = json.loads((cells["c"] / "train.interval").read_text())  # it ran, then exited 3
    (a0, a1), (b0, b1) = span["a", "train"], span["b", "train"]
    assert a0 < b1 and b0 < a1, "the two trainings did not run side by side"
    for key, (t0, t1) in span.items():
        if key[1] == "decode":
            assert all(t1 <= o0 or o1 <= t0 for other, (o0, o1) in span.items() if other != key), \
                f"{key}: a timed step overlapped another step"


def test_parallel_cells_default():
    from spx.bench.runner import parallel_cells
    from spx.spec import load_spec
    from conftest import RECIPE

    one_thread = load_spec(RECIPE, ["resources.accelerator=cpu", "resources.threads=1"])
    all_threads = load_spec(RECIPE, ["resources.accelerator=cpu", "resources.threads=null"])
    two_procs = load_spec(RECIPE, ["resources.accelerator=cpu", "resources.threads=1", "resources.devices=2"])
    cores = os.cpu_count() or 1
    assert parallel_cells([one_thread] * 3) == min(3, 2 * cores)  # two 1-thread trainings per core
    assert parallel_cells([one_thread] * 9) == min(9, 2 * cores)
    assert parallel_cells([one_thread, all_threads]) == 1  # torch takes every core when threads is unset
    assert parallel_cells([one_thread, two_procs]) == 1
