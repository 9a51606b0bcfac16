"""Synthetic bench cells for report tests: real report inputs (the normalized files every adapter writes),
written by hand so the report can be checked without training. Not a mock of any toolkit."""
from __future__ import annotations

import json
from pathlib import Path

REFS = ["the cat sat on the mat", "hello world", "Mr. Smith paid 20 dollars", "a quick brown fox",
        "speech is fun", "one two three four five"]


def write_cell(out: Path, recipe: str, backend: str, hyps: list[str], decode_seconds=(1.0, 1.2, 1.1),
               state: str = "finished", error: str | None = None, seed: int = 1234) -> Path:
    cell = out / "runs" / f"{recipe}-{backend}"
    cell.mkdir(parents=True, exist_ok=True)
    (cell / "backend").write_text(backend + "\n")
    (cell / "spec.yaml").write_text(
        "spec_version: 1\nname: demo\ntask: asr\n"
        "data: {train: t.jsonl, valid: v.jsonl, test: test.jsonl}\n"
        f"training: {{seed: {seed}}}\neval: {{normalizer: whisper_english, bootstrap_samples: 500}}\n")
    (cell / "env.json").write_text(json.dumps({"spx_version": "0.1.0", "spx_git_sha": "abc123",
                                               "uv_lock_sha256_16": "0123456789abcdef",
                                               "packages": {"torch": "2.14.1", backend: "1.0"}}))
    (cell / "steps.json").write_text(json.dumps([{"name": "train", "argv": ["python", "-m", f"spx.adapters.{backend}.train", str(cell)],
                                                  "launch": "single", "log": "train.log", "env": {}}]))
    status = {"state": state}
    if state == "failed":
        status.update(error=error or "step 'train' failed (exit 1): boom", step="train", log=str(cell / "train.log"))
        (cell / "train.log").write_text("Traceback ...\nRuntimeError: boom\n")
        (cell / "status.json").write_text(json.dumps(status))
        return cell
    (cell / "status.json").write_text(json.dumps(status))
    with (cell / "hyps.jsonl").open("w") as fh:
        for i, (r, h) in enumerate(zip(REFS, hyps)):
            fh.write(json.dumps({"id": f"utt{i}", "test_set": "test", "ref": r, "hyp": h, "duration": 2.0,
                                 "decode_time": 0.1}) + "\n")
    (cell / "speed.json").write_text(json.dumps({
        "device": "cpu", "dtype": "float32", "batch_size": 8, "threads": 2, "warmup_batches": 2, "repeats": len(decode_seconds),
        "audio_seconds": 2.0 * len(REFS), "decode_seconds": list(decode_seconds), "clock": "model forward + search",
        "utterances": len(REFS)}))
    with (cell / "curve.jsonl").open("w") as fh:
        for ep in range(1, 4):
            fh.write(json.dumps({"epoch": ep, "step": ep * 10, "train_loss": 3.0 / ep, "valid_loss": 3.5 / ep,
                                 "time": 10.0 * ep}) + "\n")
    (cell / "train_summary.json").write_text(json.dumps({"wall_seconds": 30.0, "epochs": 3, "steps": 30,
                                                         "params": 812345, "peak_memory_mb": 900.0}))
    (cell / "metrics.json").write_text(json.dumps({"wer": None}))
    return cell


def write_demo_bench(out: Path) -> Path:
    write_cell(out, "demo", "nemo", REFS)
    write_cell(out, "demo", "speechbrain", ["the cat sat on a mat", "hello word", "mister smith paid twenty dollars",
                                             "a quick brown fox", "speech is fun", "one two three for five"],
               decode_seconds=(2.0, 2.2, 2.1))
    write_cell(out, "demo", "espnet", ["the cat sat", "hello world", "mr smith paid $20", "quick brown box",
                                        "speech is fun fun", "one two three four five"], decode_seconds=(0.5, 0.6, 0.55))
    return out
