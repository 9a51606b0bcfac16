"""Every command in README.md's and docs/tts.md's ```bash blocks runs as written, in order, on a copy of the repo.

`spx` is this checkout's `python -m spx` (a wrapper on PATH). The README itself gives the commands that would train
their `--dry-run`, so nothing here trains. The quick start's two commands are the main job (`spx bench`, ~9 min) and
this suite (`bash scripts/test.sh`): they are checked for existence and syntax only. What a command needs from an
earlier step the reader ran (the quick start's bench_out/results.json; a folder of synthesized wavs for
`spx score audio`) is made before the commands run. ```shell blocks in docs (steps that need a finished training
or a Slurm cluster) are shown, not run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_synthetic import write_demo_bench
from spx.manifests import iter_manifest

REPO = Path(__file__).resolve().parent.parent
QUICK_START = ("python3 -m pip install uv && python3 -m uv run --frozen spx bench", "bash scripts/test.sh")
COMMAND_TIMEOUT_S = 150  # a README command that trains (no --dry-run) fails here instead of running for minutes
PLACEHOLDER = re.compile(r"\b(RUN_DIR|OUT_DIR|DIR|RECIPE|MANIFEST|NAME|BACKEND)\b|path/to/|<[a-z_ -]+>")


def bash_commands(markdown: Path) -> list[str]:
    """The commands of the file's ```bash blocks, in order (backslash continuations joined, comment lines dropped)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown.read_text(), flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def _ignore(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == REPO
    return {n for n in names if n in {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis"}
            or n.endswith(".egg-info") or (top and n in {"runs", "bench_out", "spx_runs", ".whl", ".gl"})}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A copy of the repo (as a fresh clone has it), `spx` on PATH, its own cache folder for the TTS demo corpus."""
    root = tmp_path_factory.mktemp("readme")
    repo = root / "repo"
    shutil.copytree(REPO, repo, ignore=_ignore)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "spx").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m spx "$@"\n')
    (bin_dir / "spx").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)  # docs say `python -m spx.demo...`
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(repo),
           "XDG_CACHE_HOME": str(root / "cache"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return repo, env


def run(cmd: str, repo: Path, env: dict) -> subprocess.CompletedProcess:
    t0 = time.time()
    try:
        proc = subprocess.run(["bash", "-c", cmd], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"README command ran over {COMMAND_TIMEOUT_S} s (does it train? show its --dry-run): {cmd}")
    print(f"{time.time() - t0:6.1f} s  {cmd}")  # with -s: what each command costs
    assert proc.returncode == 0, f"README command failed (exit {proc.returncode}): {cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def made_by_the_quick_start(repo: Path, env: dict) -> None:
    """bench_out/results.json as `spx bench` leaves it (from synthetic cells: the real bench is the 9-minute job)."""
    write_demo_bench(repo / "bench_out")
    run("spx bench --report-only --out bench_out", repo, env)


def synthesized_wavs(repo: Path, env: dict) -> None:
    """synth/ and refs/ for `spx score audio`: two demo recordings stand in for a TTS run's synth/ folder."""
    for folder in ("synth", "refs"):
        (repo / folder).mkdir()
        for audio in sorted((repo / "spx/demo/corpus/audio").glob("*.flac"))[:2]:
            shutil.copy(audio, repo / folder / audio.name)


def _lines(path: Path) -> int:
    return sum(1 for _ in path.open())


def _utterances(manifest: Path) -> int:
    return sum(1 for _ in iter_manifest(manifest))


# what each command must have done, beyond exit code 0 (a regex on the command -> a check); every check must
# match a command, so a README edit that drops a command drops its check here too
CHECKS = [
    (r"^spx run --backend nemo recipes/conformer_ctc\.yaml --dry-run",
     lambda p, repo: next((repo / "runs").glob("conformer_ctc_tiny-nemo-*/command.sh"))),
    (r"^spx run --backend espnet .* --run-dir runs/ctc5-espnet --dry-run",
     lambda p, repo: "--max_epoch 5" in (repo / "runs/ctc5-espnet/command.sh").read_text()
     or "max_epoch: 5" in (repo / "runs/ctc5-espnet/native/conf/train_asr.yaml").read_text()),
    (r"^spx run --resume runs/ctc5-espnet --dry-run", lambda p, repo: "spx.adapters.espnet.steps.train" in p.stdout),
    (r"^spx spec show .* model\.encoder\.layers=4", lambda p, repo: re.search(r"^\s+layers: 4$", p.stdout, re.M)),
    (r"^spx spec schema > spx-recipe\.schema\.json",
     lambda p, repo: "training" in json.loads((repo / "spx-recipe.schema.json").read_text())["properties"]),
    (r"^spx doctor", lambda p, repo: all(b in p.stdout for b in ("nemo", "speechbrain", "espnet"))),
    (r"^spx bench recipes/tacotron2\.yaml --backends espnet,speechbrain --out tts_bench --dry-run",
     lambda p, repo: (repo / "tts_bench/runs/tacotron2-speechbrain/command.sh").exists()
     and "making the TTS demo corpus" in p.stderr),
    (r"^spx manifest export kaldi spx/demo/corpus/train\.jsonl data/train",
     lambda p, repo: _lines(repo / "data/train/wav.scp") == 240),
    (r"^spx manifest import kaldi data/train train\.jsonl", lambda p, repo: _utterances(repo / "train.jsonl") == 240),
    (r"^spx manifest validate train\.jsonl --json", lambda p, repo: json.loads(p.stdout)["ok"] is True),
    (r"^spx manifest stats train\.jsonl", lambda p, repo: "240" in p.stdout),
    (r"^spx manifest split train\.jsonl splits/",
     lambda p, repo: sum(_utterances(repo / "splits" / f"{s}.jsonl") for s in ("train", "valid", "test")) == 240),
    (r"^spx manifest prepare splits/test\.jsonl prepared/",
     lambda p, repo: _utterances(repo / "prepared/test.jsonl") == len(list((repo / "prepared/audio").rglob("*.*")))),
    (r"^spx bench recipes/conformer_ctc\.yaml --backends nemo,espnet .*--out my_bench --dry-run",
     lambda p, repo: sorted(c.name for c in (repo / "my_bench/runs").iterdir()) == ["conformer_ctc-espnet",
                                                                                   "conformer_ctc-nemo"]),
    (r"^spx bench recipes/tiny/ssl_ctc_tiny\.yaml --backends hf,speechbrain,espnet,nemo --out ssl_bench --dry-run",
     lambda p, repo: sorted(c.name for c in (repo / "ssl_bench/runs").iterdir()) == ["ssl_ctc_tiny-hf",
                                                                                    "ssl_ctc_tiny-speechbrain"]
     and "ssl_ctc_tiny-nemo: unsupported" in " ".join(p.stderr.split())),
    (r"^spx bench --from bench_out/results\.json --out paper/", lambda p, repo: (repo / "paper/report.html").exists()),
    (r"^spx score audio synth/ --ref refs/ --json",
     lambda p, repo: json.loads(p.stdout[p.stdout.index("{"):])["utterances"] == 2),
    (r"^spx run --backend (espnet|speechbrain|nemo) recipes/(tacotron2|fastpitch|vits|hifigan)\.yaml --dry-run",
     lambda p, repo: "tts" in p.stdout),
    (r"^python -m spx\.demo\.tts_corpus my_tts_corpus --voices slt,rms,awb",
     lambda p, repo: {u.speaker for u in iter_manifest(repo / "my_tts_corpus/train.jsonl")} == {"slt", "rms", "awb"}),
]


@pytest.mark.slow  # no training, but ~75 s of CPU: the toolkit imports of `spx doctor`, the quality models
def test_readme_and_docs_commands_run_as_written(workspace):
    repo, env = workspace
    commands = bash_commands(REPO / "README.md")
    assert all(any(c.startswith(q) for c in commands) for q in QUICK_START), "the quick start changed: update QUICK_START"
    commands = [c for c in commands if not c.startswith(QUICK_START)] + bash_commands(REPO / "docs/tts.md")
    assert len(commands) >= 20
    made_by_the_quick_start(repo, env)
    synthesized_wavs(repo, env)
    used = set()
    for cmd in commands:
        proc = run(cmd, repo, env)
        for pattern, check in CHECKS:
            if re.search(pattern, cmd):
                used.add(pattern)
                assert check(proc, repo), f"README command ran but did not do its job: {cmd}\n{proc.stdout[-2000:]}"
    stale = [pattern for pattern, _ in CHECKS if pattern not in used]
    assert not stale, f"no README/docs command matches these checks any more: {stale}"


@pytest.mark.parametrize("doc", ["README.md", "docs/tts.md"])
def test_runnable_blocks_hold_no_placeholders(doc):
    found = [c for c in bash_commands(REPO / doc) if PLACEHOLDER.search(c)]
    assert not found, f"placeholders belong in prose or a non-bash block: {found}"


def test_quick_start_commands_exist():
    """The quick start is not run here (it is the 9-minute bench and this suite): its parts exist and parse."""
    for cmd in QUICK_START:
        assert subprocess.run(["bash", "-n", "-c", cmd]).returncode == 0, cmd
    proc = subprocess.run([sys.executable, "-m", "spx", "bench", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "With no RECIPES" in proc.stdout
    assert 'spx = "spx.cli:main"' in (REPO / "pyproject.toml").read_text() and (REPO / "uv.lock").exists()
    assert subprocess.run(["bash", "-n", str(REPO / "scripts/test.sh")]).returncode == 0
    ci = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines() if line.strip()
          and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == ["bash scripts/test.sh"], ci  # CI runs exactly the README's test command
