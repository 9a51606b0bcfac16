"""Shared fixtures. Trained models are made once per test run and shared by every test that needs one.

`bash scripts/test.sh` runs the suite on two pytest-xdist workers (`--dist loadgroup`): the tests that share a
trained model form one group, so they run on one worker, and every shared model is built under a file lock in
the run's common temp folder, so it is built once even when tests on both workers need it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock

from shared_artifacts import build_once, shared_dir

from tts_corpus import tts_corpus, tts_multi_corpus  # noqa: F401  (session fixtures, shared by the TTS modules)
from kws_runs import kws_corpus, trained_kws  # noqa: F401  (session fixtures: the KWS corpus and runs)
from audio_forms import audio_forms  # noqa: F401  (session fixture: the demo corpus in every audio form)

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "conformer_ctc.yaml"
DEMO = REPO / "spx" / "demo" / "corpus"
TACOTRON2_RECIPE = REPO / "recipes" / "tacotron2.yaml"
# CI scale: a couple of minutes of training per backend on 2 CPU cores
# one thread: the autoregressive decoder is step-bound, and a second OpenMP thread only contends on 2 cores
TACOTRON2_TRAIN_OVERRIDES = ["training.epochs=12", "eval.speed_repeats=1", "eval.warmup_batches=1",
                             "resources.threads=1"]


if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on a 2-core machine: one intra-op thread per training, or they thrash each other
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

# tests that use one of these fixtures run as one xdist group (one worker, in order): the group's tests share
# what the fixture builds, and the Slurm tests one cluster
SHARED_GROUPS = {"tts_models": {"trained_tts"}, "slurm": {"slurm_cluster"}}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the xdist_group marks into scopes
def pytest_collection_modifyitems(config, items):
    """Longest first, so that the short tests fill in around them on the two workers: the ASR bench cells (each
    its own unit, so the workers build them side by side), the TTS group, the Slurm group, the other slow tests,
    the tests that use a bench cell (by then built: they wait on its lock otherwise), then the fast tests."""
    def group_of(item) -> str | None:
        return next((g for g, fixtures in SHARED_GROUPS.items() if fixtures & set(item.fixturenames)), None)

    def rank(item) -> int:
        group = group_of(item)
        if item.originalname == "test_bench_cell_trains":
            return 0
        if group:
            return 1 + list(SHARED_GROUPS).index(group)
        if not item.get_closest_marker("slow"):
            return 5
        return 4 if {"trained_run", "bench_dir"} & set(item.fixturenames) else 3

    for item in items:
        if group := group_of(item):
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=rank)  # stable: collection order within a rank


def pytest_runtest_setup(item):
    # Hypothesis reads getattr(module, "__file__") of every module in sys.modules; SpeechBrain leaves lazy modules
    # there whose attribute access raises ImportError when their optional dependency (k2) is missing. Once a test
    # in this worker imported SpeechBrain, drop the lazy modules that cannot import before a Hypothesis test runs.
    if hasattr(item.obj, "hypothesis") and "speechbrain" in sys.modules:
        from speechbrain.utils.importutils import LazyModule

        for name, module in list(sys.modules.items()):
            if isinstance(module, LazyModule):
                try:
                    getattr(module, "__file__", None)  # what Hypothesis does; imports the target if it can
                except ImportError:
                    del sys.modules[name]


def run_spx(*args: str, cwd: Path | None = None, timeout: float = 1800, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `spx` CLI in a child process (as a user would)."""
    proc = subprocess.run([sys.executable, "-m", "spx", *map(str, args)], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"spx {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def export_once(run_dir: Path, folder: Path, kind: str, parity_utterances: str | None = None) -> Path:
    """`spx export RUN_DIR` as `kind` ("onnx", "onnx-int8", "torchscript", ...) into folder, once per test run
    (build_once: a test on the other xdist worker waits for it); parity_utterances: the check's wiring on CI, where
    `spx export` checks the whole test set by default."""
    fmt, _, quant = kind.partition("-")

    def build(out: Path) -> None:
        run_spx("export", run_dir, "--format", fmt, *(["--quantize", quant] if quant else []), "--out", out, "--force",
                *(["--parity-utterances", parity_utterances] if parity_utterances else []), check=True, timeout=900)

    return build_once(folder, build)


def descendants(pid: int) -> list[int]:
    """Every process below pid (from /proc), children first."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def run_spx_and_crash(args: list, ready: Callable[[], bool], what: str, timeout: float = 900, grace: float = 0.0,
                      settle: float = 1.0) -> None:
    """Start `spx ARGS` and, `grace` seconds after ready() holds (a checkpoint is on disk), kill -9 every process of
    the run at once (spx, the trainer, which may have its own process group or session, its workers): a node crash or
    an OOM kill. Then wait `settle` seconds for the file system to show what the dead processes left."""
    proc = subprocess.Popen([sys.executable, "-m", "spx", *map(str, args)], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"spx run ended before {what}"
            assert time.time() < deadline, f"no {what} within {timeout:.0f} s"
            time.sleep(0.2)
        time.sleep(grace)
        groups = {os.getpgid(p) for p in [proc.pid, *descendants(proc.pid)] if Path(f"/proc/{p}").exists()}
        for g in groups:
            try:
                os.killpg(g, signal.SIGKILL)
            except ProcessLookupError:  # the group ended between the listing and the kill
                pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(settle)


@pytest.fixture(scope="session")
def demo_corpus() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory) -> Path:
    """One bench output folder for the run: backend tests train into its cells, the bench test reuses them."""
    return shared_dir(tmp_path_factory, "bench")


def cell_dir(bench_dir: Path, recipe_stem: str, backend: str) -> Path:
    return bench_dir / "runs" / f"{recipe_stem}-{backend}"


@pytest.fixture(scope="session")
def trained_run(bench_dir):
    """trained_run('nemo') -> run dir of the tiny conformer_ctc trained on the demo corpus (once per session)."""
    cache: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in cache:
            rd = cell_dir(bench_dir, RECIPE.stem, backend)
            rd.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(rd) + ".lock"):
                if not _finished(rd):
                    run_spx("run", "--backend", backend, RECIPE, "--run-dir", rd, "--force", check=True)
            cache[backend] = rd
        return cache[backend]

    return get


def _finished(rd: Path) -> bool:
    status = rd / "status.json"
    return status.exists() and json.loads(status.read_text()).get("state") == "finished"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def corpus_args(corpus: Path) -> list[str]:
    """The overrides that point a recipe at a test corpus's train/valid/test manifests."""
    return [f"data.train={corpus / 'train.jsonl'}", f"data.valid={corpus / 'valid.jsonl'}",
            f"data.test={corpus / 'test.jsonl'}"]


def tts_spec(corpus: Path, *overrides: str, recipe: Path = TACOTRON2_RECIPE):
    """A TTS recipe (Tacotron2 unless told) on a test corpus's train/valid/test manifests."""
    from spx.spec import load_spec

    return load_spec(recipe, [*corpus_args(corpus), *overrides])


def synthesized_test_set(rd: Path, corpus: Path, sample_rate: int = 16000) -> list[tuple]:
    """(hyps.jsonl row, waveform) per synthesized test sentence of a TTS run, after the checks every acoustic model's
    run must pass: one wav per test utterance, at the sample rate, as long as its row says, and not silent."""
    import numpy as np
    import soundfile as sf

    hyps = read_jsonl(rd / "hyps.jsonl")
    refs = [r["id"] for r in read_jsonl(corpus / "test.jsonl")[1:]]  # line 1 is the manifest header
    assert sorted(h["id"] for h in hyps) == sorted(refs)
    out = []
    for h in hyps:
        wav, sr = sf.read(h["audio"])
        assert sr == sample_rate and len(wav) / sr == pytest.approx(h["duration"])
        assert np.sqrt(np.mean(wav ** 2)) > 1e-3, f"{h['id']}: silent output"
        out.append((h, wav))
    return out


def render_tts_run(spec, backend: str, run_dir: Path):
    from spx.runner import render_run

    return render_run(spec, backend, run_dir, force=True)


@pytest.fixture(scope="session")
def trained_tts(tts_corpus, tmp_path_factory):
    """trained_tts('espnet') -> run dir of a tiny Tacotron2 trained on the flite corpus and scored (once per
    session; tests/test_tts.py checks it, tests/test_espnet_fastspeech2.py uses the espnet one as duration teacher).
    The run dirs are bench cells (trained_tts.out/runs/tacotron2-<backend>), so `spx bench --report-only` reports
    them."""
    from spx.launchers.local import run_here
    from spx.rundir import RunDir

    root = shared_dir(tmp_path_factory, "tts_bench")
    cache: dict = {}

    def get(backend: str):
        if backend not in cache:
            path = root / "runs" / f"tacotron2-{backend}"
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path) + ".lock"):
                if _finished(path):  # built by the other xdist worker
                    rd = RunDir(path)
                else:
                    rd = render_tts_run(tts_spec(tts_corpus, *TACOTRON2_TRAIN_OVERRIDES), backend, path)
                    run_here(rd, quiet=True)  # train, synthesize, then score as `spx run` does (metrics.json)
            cache[backend] = rd
        return cache[backend]

    get.out = root
    return get
