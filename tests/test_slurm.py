"""Slurm launcher: rendered batch scripts and multi-node launch lines (checked against what each toolkit reads),
and, on a real single-node Slurm cluster (tests/slurm_cluster.py): runs per backend, a 2-process data-parallel
job, bench cells + a dependent report job, cancel, and requeue with resume."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import RECIPE, REPO, run_spx
from spx.errors import SpxError
from spx.rundir import RunDir, Step

pytest_plugins = ["slurm_cluster"]

PY = sys.executable


# ------------------------------------------------------------------ helpers
def make_run_dir(path: Path, steps: list[Step], overrides: list[str] = (), backend: str = "speechbrain") -> RunDir:
    """A run dir written by hand (resolved spec + steps), for checks of the launcher machinery itself."""
    from spx.spec import load_spec, spec_to_yaml
    from spx.yamlio import atomic_write_text

    spec = load_spec(RECIPE, list(overrides))
    path.mkdir(parents=True, exist_ok=True)
    rd = RunDir(path)
    atomic_write_text(rd / "spec.yaml", spec_to_yaml(spec))
    (rd / "backend").write_text(backend + "\n")
    rd.write_steps(steps)
    rd.set_status("rendered", completed_steps=[], backend=backend, spec_name=spec.name)
    return rd


def adapter_available(backend: str) -> str | None:
    """Why `backend`'s adapter cannot be used yet, or None."""
    import importlib

    try:
        mod = importlib.import_module(f"spx.adapters.{backend}")
    except ModuleNotFoundError as exc:
        return f"spx/adapters/{backend} is not there yet ({exc})"
    return None if hasattr(mod, "ADAPTER") else f"spx.adapters.{backend} has no ADAPTER yet"


def squeue_state(job_id: str) -> str | None:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    return out or None


