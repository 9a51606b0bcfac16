"""Helpers for backend child processes: spec loading, progress lines, transcript cleaning, and the one
decoding/timing protocol every backend uses so speed figures compare fairly."""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from spx.manifests import Utterance, read_manifest
from spx.rundir import RunDir
from spx.spec import Spec
from spx import records
from spx.textclean import clean_transcript  # noqa: F401 - the steps import it from here

PROGRESS_PREFIX = "SPX_PROGRESS "


def load_run(run_dir: str | Path) -> tuple[Spec, RunDir]:
    rd = RunDir(run_dir)
    return rd.spec, rd


def rank() -> int:
    """This process's global rank under torchrun (0 alone): only rank 0 writes the run records."""
    return int(os.environ.get("RANK", "0"))


def gather_rank_counts(batches: int, updates: int) -> list[dict[str, int]]:
    """Every rank's {rank, batches, updates}, gathered on all ranks (one entry alone): what rank 0 records as the
    proof that every rank of a data-parallel run took part."""
    mine = {"rank": rank(), "batches": batches, "updates": updates}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    import torch

    if world > 1 and torch.distributed.is_initialized():
        ranks: list[Any] = [None] * world
        torch.distributed.all_gather_object(ranks, mine)
        return ranks
    return [mine]


def progress(**fields: Any) -> None:
    """One machine-readable progress line; the launcher shows it live, the log keeps it."""
    if rank() == 0:
        print(PROGRESS_PREFIX + json.dumps(fields, default=float), flush=True)




def char_vocabulary(texts: Sequence[str]) -> list[str]:
    return sorted({c for t in texts for c in t})


def set_threads(spec: Spec) -> int:
    import torch

    if spec.resources.threads:
        torch.set_num_threads(spec.resources.threads)
    return torch.get_num_threads()


def pick_device(spec: Spec) -> str:
    import torch

    want = spec.resources.accelerator
    if want == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("resources.accelerator is 'gpu' but torch sees no CUDA device")
    return "cuda" if (want in ("gpu", "auto") and torch.cuda.is_available()) else "cpu"


def precision_dtype(spec: Spec, device: str) -> str:
    """The dtype decoding/training actually uses; bf16/fp16 only where the device supports it."""
    p = spec.training.precision
    if device == "cpu" and p == "fp16":
        raise RuntimeError("training.precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[p]


def load_audio(utt: Utterance, sample_rate: int) -> np.ndarray:
    """Mono float32 at `sample_rate` of the [offset, offset+duration) segment (the whole file when offset is 0):
    the audio contract's one decode (spx/manifests/materialize.py), so pipes, codecs and rates read the same here
    as in the materialized run-dir manifests (which need no resampling)."""
    from spx.manifests.materialize import decode_utterance

    return decode_utterance(utt, sample_rate, where=f"utterance {utt.id!r}")


def test_utterances(spec: Spec) -> list[tuple[str, Utterance]]:
    """(test-set name, utterance) for every test manifest in the spec."""
    out = []
    for path in spec.test_sets:
        name = Path(path).stem
        out.extend((name, u) for u in read_manifest(path))
    return out


def time_batches(spec: Spec, run_batch: Callable[[list[np.ndarray]], list[Any]], device: str,
                 sample_rate: int | None = None) -> tuple[list, list[Any], list[float], list[float], int]:
    """The decoding protocol shared by every backend and task.

    Audio is read and resampled before the clock; the model is warmed up on `eval.warmup_batches`
    batches; the whole test set is then run `eval.speed_repeats` times in batches of `decoding.batch_size`
    (sorted by duration), and the clock covers run_batch only. Outputs come from the first repeat.
    Returns (test items, outputs, per-utterance seconds, seconds per repeat, number of batches)."""
    sr = sample_rate or spec.features.sample_rate
    items = test_utterances(spec)
    items.sort(key=lambda it: it[1].duration)
    audio = [load_audio(u, sr) for _, u in items]
    bs = spec.decoding.batch_size
    batches = [list(range(i, min(i + bs, len(items)))) for i in range(0, len(items), bs)]

    def sync() -> None:
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    for b in batches[: spec.eval.warmup_batches]:
        run_batch([audio[i] for i in b])
    sync()
    outputs: list[Any] = [None] * len(items)
    per_utt_time = [0.0] * len(items)
    totals = []
    for repeat in range(spec.eval.speed_repeats):
        total = 0.0
        for b in batches:
            t0 = time.perf_counter()
            out = run_batch([audio[i] for i in b])
            sync()
            dt = time.perf_counter() - t0
            total += dt
            if len(out) != len(b):
                raise RuntimeError(f"{getattr(run_batch, '__name__', 'the model')} returned {len(out)} results for "
                                   f"{len(b)} inputs")
            if repeat == 0:
                for i, o in zip(b, out):
                    outputs[i] = o
                    per_utt_time[i] = dt * items[i][1].duration / sum(items[j][1].duration for j in b)
        totals.append(total)
        progress(phase="decode", repeat=repeat + 1, of=spec.eval.speed_repeats, seconds=round(total, 3))
    return items, outputs, per_utt_time, totals, len(batches)


def write_speed(run_dir: RunDir, spec: Spec, device: str, dtype: str, items: list, totals: list[float],
                n_batches: int, clock: str) -> dict[str, Any]:
    """speed.json of the decoding protocol (time_batches), checked and written atomically."""
    import torch

    speed = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "dtype": dtype,
        "batch_size": spec.decoding.batch_size,
        "threads": torch.get_num_threads(),
        "warmup_batches": min(spec.eval.warmup_batches, n_batches),
        "repeats": spec.eval.speed_repeats,
        "audio_seconds": float(sum(u.duration for _, u in items)),
        "decode_seconds": totals,
        "median_decode_seconds": statistics.median(totals),
        "clock": clock,
        "utterances": len(items),
    }
    records.write(run_dir / "speed.json", records.Speed, speed)
    return speed


