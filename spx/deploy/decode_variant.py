"""Child process of `spx bench --variants` (spx.bench.variants): a bench cell's test set decoded by one variant,
the toolkit model (torch: the family's INFERENCE loader, toolkit imported here) or an export (its deploy engine), with
the cell's protocol: decoding.batch_size batches in the hyps' order, eval.warmup_batches first, eval.speed_repeats
timed passes (median), resources.threads intra-op threads.

A TTS cell's test sentences are spoken instead (synthesize), the same way.

`python -m spx.deploy.decode_variant CELL VARIANT OUT_JSON [EXPORT_DIR]`
"""
from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from spx.adapters import get_adapter
from spx.deploy.engine import ClassifierEngine, load_engine
from spx.manifests import read_manifest
from spx.manifests.materialize import decode_utterance
from spx.rundir import RunDir


def decode(cell: Path, variant: str, export_dir: Path | None) -> dict[str, Any]:
    """The cell's test set through `variant` (torch: the family's INFERENCE loader; else the export's engine):
    hyps rows (the cell's, hypothesis replaced) and timing."""
    rd = RunDir(cell)
    spec = rd.spec
    classification = spec.task == "classification"
    if variant == "torch":
        import torch

        if spec.resources.threads:
            torch.set_num_threads(spec.resources.threads)
        module = importlib.import_module(get_adapter(rd.backend).inference_module(spec))
        here = os.getcwd()
        os.chdir(rd.path)  # as the run's steps: a toolkit config may name files relative to the run dir
        try:
            run = getattr(module, "load_classifier" if classification else "load_transcriber")(str(rd.path), "cpu")
        finally:
            os.chdir(here)
        sample_rate = spec.features.sample_rate
    else:
        engine = load_engine(export_dir, threads=spec.resources.threads or None)
        run = engine.classify if isinstance(engine, ClassifierEngine) else engine.transcribe
        sample_rate = engine.sample_rate
    rows = [json.loads(line) for line in (cell / "hyps.jsonl").read_text().splitlines() if line.strip()]
    utts = {u.id: u for path in spec.test_sets for u in read_manifest(path)}
    wavs = [decode_utterance(utts[r["id"]], sample_rate, where=f"utterance {r['id']!r}") for r in rows]
    batch = spec.decoding.batch_size or 1
    batches = [list(range(i, min(i + batch, len(wavs)))) for i in range(0, len(wavs), batch)]
    for b in batches[: spec.eval.warmup_batches]:
        run([wavs[i] for i in b])
    totals, outs = [], None
    for _ in range(max(spec.eval.speed_repeats, 1)):
        out: list[Any] = [None] * len(wavs)
        t0 = time.perf_counter()
        for b in batches:
            for i, o in zip(b, run([wavs[i] for i in b])):
                out[i] = o
        totals.append(time.perf_counter() - t0)
        outs = outs or out
    if classification:
        new_rows = [{**r, "label": label, "scores": dict(sorted(s.items(), key=lambda kv: -kv[1])[: len(r["scores"])])}
                    for r, (label, s) in zip(rows, outs)]
    else:
        new_rows = [{**r, "hyp": text} for r, text in zip(rows, outs)]
    audio_s = sum(len(w) for w in wavs) / sample_rate
    median = statistics.median(totals)
    return {"rows": new_rows, "audio_seconds": audio_s, "decode_seconds": totals, "rtfx": audio_s / median,
            "batch_size": batch, "threads": spec.resources.threads}


def synthesize(cell: Path, variant: str, export_dir: Path | None) -> dict[str, Any]:
    """A TTS cell's test sentences spoken by `variant` (torch: the family's load_synthesizer; else the export's
    TtsEngine) with the cell's protocol (child.synthesize_and_time: one sentence at a time, eval.warmup_batches
    sentences first, eval.speed_repeats timed passes, the clock covering text -> waveform, vocoder included).
    The waveforms of the first pass go to CELL/variants/<variant>/<id>.wav; the rows are the cell's with them."""
    import soundfile as sf

    rd = RunDir(cell)
    spec = rd.spec
    if variant == "torch":
        import torch

        if spec.resources.threads:
            torch.set_num_threads(spec.resources.threads)
        module = importlib.import_module(get_adapter(rd.backend).inference_module(spec))
        here = os.getcwd()
        os.chdir(rd.path)
        try:
            run = module.load_synthesizer(str(rd.path), "cpu")
        finally:
            os.chdir(here)
    else:
        run = load_engine(export_dir, threads=spec.resources.threads or None).synthesize
    rows = [json.loads(line) for line in (cell / "hyps.jsonl").read_text().splitlines() if line.strip()]
    inputs = [(r["text"], r.get("speaker")) for r in rows]
    for item in inputs[: spec.eval.warmup_batches]:
        run([item])
    out_dir = cell / "variants" / variant
    out_dir.mkdir(parents=True, exist_ok=True)
    totals, new_rows = [], []
    for repeat in range(max(spec.eval.speed_repeats, 1)):
        total = 0.0
        for r, item in zip(rows, inputs):
            t0 = time.perf_counter()
            (wav, rate), = run([item])
            dt = time.perf_counter() - t0
            total += dt
            if repeat == 0:
                path = out_dir / f"{r['id']}.wav"
                sf.write(path, np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), rate, subtype="PCM_16")
                new_rows.append({**r, "audio": str(path), "duration": len(wav) / rate, "synth_time": dt,
                                 "sample_rate": rate})
        totals.append(total)
    audio_s = sum(r["duration"] for r in new_rows)
    return {"rows": new_rows, "audio_seconds": audio_s, "decode_seconds": totals,
            "rtfx": audio_s / statistics.median(totals), "batch_size": 1, "threads": spec.resources.threads}


def main(argv: list[str]) -> None:
    cell, variant, out = Path(argv[0]), argv[1], Path(argv[2])
    export_dir = Path(argv[3]) if len(argv) > 3 else None
    tts = RunDir(cell).spec.task == "tts"
    result = (synthesize if tts else decode)(cell, variant, export_dir)
    out.write_text(json.dumps(result, default=float))


if __name__ == "__main__":
    main(sys.argv[1:])
