"""spec -> run dir (render) and run dir -> outcome (collect + score). Launchers execute the steps in between."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from spx import records
from spx.adapters import get_adapter
from spx.demo.resolve import ensure_demo_data
from spx.envinfo import environment
from spx.errors import SpxError
from spx.manifests import iter_manifest, write_manifest
from spx.manifests.io import check_run_manifests
from spx.manifests.materialize import audio_summary, conform_manifest, default_cache_dir
from spx.rundir import RunDir, Step
from spx.spec import Spec, spec_to_yaml
from spx.yamlio import atomic_write_json, atomic_write_text


def default_run_dir(spec: Spec, backend: str, root: str | Path = "runs") -> Path:
    return Path(root) / f"{spec.name}-{backend}-{time.strftime('%Y%m%d-%H%M%S')}"


def _copy_manifest(src: str, dst: Path, spec: Spec, cache_dir: Path, audio_report: dict) -> str:
    """Copy a manifest into the run dir with absolute audio paths (validating every row on the way). For ASR and
    classification, every row then points at audio readable as is at features.sample_rate, mono (the audio
    contract, spx/manifests/materialize.py): the others are materialized into the shared audio cache first."""
    if spec.task == "tts":  # the TTS adapters re-write the audio themselves (tts_prepare) at tts.sample_rate
        write_manifest(dst, iter_manifest(src))
        return str(dst)
    audio_report[dst.name] = conform_manifest(src, dst, spec.features.sample_rate, cache_dir)
    return str(dst)


def render_run(spec: Spec, backend: str, run_dir: str | Path, force: bool = False) -> RunDir:
    """Create the run directory: resolved spec, manifests, native config and data, exact commands."""
    adapter = get_adapter(backend)
    adapter.supports(spec)  # says clearly, before anything is written, when a backend lacks the job
    ensure_demo_data([spec.data.train, spec.data.valid, *spec.test_sets])  # spx-demo:// corpora, made on first use
    check_run_manifests(spec)  # an empty or all-filtered manifest: one line naming data.*, before anything is written
    rd = RunDir(run_dir)
    if rd.path.exists() and any(rd.path.iterdir()):
        if not force:
            raise SpxError(f"run directory {rd.path} already exists",
                           hint="use --resume to continue it, --force to overwrite, or --run-dir for another")
        shutil.rmtree(rd.path)
    rd.path.mkdir(parents=True, exist_ok=True)
    try:
        mdir = rd / "manifests"
        spec = spec.model_copy(deep=True)
        data = spec.data
        cache_dir, audio = default_cache_dir(), {}
        data.train = _copy_manifest(data.train, mdir / "train.jsonl", spec, cache_dir, audio)
        data.valid = _copy_manifest(data.valid, mdir / "valid.jsonl", spec, cache_dir, audio)
        tests = []
        for i, t in enumerate(spec.test_sets):
            stem = Path(t).stem
            name = stem if stem not in ("train", "valid", "noise") else f"test{i}"
            tests.append(_copy_manifest(t, mdir / f"{name}.jsonl", spec, cache_dir, audio))
        data.test = tests if len(tests) > 1 else tests[0]
        noise = spec.augmentation.noise
        if noise is not None:  # clips the toolkit mixes into training audio: the same audio contract
            noise.manifest = _copy_manifest(noise.manifest, mdir / "noise.jsonl", spec, cache_dir, audio)
        if audio:
            atomic_write_json(mdir / "audio.json", audio_summary(spec.features.sample_rate, audio))
        atomic_write_text(rd / "spec.yaml", spec_to_yaml(spec))
        atomic_write_text(rd / "backend", backend + "\n")
        steps: list[Step] = adapter.render(spec, rd)
        rd.write_steps(steps)
        atomic_write_json(rd / "env.json", environment())
        rd.set_status("rendered", completed_steps=[], backend=backend, spec_name=spec.name)
    except BaseException as exc:
        rd.set_status("failed", error=f"render failed: {exc}")
        raise
    return rd


def finalize_run(rd: RunDir) -> dict:
    """collect the normalized outcome and score it into metrics.json."""
    from spx.bench.scoring import score_run

    adapter = get_adapter(rd.backend)
    result = adapter.collect(rd)
    metrics = score_run(result, rd.spec)
    records.write(rd / "metrics.json", records.Metrics, metrics)
    return metrics