def decode_and_time(
    run_dir: RunDir,
    spec: Spec,
    transcribe_batch: Callable[[list[np.ndarray]], list[str]],
    device: str,
    dtype: str,
    sample_rate: int | None = None,
) -> dict[str, Any]:
    """ASR through the shared decoding protocol (time_batches): the clock covers transcribe_batch (feature
    extraction + model + search + detokenization). Writes hyps.jsonl and speed.json."""
    items, hyps, per_utt_time, totals, n_batches = time_batches(spec, transcribe_batch, device, sample_rate)
    rows = [
        {"id": u.id, "test_set": name, "ref": u.text or "", "hyp": h, "duration": u.duration, "decode_time": t}
        for (name, u), h, t in zip(items, hyps, per_utt_time)
    ]
    write_hyps(run_dir, spec, rows)
    return write_speed(run_dir, spec, device, dtype, items, totals, n_batches,
                       "model forward + search + detokenization on audio already in memory (features included)")


def write_hyps(run_dir: RunDir, spec: Spec, rows: list[dict[str, Any]]) -> None:
    """hyps.jsonl, each row checked against the task's record type first, written atomically."""
    for n, r in enumerate(rows, 1):
        records.check(r, records.HYP_TYPES[spec.task], f"{run_dir / 'hyps.jsonl'}: row {n}")
    with open(run_dir / "hyps.jsonl.tmp", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(run_dir / "hyps.jsonl.tmp", run_dir / "hyps.jsonl")


def append_curve(run_dir: RunDir, row: dict[str, Any]) -> None:
    if rank() != 0:
        return
    records.check(row, records.CurveRow, str(run_dir / "curve.jsonl"))
    with open(run_dir / "curve.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=float) + "\n")


def keep_curve_through(run_dir: RunDir, epoch: int) -> list[dict[str, Any]]:
    """On a (re)start: rows of epochs after `epoch` (the restored checkpoint's; 0 when training from scratch) were
    never saved with a checkpoint and are re-done, so they are dropped (rewritten atomically). Returns the rows kept."""
    curve = run_dir / "curve.jsonl"
    if not curve.exists():
        return []
    rows = [json.loads(line) for line in curve.read_text(encoding="utf-8").splitlines() if line.strip()]
    keep = [r for r in rows if r["epoch"] <= epoch]
    if len(keep) != len(rows):
        tmp = curve.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
        os.replace(tmp, curve)
    return keep


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_train_summary(run_dir: RunDir, **fields: Any) -> None:
    if rank() != 0:
        return
    records.write(run_dir / "train_summary.json", records.TrainSummary, fields)


def count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def main_guard(fn: Callable[[str], None]) -> None:
    """Entry point for `python -m spx.adapters.<backend>.<step> RUN_DIR`."""
    if len(sys.argv) != 2:
        print(f"usage: python -m {fn.__module__} RUN_DIR", file=sys.stderr)
        sys.exit(2)
    fn(sys.argv[1])


# ---------------------------------------------------------------- TTS
def synthesize_and_time(
    run_dir: RunDir,
    spec: Spec,
    synthesize: Callable[[Any, str | None], np.ndarray],  # (text, or the recording when copy_synthesis; speaker)
    sample_rate: int,
    device: str,
    dtype: str,
    vocoder: str,
    copy_synthesis: bool = False,
) -> dict[str, Any]:
    """The TTS synthesis protocol shared by every backend (the TTS twin of decode_and_time).

    One sentence at a time (autoregressive models stop per utterance, so batching would change the output);
    `eval.warmup_batches` sentences warm up; the test set is synthesized `eval.speed_repeats` times and the
    clock covers synthesize(text, speaker) only: text -> tokens -> acoustic model -> vocoder -> waveform.
    copy_synthesis (a vocoder job): synthesize(recording, speaker) instead, the test recording loaded and resampled
    before the clock; the clock covers recording -> mel -> vocoder -> waveform.
    Waveforms (and audio_seconds) come from the first repeat; they go to run_dir/synth/<id>.wav.
    """
    import soundfile as sf

    items = test_utterances(spec)
    texts = [clean_transcript(u.text or "", spec.tokenizer.lowercase) for _, u in items]
    if copy_synthesis:  # the vocoder's input is the recording; its text is kept for the intelligibility judge
        inputs: list[Any] = [load_audio(u, sample_rate) for _, u in items]
    else:
        for (name, u), t in zip(items, texts):
            if not t:
                raise RuntimeError(f"test utterance {u.id!r} of {name} has no text to synthesize")
        inputs = texts
    speakers = [u.speaker for _, u in items]

    def sync() -> None:
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    for i in range(min(spec.eval.warmup_batches, len(items))):
        synthesize(inputs[i], speakers[i])
    sync()
    out_dir = run_dir / "synth"
    out_dir.mkdir(exist_ok=True)
    wavs: list[np.ndarray] = []
    times: list[float] = []
    totals = []
    for repeat in range(spec.eval.speed_repeats):
        total = 0.0
        for i in range(len(items)):
            t0 = time.perf_counter()
            wav = synthesize(inputs[i], speakers[i])
            sync()
            dt = time.perf_counter() - t0
            total += dt
            if repeat == 0:
                wavs.append(np.asarray(wav, dtype=np.float32).reshape(-1))
                times.append(dt)
        totals.append(total)
        progress(phase="synthesize", repeat=repeat + 1, of=spec.eval.speed_repeats, seconds=round(total, 3))
    rows = []
    for (name, u), text, wav, dt in zip(items, texts, wavs, times):
        path = out_dir / f"{u.id}.wav"
        sf.write(path, wav, sample_rate, subtype="PCM_16")
        rows.append({"id": u.id, "test_set": name, "text": text, "speaker": u.speaker, "audio": str(path),
                     "ref_audio": u.audio, "duration": len(wav) / sample_rate, "synth_time": dt,
                     "sample_rate": sample_rate})
    write_hyps(run_dir, spec, rows)
    import torch

    speed = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "dtype": dtype,
        "batch_size": 1,
        "threads": torch.get_num_threads(),
        "warmup_batches": min(spec.eval.warmup_batches, len(items)),
        "repeats": spec.eval.speed_repeats,
        "audio_seconds": float(sum(r["duration"] for r in rows)),
        "decode_seconds": totals,
        "median_decode_seconds": statistics.median(totals),
        "clock": (f"recording -> waveform per utterance (mel + vocoder: {vocoder}; audio loaded before the clock); "
                  if copy_synthesis else
                  f"text -> waveform per sentence (tokenize + acoustic model + vocoder: {vocoder}); ")
                 + "audio_seconds = generated seconds of the first repeat",
        "utterances": len(items),
        "vocoder": vocoder,
    }
    records.write(run_dir / "speed.json", records.Speed, speed)
    return speed