def wait_until(cond, timeout: float, what: str, poll: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_job_done(job_id: str, timeout: float) -> None:
    wait_until(lambda: squeue_state(job_id) is None, timeout, f"Slurm job {job_id} to leave the queue", poll=2)


def status_json(rd: Path) -> dict:
    rows = json.loads(run_spx("status", "--json", rd, check=True).stdout)
    assert len(rows) == 1
    return rows[0]


def job_out(rd: Path, job_id: str) -> str:
    p = Path(rd) / f"slurm-{job_id}.out"
    return p.read_text(errors="replace") if p.exists() else ""


def starts(log: Path, step: str) -> int:
    return log.read_text().count(f"# spx: step {step} started") if log.exists() else 0


# ------------------------------------------------------------------ rendered scripts (no cluster)
def test_sbatch_script_has_resources_requeue_and_exec(tmp_path):
    from spx.launchers.slurm import render_script

    rd = make_run_dir(tmp_path / "rd", [Step("train", [PY, "-m", "x"])], [
        "resources.launcher=slurm", "resources.nodes=2", "resources.devices=4", "resources.accelerator=gpu",
        "resources.slurm.partition=gpu", "resources.slurm.account=asr", "resources.slurm.qos=high",
        "resources.slurm.time=1-12:00:00", "resources.slurm.cpus_per_task=8", "resources.slurm.mem=64G",
        "resources.slurm.constraint=a100&ib", "resources.slurm.signal_seconds=300",
        "resources.slurm.extra=[--exclusive,--mail-type=END]"])
    text = render_script(rd)
    directives = [l[len("#SBATCH "):] for l in text.splitlines() if l.startswith("#SBATCH ")]
    for opt in ("--nodes=2", "--ntasks-per-node=4", "--cpus-per-task=8", "--gpus-per-node=4", "--mem=64G",
                "--time=1-12:00:00", "--partition=gpu", "--account=asr", "--qos=high", "--constraint=a100&ib",
                "--requeue", "--signal=B:USR1@300", "--exclusive", "--mail-type=END", "--open-mode=append",
                f"--output={rd.path}/slurm-%j.out", f"--chdir={rd.path}"):
        assert opt in directives, (opt, directives)
    body = [l for l in text.splitlines() if not l.startswith("#")]
    assert f"{shlex.quote(PY)} -m spx exec {shlex.quote(str(rd.path))} &" in body
    assert "trap requeue_job USR1" in body
    assert any('scontrol requeue "${SLURM_JOB_ID}"' in l for l in body)
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_sbatch_without_requeue(tmp_path):
    from spx.launchers.slurm import render_script

    rd = make_run_dir(tmp_path / "rd", [Step("train", [PY, "-m", "x"])], ["resources.slurm.requeue=false"])
    text = render_script(rd)
    assert "#SBATCH --no-requeue" in text and "#SBATCH --signal" not in text and "\ntrap " not in text


@pytest.mark.parametrize("key,value", [
    ("partition", "gpu; rm -rf /"), ("partition", "gpu\n#SBATCH --wrap=x"), ("account", "$(touch /tmp/pwned)"),
    ("qos", "a b"), ("time", "2h; reboot"), ("mem", "16G`id`"), ("constraint", "a100'"),
])
def test_injection_in_resource_values_is_refused(tmp_path, key, value):
    from spx.launchers.slurm import render_script

    rd = make_run_dir(tmp_path / "rd", [Step("train", [PY, "-m", "x"])])
    spec = (rd / "spec.yaml").read_text()
    import yaml

    data = yaml.safe_load(spec)
    data["resources"]["slurm"][key] = value
    (rd / "spec.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpxError) as err:
        render_script(rd)
    assert f"resources.slurm.{key}" in str(err.value) and err.value.hint


@pytest.mark.parametrize("item", ["--comment=ok\nrm -rf /", "--exclusive; reboot", "-x", "exclusive",
                                  "--comment=$(id)", "--output=/tmp/elsewhere", "--nodes=8"])
def test_bad_extra_lines_are_refused(tmp_path, item):
    from spx.launchers.slurm import render_script

    rd = make_run_dir(tmp_path / "rd", [Step("train", [PY, "-m", "x"])])
    import yaml

    data = yaml.safe_load((rd / "spec.yaml").read_text())
    data["resources"]["slurm"]["extra"] = [item]
    (rd / "spec.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpxError, match="resources.slurm.extra"):
        render_script(rd)


def test_script_quotes_paths_so_nothing_runs_from_a_run_dir_name(tmp_path):
    """A run dir named like a command substitution reaches bash quoted: running the script body runs nothing."""
    from spx.launchers.slurm import render_script

    marker = tmp_path / "pwned"
    rd = make_run_dir(tmp_path / f"a$(touch${{IFS}}{marker})b;touch${{IFS}}{marker}`touch${{IFS}}{marker}`",
                      [Step("train", [PY, "-m", "x"])],
                      ["resources.slurm.requeue=false"])
    text = render_script(rd, python="/bin/echo")  # the job body, with echo standing in for python
    proc = subprocess.run(["bash", "-c", text], capture_output=True, text=True, env={**os.environ, "SLURM_JOB_ID": "1"})
    assert proc.returncode == 0, proc.stderr
    assert f"-m spx exec {rd.path}" in proc.stdout
    assert not marker.exists()


# ------------------------------------------------------------------ multi-node launch lines (no cluster)
SRUN_TASK_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "spx-job", "SLURM_JOB_NODELIST": "node[01-02]",
                 "SLURM_NODELIST": "node[01-02]", "SLURM_STEP_NODELIST": "node[01-02]"}


def _srun_opts(argv: list[str]) -> dict[str, str]:
    assert argv[0] == "srun"
    opts = {}
    for a in argv[1:]:
        if not a.startswith("--"):
            break
        k, _, v = a.partition("=")
        opts[k] = v
    return opts


def _task_env(nodes: int, per_node: int, node: int, local: int) -> dict[str, str]:
    """What srun sets in each task it starts for `--nodes=nodes --ntasks-per-node=per_node`."""
    return {**SRUN_TASK_ENV, "SLURM_NTASKS": str(nodes * per_node), "SLURM_NTASKS_PER_NODE": str(per_node),
            "SLURM_NNODES": str(nodes), "SLURM_STEP_NUM_NODES": str(nodes), "SLURM_NODEID": str(node),
            "SLURM_PROCID": str(node * per_node + local), "SLURM_LOCALID": str(local)}


def test_multinode_speechbrain_is_torchrun_rendezvous():
    from torch.distributed.run import get_args_parser

    from spx.launchers.slurm import multinode_command

    step = Step("train", [PY, "-m", "spx.adapters.speechbrain.steps.train", "/runs/x"], launch="torchrun")
    argv = multinode_command(step, devices=4, nodes=2, addr="node01", port=29500, cpus_per_task=8)
    opts = _srun_opts(argv)
    assert opts["--nodes"] == "2" and opts["--ntasks-per-node"] == "1" and opts["--ntasks"] == "2"
    assert opts["--cpus-per-task"] == "32"  # one torchrun agent per node owns the node's 4 x 8 cpus
    i = argv.index("torch.distributed.run")
    args = get_args_parser().parse_args(argv[i + 1:])
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend, args.rdzv_endpoint) == ("2", "4", "c10d", "node01:29500")
    assert args.module and args.training_script == "spx.adapters.speechbrain.steps.train"
    assert args.training_script_args == ["/runs/x"]


def test_multinode_nemo_is_srun_tasks_for_lightning_slurm_environment(monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    from spx.launchers.slurm import multinode_command

    step = Step("train", [PY, "-m", "spx.adapters.nemo.steps.train", "/runs/x"], launch="tasks")
    argv = multinode_command(step, devices=2, nodes=2, addr="node01", port=29500, cpus_per_task=4)
    opts = _srun_opts(argv)
    assert (opts["--nodes"], opts["--ntasks-per-node"], opts["--ntasks"], opts["--cpus-per-task"]) == ("2", "2", "4", "4")
    assert argv[len(opts) + 1:] == step.argv  # the training module itself, once per task: no torchrun
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC", "GROUP_RANK"))]:
        monkeypatch.delenv(key)
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/srun")
    for key, value in _task_env(nodes=2, per_node=2, node=1, local=1).items():
        monkeypatch.setenv(key, value)
    assert SLURMEnvironment.detect() and not TorchElasticEnvironment.detect()
    env = SLURMEnvironment()
    env.validate_settings(num_devices=2, num_nodes=2)  # raises when tasks per node / nodes disagree with Trainer
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)
    assert env.main_address == "node01"


@pytest.mark.parametrize("gpu", [False, True])
def test_multinode_espnet_native_forms(monkeypatch, gpu):
    """GPU: ESPnet's own `--dist_launcher slurm` (one srun task per node, it spawns --ngpu workers itself);
    CPU: ESPnet's external-launcher mode under torchrun (env:// from RANK/WORLD_SIZE/MASTER_*), gloo."""
    import argparse
    from types import SimpleNamespace

    from espnet2.train.distributed_utils import DistributedOption, resolve_distributed_mode
    from espnet2.utils.types import str2bool, str_or_none
    from torch.distributed.run import get_args_parser

    from spx.launchers.slurm import multinode_command

    for key in [k for k in os.environ if k.startswith("SLURM_") or k in (
            "CUDA_VISIBLE_DEVICES", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")]:
        monkeypatch.delenv(key)
    if gpu:
        monkeypatch.setenv("SLURM_GPUS_ON_NODE", "2")
    from spx.adapters.espnet.native_launch import SELF_LAUNCH

    step = Step("train", [PY, "-m", "espnet2.bin.asr_train", "--config", "c.yaml", "--ngpu", "0"], launch="self",
                self_launch=SELF_LAUNCH)
    argv = multinode_command(step, devices=2, nodes=2, addr="node01", port=29511, cpus_per_task=4)
    opts = _srun_opts(argv)
    assert (opts["--nodes"], opts["--ntasks-per-node"], opts["--ntasks"]) == ("2", "1", "2")
    tail = argv[len(opts) + 1:]
    if not gpu:
        i = tail.index("torch.distributed.run")
        targs = get_args_parser().parse_args(tail[i + 1:])
        assert (targs.nnodes, targs.nproc_per_node, targs.rdzv_endpoint) == ("2", "2", "node01:29511")
        assert targs.training_script == "espnet2.bin.asr_train"
        train_args = targs.training_script_args
    else:
        assert tail[:len(step.argv)] == step.argv
        train_args = tail[3:]
    # ESPnet's argparse keeps the last value of a repeated option: parse the appended ones the way it does
    p = argparse.ArgumentParser()
    p.add_argument("--ngpu", type=int, default=0)
    p.add_argument("--multiprocessing_distributed", type=str2bool, default=False)
    p.add_argument("--dist_launcher", type=str_or_none)
    p.add_argument("--dist_backend", default="nccl")
    p.add_argument("--dist_master_addr", type=str_or_none)
    p.add_argument("--dist_master_port", type=int)
    args, _ = p.parse_known_args(train_args)
    assert args.ngpu == (2 if gpu else 0)
    if gpu:  # what srun sets in the one task on node 1
        env = _task_env(nodes=2, per_node=1, node=1, local=0)
        assert args.dist_launcher == "slurm" and args.multiprocessing_distributed
    else:  # what torchrun sets in worker 3 of 4
        env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node01", "MASTER_PORT": "29511"}
        assert args.dist_launcher is None and args.dist_backend == "gloo" and not args.multiprocessing_distributed
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ns = SimpleNamespace(**vars(args), dist_world_size=None, dist_rank=None, local_rank=None)
    resolve_distributed_mode(ns)
    assert ns.distributed and ns.multiprocessing_distributed == gpu
    if gpu:  # what ESPnet's launcher (AbsTask.main) hands worker 1 it spawns on node 1
        from espnet2.train.distributed_utils import get_node_rank, get_num_nodes

        num_nodes, node_rank = get_num_nodes(None, "slurm"), get_node_rank(None, "slurm")
        assert (num_nodes, node_rank) == (2, 1)
        opt = DistributedOption(distributed=True, dist_backend=args.dist_backend, ngpu=1, local_rank=1,
                                dist_rank=args.ngpu * node_rank + 1, dist_world_size=args.ngpu * num_nodes,
                                dist_launcher=args.dist_launcher, dist_master_addr=args.dist_master_addr,
                                dist_master_port=args.dist_master_port)
    else:
        opt = DistributedOption(distributed=True, dist_backend=args.dist_backend, ngpu=args.ngpu,
                                dist_launcher=args.dist_launcher, dist_master_addr=args.dist_master_addr,
                                dist_master_port=args.dist_master_port, multiprocessing_distributed=False)
    opt.init_options()
    assert (opt.dist_world_size, opt.dist_rank, opt.local_rank) == (4, 3, 1)
    assert opt.dist_init_method == "tcp://node01:29511"


def test_multinode_spx_espnet_train_step_is_torchrun_rendezvous():
    """spx's ESPnet train step runs ESPnet's external-launcher mode per rank (launch torchrun)."""
    from spx.launchers.slurm import multinode_command

    step = Step("train", [PY, "-m", "spx.adapters.espnet.steps.train", "/runs/x"], launch="torchrun")
    argv = multinode_command(step, devices=2, nodes=3, addr="n1", port=29400, cpus_per_task=2)
    assert _srun_opts(argv)["--ntasks"] == "3"
    i = argv.index("torch.distributed.run")
    assert argv[i + 1:] == ["--nnodes=3", "--nproc_per_node=2", f"--rdzv_id={os.environ.get('SLURM_JOB_ID', 'spx')}",
                            "--rdzv_backend=c10d", "--rdzv_endpoint=n1:29400", "-m", "spx.adapters.espnet.steps.train",
                            "/runs/x"]


def test_execute_routes_multinode_steps_to_slurm_forms(monkeypatch):
    from spx.launchers.execute import wrap_command

    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n1")
    monkeypatch.setattr("spx.launchers.slurm.master_addr", lambda: "n1")
    single = Step("decode", [PY, "-m", "spx.adapters.nemo.steps.decode", "x"])
    assert wrap_command(single, 2, 2) == single.argv  # single-process steps never fan out
    from spx.adapters.espnet.native_launch import SELF_LAUNCH

    self_step = Step("train", [PY, "-m", "espnet2.bin.asr_train", "--ngpu", "0"], launch="self", self_launch=SELF_LAUNCH)
    argv = wrap_command(self_step, 2, 2)
    assert argv[0] == "srun" and "torch.distributed.run" in argv and argv[-2:] == ["--dist_backend", "gloo"]
    torch_step = Step("train", [PY, "-m", "spx.adapters.speechbrain.steps.train", "x"], launch="torchrun")
    assert "--rdzv_endpoint=n1:29407" in wrap_command(torch_step, 2, 2)


# ------------------------------------------------------------------ on the real cluster
def _sleep_steps(seconds: int = 600) -> list[Step]:
    return [Step("prepare", [PY, "-c", "print('prepared')"]),
            Step("train", [PY, "-c", f"import time\nprint('training', flush=True)\ntime.sleep({seconds})"],
                 log="train.log")]


@pytest.mark.slurm
def test_cancel_a_slurm_job_and_status_says_cancelled(slurm_cluster, tmp_path):
    rd = make_run_dir(tmp_path / "rd", _sleep_steps(), ["resources.launcher=slurm", "resources.slurm.cpus_per_task=1"])
    from spx.launchers.slurm import submit

    job = submit(rd, quiet=True)
    assert (rd / "slurm.sbatch").exists() and rd.status()["slurm_job_id"] == job
    assert "sbatch" in rd.status()["submit_command"]
    wait_until(lambda: "training" in (rd / "train.log").read_text() if (rd / "train.log").exists() else False,
               120, "the job to reach its train step")
    assert status_json(rd.path)["state"] == "running"
    assert status_json(rd.path)["slurm_state"] == "RUNNING"
    run_spx("cancel", rd.path, check=True)
    row = status_json(rd.path)
    assert row["state"] == "cancelled" and row["slurm_state"].startswith("CANCELLED")
    assert squeue_state(job) is None
    assert run_spx("cancel", rd.path).returncode == 2  # already cancelled: a clear error, no traceback


@pytest.mark.slurm
def test_scancel_outside_spx_is_seen_by_status(slurm_cluster, tmp_path):
    rd = make_run_dir(tmp_path / "rd", _sleep_steps(), ["resources.launcher=slurm", "resources.slurm.cpus_per_task=1"])
    from spx.launchers.slurm import submit

    job = submit(rd, quiet=True)
    wait_until(lambda: squeue_state(job) == "RUNNING", 60, "job running")
    slurm_cluster.run("scancel", job)
    wait_job_done(job, 60)
    assert status_json(rd.path)["state"] == "cancelled"


@pytest.mark.slurm
@pytest.mark.slow
def test_usr1_before_time_limit_requeues_and_skips_finished_steps(slurm_cluster, tmp_path):
    """--signal=B:USR1@N reaches the script's trap, which requeues; the requeued job skips finished steps."""
    rd = make_run_dir(tmp_path / "rd", _sleep_steps(), [
        "resources.launcher=slurm", "resources.slurm.cpus_per_task=1", "resources.slurm.time=00:02:00",
        "resources.slurm.signal_seconds=110"])
    from spx.launchers.slurm import submit

    job = submit(rd, quiet=True)
    wait_until(lambda: "USR1 received" in job_out(rd.path, job), 150, "the USR1 trap to fire")
    wait_until(lambda: squeue_state(job) in ("PENDING", "REQUEUED"), 60, "the job to be requeued")
    assert status_json(rd.path)["state"] == "requeued"
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")  # Slurm delays requeued jobs ~2 min
    wait_until(lambda: "restart 1" in job_out(rd.path, job), 90, "the requeued job to start")
    wait_until(lambda: starts(rd / "train.log", "train") == 2, 60, "train to start again")
    assert starts(rd / "logs" / "prepare.log", "prepare") == 1  # completed before the requeue: skipped
    slurm_cluster.run("scancel", job)
    wait_job_done(job, 60)


@pytest.mark.slurm
def test_submit_bench_report_job_runs_after_a_failed_cell(slurm_cluster, tmp_path):
    from spx.launchers.slurm import submit_bench

    over = ["resources.launcher=slurm", "resources.slurm.cpus_per_task=1"]
    ok = make_run_dir(tmp_path / "ok", [Step("train", [PY, "-c", "import time; time.sleep(3)"])], over)
    bad = make_run_dir(tmp_path / "bad", [Step("train", [PY, "-c", "import sys; sys.exit(3)"])], over)
    report = tmp_path / "report.json"
    code = ("import json,sys,pathlib; rows=[json.loads(pathlib.Path(d,'status.json').read_text())['state'] "
            "for d in sys.argv[2:]]; pathlib.Path(sys.argv[1]).write_text(json.dumps(rows))")
    ids = submit_bench([ok, bad], [PY, "-c", code, str(report), str(ok.path), str(bad.path)], cwd=str(tmp_path))
    assert set(ids["cells"]) == {str(ok.path), str(bad.path)}
    dep = slurm_cluster.run("scontrol", "show", "job", "-o", ids["report"]).stdout
    assert re.search(r"Dependency=afterany:\d+.*:\d+", dep), dep
    wait_job_done(ids["report"], 180)
    assert report.exists(), Path(ids["report_log"]).read_text() if Path(ids["report_log"]).exists() else "no log"
    states = json.loads(report.read_text())
    assert states[1] == "failed"  # the failed cell ended before the report ran, and the report still ran


def _train(backend: str, run_dir: Path, *overrides: str) -> tuple[Path, str]:
    why = adapter_available(backend)
    if why:
        pytest.skip(why)
    proc = run_spx("run", "--backend", backend, RECIPE, "--launcher", "slurm", "--run-dir", run_dir, "--force",
                   "resources.slurm.cpus_per_task=2", "training.batch_size=16", *overrides, check=True)
    job = json.loads((run_dir / "status.json").read_text())["slurm_job_id"]
    assert f"Slurm job {job}" in proc.stderr
    return run_dir, job


def _assert_finished(rd: Path, job: str) -> dict:
    st = json.loads((rd / "status.json").read_text())
    assert st["state"] == "finished", (st, job_out(rd, job)[-3000:])
    assert st["slurm_job_id"] == job
    metrics = json.loads((rd / "metrics.json").read_text())
    assert isinstance(metrics["wer"], float)
    hyps = [json.loads(l) for l in (rd / "hyps.jsonl").read_text().splitlines() if l.strip()]
    assert len(hyps) == 40
    assert "spx exec exited with 0" in job_out(rd, job)
    return metrics


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["nemo", "speechbrain", "espnet"])
def test_spx_run_on_slurm_per_backend(slurm_cluster, tmp_path, backend):
    rd, job = _train(backend, tmp_path / f"run-{backend}", "training.epochs=2")
    wait_job_done(job, 1200)
    _assert_finished(rd, job)
    row = status_json(rd)
    assert row["state"] == "finished" and row["slurm_state"] == "COMPLETED" and row["launcher"] == "slurm"
    logs = run_spx("logs", rd, "--step", "train", check=True).stdout
    assert logs.strip()


@pytest.mark.slurm
@pytest.mark.slow
def test_hf_fine_tune_on_slurm(slurm_cluster, tmp_path, tmp_path_factory):
    """The fourth backend's run dir runs under sbatch like the others (a tiny random wav2vec2, one epoch)."""
    from hf_tiny import tiny_models

    rd = tmp_path / "hf"
    run_spx("run", "--backend", "hf", REPO / "recipes" / "tiny" / "ssl_ctc_tiny.yaml", "--launcher", "slurm",
            "--run-dir", rd, "--force", "resources.slurm.cpus_per_task=2", "training.epochs=1",
            f"model.encoder.pretrained={tiny_models(tmp_path_factory) / 'wav2vec2'}", check=True)
    job = json.loads((rd / "status.json").read_text())["slurm_job_id"]
    wait_job_done(job, 1200)
    _assert_finished(rd, job)
    assert status_json(rd)["slurm_state"] == "COMPLETED"
    assert json.loads((rd / "train_summary.json").read_text())["steps"] == 30


@pytest.mark.slurm
@pytest.mark.slow
def test_two_process_data_parallel_job_on_slurm(slurm_cluster, tmp_path):
    backend = "speechbrain"
    # 2 tasks x 2 cpus do not fit one 2-cpu node: cpus_per_task=1 makes the allocation fit
    rd, job = _train(backend, tmp_path / "dp", "training.epochs=2", "resources.devices=2",
                     "resources.slurm.cpus_per_task=1")
    assert "#SBATCH --ntasks-per-node=2" in (rd / "slurm.sbatch").read_text()
    wait_job_done(job, 1200)
    _assert_finished(rd, job)
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert "torch.distributed.run" in (rd / "train.log").read_text()


@pytest.mark.slurm
@pytest.mark.slow
def test_requeued_training_resumes_from_checkpoint(slurm_cluster, tmp_path):
    backend = "speechbrain"
    rd, job = _train(backend, tmp_path / "rq", "training.epochs=8")

    def epochs_done() -> int:
        p = rd / "curve.jsonl"
        return len([l for l in p.read_text().splitlines() if l.strip()]) if p.exists() else 0

    wait_until(lambda: epochs_done() >= 2, 900, "two epochs before the requeue", poll=2)
    before = epochs_done()
    slurm_cluster.run("scontrol", "requeue", job)
    wait_until(lambda: squeue_state(job) == "PENDING", 60, "the job to be pending again")
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    wait_until(lambda: "restart 1" in job_out(rd, job), 120, "the requeued job to start")
    wait_job_done(job, 1200)
    _assert_finished(rd, job)
    train_log = rd / "train.log"
    assert starts(train_log, "train") == 2
    steps = json.loads((rd / "steps.json").read_text())
    for s in steps[:[x["name"] for x in steps].index("train")]:
        assert starts(rd / (s["log"] or f"logs/{s['name']}.log"), s["name"]) == 1, f"step {s['name']} ran twice"
    epochs = [json.loads(l)["epoch"] for l in (rd / "curve.jsonl").read_text().splitlines() if l.strip()]
    assert len(epochs) == len(set(epochs)) == 8, epochs  # resumed: no epoch trained twice
    after_restart = train_log.read_text().split("# spx: step train started")[2]
    first = next(json.loads(l[len("SPX_PROGRESS "):]) for l in after_restart.splitlines()
                 if l.startswith("SPX_PROGRESS ") and '"epoch"' in l)
    assert first["epoch"] > before, (first, before)


@pytest.mark.slurm
@pytest.mark.slow
def test_bench_on_slurm_report_job_writes_the_report(slurm_cluster, tmp_path):
    backends = [b for b in ("speechbrain", "nemo", "espnet") if adapter_available(b) is None][:1]
    if not backends:
        pytest.skip("no backend adapter yet")
    out = tmp_path / "bench"
    proc = run_spx("bench", RECIPE, "--backends", ",".join(backends), "--launcher", "slurm", "--out", out,
                   "-o", "training.epochs=2", "-o", "resources.slurm.cpus_per_task=2", cwd=tmp_path, check=True)
    script = out / "spx-report.sbatch"
    assert script.exists(), proc.stdout + proc.stderr
    report_job = re.search(r"report job (\d+)", proc.stdout + proc.stderr)
    assert report_job, proc.stdout + proc.stderr
    dep = slurm_cluster.run("scontrol", "show", "job", "-o", report_job.group(1)).stdout
    assert "Dependency=afterany:" in dep, dep
    assert not (out / "report.html").exists()  # written by the report job, not by `spx bench`
    wait_job_done(report_job.group(1), 1500)
    log = out / f"spx-report-{report_job.group(1)}.out"
    assert (out / "report.html").exists() and (out / "results.json").exists(), log.read_text() if log.exists() else ""
    results = json.loads((out / "results.json").read_text())
    assert backends[0] in json.dumps(results)
