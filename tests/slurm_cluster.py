"""A real single-node Slurm cluster for the tests: munged + slurmctld + slurmd on loopback ports.

State, keys, logs and sockets live in one temp dir; everything is torn down after the session.
Use it from a test module with `pytest_plugins = ["tests.slurm_cluster"]` or import the fixture, or by
hand for debugging:  `uv run python tests/slurm_cluster.py /tmp/mycluster`  (prints SLURM_CONF; Ctrl-C stops it).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
PARTITION = "debug"


def missing_requirements() -> str | None:
    """Why a cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "the Slurm test cluster needs root (slurmd runs jobs as any user)"
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"Slurm/munge binaries missing: {', '.join(missing)} (run scripts/install-system-deps.sh)"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _real_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 1024  # leave some room for the OS
    raise RuntimeError("no MemTotal in /proc/meminfo")


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    node: str
    partition: str = PARTITION
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env})
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def logs(self) -> str:
        out = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            p = self.root / "log" / name
            if p.exists():
                out.append(f"--- {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


def start_cluster(root: Path, timeout: float = 60) -> SlurmCluster:
    """Start munged, slurmctld and slurmd (foreground processes we own) with all state under `root`."""
    root = Path(root).resolve()
    for sub in ("munge", "log", "state", "spool", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    munge_socket = root / "munge" / "munge.socket"
    node = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = _free_ports(2)
    cpus = os.cpu_count() or 1
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=spxtest",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        "InactiveLimit=0",
        "KillWait=10",
        "MinJobAge=3600",  # finished jobs stay visible to `scontrol show job` (no accounting here)
        "JobRequeue=1",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_real_memory_mb()} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
        "",
    ]))
    cluster = SlurmCluster(root=root, conf=conf, node=node)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    log = root / "log"
    try:
        cluster.procs.append(subprocess.Popen(
            [_binary("munged"), "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
             f"--pid-file={root / 'run' / 'munged.pid'}", f"--seed-file={root / 'munge' / 'seed'}",
             f"--log-file={log / 'munged.log'}"],
            stdout=subprocess.DEVNULL, stderr=open(log / "munged.err", "w"), start_new_session=True))
        _wait_for(lambda: munge_socket.exists(), timeout, "munged socket", cluster)
        cluster.procs.append(subprocess.Popen([_binary("slurmctld"), "-D", "-i", "-f", str(conf)], env=env,
                                              stdout=subprocess.DEVNULL, stderr=open(log / "slurmctld.err", "w"),
                                              start_new_session=True))
        _wait_for(lambda: cluster.run("scontrol", "ping", check=False).returncode == 0, timeout, "slurmctld", cluster)
        cluster.procs.append(subprocess.Popen([_binary("slurmd"), "-D", "-N", node, "-f", str(conf)], env=env,
                                              stdout=subprocess.DEVNULL, stderr=open(log / "slurmd.err", "w"),
                                              start_new_session=True))
        _wait_for(lambda: cluster.run("sinfo", "-h", "-n", node, "-o", "%t", check=False).stdout.strip() == "idle",
                  timeout, "node idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for(cond, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in cluster.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}) while waiting for {what}\n{cluster.logs()}")
        if cond():
            return
        time.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {what}\n{cluster.logs()}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A started cluster; SLURM_CONF is set in os.environ for the session so `spx` children find it."""
    why = missing_requirements()
    if why:
        pytest.skip(why)
    # short path: munge/slurm sockets have a ~100-char limit
    root = Path(tmp_path_factory.mktemp("slurm"))
    cluster = start_cluster(root)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        # cancel whatever is left so no job outlives the session
        cluster.run("scancel", "--partition", cluster.partition, check=False)
        time.sleep(1)
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


if __name__ == "__main__":
    c = start_cluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/spx-slurm"))
    print(f"export SLURM_CONF={c.conf}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
