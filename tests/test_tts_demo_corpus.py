"""`spx-demo://tts/`: the TTS recipes' demo corpus, mapped to a cache folder when a recipe loads and made (flite +
sox) when a run is first rendered from it: once, under a lock, complete or not at all."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from spx.manifests import iter_manifest

REPO = Path(__file__).resolve().parent.parent
TACOTRON2 = REPO / "recipes" / "tacotron2.yaml"


def spx(*args, env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spx", *map(str, args)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def spx_env(cache: Path, **extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(cache), **extra}


def test_spec_show_maps_the_demo_paths_without_making_anything(tmp_path):
    proc = spx("spec", "show", TACOTRON2, env=spx_env(tmp_path / "cache"), cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    for split in ("train", "valid", "test"):
        assert f"{split}: {tmp_path}/cache/spx/tts-demo-v1/{split}.jsonl" in out
    assert not (tmp_path / "cache").exists()


def test_an_unknown_demo_path_is_one_clear_error(tmp_path):
    proc = spx("spec", "validate", TACOTRON2, "data.valid=spx-demo://tts/dev.jsonl", env=spx_env(tmp_path), cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "data.valid: unknown demo corpus path 'spx-demo://tts/dev.jsonl'" in err and "Traceback" not in err


def test_missing_flite_names_the_debian_package(tmp_path):
    bin_dir = tmp_path / "bin"  # sox but no flite on PATH
    bin_dir.mkdir()
    for tool in ("sox", "soxi"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = spx("run", "--backend", "speechbrain", TACOTRON2, "--run-dir", tmp_path / "run", "--dry-run",
               env=spx_env(tmp_path / "cache", PATH=str(bin_dir)), cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: flite not found") and "apt-get install flite" in lines[0]
    assert not (tmp_path / "cache" / "spx" / "tts-demo-v1").exists() and not (tmp_path / "run").exists()


def test_two_renders_at_once_make_the_corpus_once(tmp_path):
    cache = tmp_path / "cache"
    procs = [spx("run", "--backend", backend, TACOTRON2, "--run-dir", tmp_path / backend, "--dry-run",
                 env=spx_env(cache), cwd=tmp_path) for backend in ("espnet", "speechbrain")]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum(err.count("spx: making the TTS demo corpus") for err in errs) == 1  # the other waited on the lock
    corpus = cache / "spx" / "tts-demo-v1"
    assert sorted(p.name for p in (cache / "spx").iterdir()) == ["tts-demo-v1", "tts-demo-v1.lock"]  # no temp left
    sizes = {split: len(list(iter_manifest(corpus / f"{split}.jsonl"))) for split in ("train", "valid", "test")}
    assert sizes == {"train": 100, "valid": 10, "test": 10}
    for backend in ("espnet", "speechbrain"):  # each run copied the corpus's manifests
        assert len(list(iter_manifest(tmp_path / backend / "manifests" / "train.jsonl"))) == 100


def test_bench_dry_run_renders_the_tts_cells_and_leaves_earlier_cells_alone(tmp_path):
    """`spx bench --dry-run` (the README's TTS bench form): new cells rendered, an earlier cell untouched."""
    earlier = tmp_path / "out" / "runs" / "tacotron2-espnet"
    earlier.mkdir(parents=True)
    (earlier / "status.json").write_text('{"state": "failed"}')
    proc = spx("bench", TACOTRON2, "--backends", "espnet,speechbrain", "--out", tmp_path / "out", "--dry-run",
               env=spx_env(tmp_path / "cache"), cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "tacotron2-espnet: would be re-run (previous state failed); left as it is" in err
    assert sorted(p.name for p in earlier.iterdir()) == ["status.json"]
    assert "spx.adapters.speechbrain.steps.tts_train" in out and (tmp_path / "out/runs/tacotron2-speechbrain/command.sh").exists()
    assert not (tmp_path / "out" / "report.md").exists()
