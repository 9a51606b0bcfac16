"""`spx serve` (server process): an HTTP API over an export dir (onnxruntime / TorchScript engine) or a run dir
(the family's inference loader: load_transcriber / load_classifier / load_synthesizer(run_dir, device), toolkit
imported here, in this process). One task endpoint, the run's or export's:

    POST /v1/transcribe   (asr) audio as multipart (field `file`) or as the raw body -> {text, duration, timing, ...}
    POST /v1/classify     (classification) the same audio input -> {label, scores (top-k), duration, timing, ...}
    POST /v1/synthesize   (tts) JSON {text, speaker?} -> audio/wav
    GET  /healthz         the process answers
    GET  /readyz          the model is loaded and the batcher runs (503 before)
    GET  /metrics         Prometheus: requests, latency, audio seconds, errors, batch sizes
    GET  /docs            OpenAPI

Concurrent requests are batched dynamically: the batcher takes the first waiting request, then waits up to
max_wait_ms for more, up to max_batch, and runs them as one model call (one at a time).
Bad input is a 4xx JSON error and never stops the server; a model error is a 500 with a request id (logged).

`python -m spx.deploy.server TARGET [--host --port --workers --max-batch --max-wait-ms --max-seconds --max-bytes
--max-chars]`
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile as sf
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from spx.errors import SpxError
from spx.textclean import clean_transcript

log = logging.getLogger("spx.serve")
CONFIG_ENV = "SPX_SERVE_CONFIG"
RAW_TYPES = ("audio/", "application/octet-stream")
MIN_SECONDS = 0.05  # a few STFT frames: shorter input breaks the frontends' padding and per-utterance statistics
LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


@dataclass
class ServeConfig:
    target: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_seconds: float = 60.0
    max_bytes: int = 20_000_000
    max_chars: int = 500
    device: str = "cpu"
    threads: int = 0


class Model:
    """From an export dir or a run dir: `task` and `run(list of inputs) -> list of outputs`, one per input.
    asr: waveforms at sample_rate -> texts; classification: waveforms -> (label, {class: probability});
    tts: (text, speaker) -> (waveform, sample rate)."""

    LOADERS = {"asr": "load_transcriber", "classification": "load_classifier", "tts": "load_synthesizer"}

    def __init__(self, cfg: ServeConfig):
        target = Path(cfg.target)
        self.top_k = 0
        if (target / "export.json").is_file():
            from spx.deploy.engine import ClassifierEngine, TtsEngine, load_engine

            engine = load_engine(target, threads=cfg.threads or None)
            info = engine.info
            self.task = info.get("task", "asr")
            if isinstance(engine, TtsEngine):
                def synthesize(batch: list[Any]) -> list[Any]:
                    return engine.synthesize(batch)

                synthesize.speakers = engine.speakers  # type: ignore[attr-defined]
                synthesize.check_text = engine.check_text  # type: ignore[attr-defined]
                self.run: Callable[[list[Any]], list[Any]] = synthesize
            else:
                self.run = engine.classify if isinstance(engine, ClassifierEngine) else engine.transcribe
            self.sample_rate = engine.sample_rate
            if self.task == "classification":
                self.top_k = int(info.get("top_k") or 3)
            self.describe = {"kind": "export", "task": self.task, "backend": info["backend"],
                             "format": info["format"], "quantize": info["quantize"], "path": str(target)}
        else:
            from spx.adapters import get_adapter
            from spx.rundir import RunDir

            rd = RunDir(target.resolve())
            spec = rd.spec
            self.task = spec.task
            if self.task not in self.LOADERS:
                raise SpxError(f"spx serve has no endpoint for task {self.task!r}", where=str(target))
            module = importlib.import_module(get_adapter(rd.backend).inference_module(spec))
            if cfg.threads:
                import torch

                torch.set_num_threads(cfg.threads)
            here = os.getcwd()
            os.chdir(rd.path)  # the run's steps run in the run dir; a toolkit config may name files relative to it
            try:
                self.run = getattr(module, self.LOADERS[self.task])(str(rd.path), cfg.device)
            finally:
                os.chdir(here)
            self.sample_rate = spec.features.sample_rate
            if self.task == "classification":
                self.top_k = spec.classification.top_k
            self.describe = {"kind": "run", "task": self.task, "backend": rd.backend, "format": "toolkit",
                             "quantize": None, "path": str(target), "device": cfg.device}

    @property
    def transcribe(self) -> Callable[[list[Any]], list[Any]]:  # the name the ASR callers know
        return self.run


class Batcher:
    """Dynamic batching: concurrent requests share one model call (at most max_batch, waiting max_wait_s)."""

    def __init__(self, fn: Callable[[list[np.ndarray]], list[str]], max_batch: int, max_wait_s: float, metrics):
        self.fn, self.max_batch, self.max_wait_s, self.metrics = fn, max_batch, max_wait_s, metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spx-model")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def submit(self, wav: np.ndarray) -> tuple[str, dict[str, Any]]:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((wav, fut, time.perf_counter()))
        return await fut

    def _call(self, inputs: list[Any]) -> tuple[list[Any], float]:
        """fn(inputs) and the CPU seconds its thread spent: model_ms far above model_cpu_ms means the model thread
        waited for a core (or the GIL), not that the model got slower."""
        t0 = time.thread_time()
        out = self.fn(inputs)
        return out, time.thread_time() - t0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            while len(items) < self.max_batch and not self.queue.empty():  # what waited while the model ran
                items.append(self.queue.get_nowait())
            deadline = loop.time() + self.max_wait_s
            while len(items) < self.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            items = [it for it in items if not it[1].done()]  # a client that went away
            if not items:
                continue
            t0 = time.perf_counter()
            try:
                texts, cpu = await loop.run_in_executor(self.executor, self._call, [w for w, _, _ in items])
                if len(texts) != len(items):
                    raise RuntimeError(f"the model returned {len(texts)} texts for {len(items)} inputs")
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request (a 500 each, logged)
                for _, fut, _ in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            dt = time.perf_counter() - t0
            self.metrics["batch"].observe(len(items))
            for (_, fut, queued), text in zip(items, texts):
                if not fut.done():
                    fut.set_result((text, {"queue_ms": (t0 - queued) * 1e3, "model_ms": dt * 1e3,
                                           "model_cpu_ms": cpu * 1e3, "batch_size": len(items)}))


def make_metrics():
    from prometheus_client import CollectorRegistry, Counter, Histogram

    reg = CollectorRegistry()
    return reg, {
        "requests": Counter("spx_requests", "HTTP requests answered", ["endpoint", "status"], registry=reg),
        "latency": Histogram("spx_request_latency_seconds", "time from request to response", ["endpoint"],
                             buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=reg),
        "audio": Counter("spx_audio_seconds", "seconds of audio taken (transcribe, classify) or made "
                                                   "(synthesize)", registry=reg),
        "errors": Counter("spx_errors", "requests that failed", ["kind"], registry=reg),
        "batch": Histogram("spx_batch_size", "requests per model call", buckets=(1, 2, 4, 8, 16, 32, 64),
                           registry=reg),
    }


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str):
        self.status, self.kind, self.message = status, kind, message


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes `limit` bytes, whatever Content-Length says."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"the request is {declared} bytes; the limit is {limit} (--max-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the request is over {limit} bytes (--max-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def request_audio(request: Request, limit: int) -> bytes:
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, "too_large", f"the request is {declared} bytes; the limit is {limit} (--max-bytes)")
        try:
            form = await request.form(max_files=1, max_fields=10)
        except Exception as exc:  # noqa: BLE001 - a malformed multipart body is the client's error
            raise ApiError(400, "bad_multipart", f"cannot parse the multipart body: {exc}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "no_file", "the multipart body has no file field named 'file'")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, "too_large", f"the file is over {limit} bytes (--max-bytes)")
        return data
    if ctype and not ctype.startswith(RAW_TYPES):
        raise ApiError(415, "content_type", f"content type {ctype!r} is not audio: send multipart/form-data with a "
                                            "'file' field, or the audio bytes as audio/* or application/octet-stream")
    return await read_limited(request, limit)


AUDIO_BODY = {"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}},
    "audio/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
ENDPOINTS = {"asr": "transcribe", "classification": "classify", "tts": "synthesize"}
DESCRIPTIONS = {"asr": "Speech recognition", "classification": "Audio classification", "tts": "Speech synthesis"}


class SynthesizeRequest(BaseModel):
    text: str
    speaker: str | None = None


def create_app(cfg: ServeConfig, model: Model | None = None) -> FastAPI:
    model = model or Model(cfg)
    registry, metrics = make_metrics()
    batcher = Batcher(model.run, cfg.max_batch, cfg.max_wait_ms / 1e3, metrics)
    endpoint = ENDPOINTS[model.task]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        log.info("spx serve: %s ready (batch <= %d, wait <= %.0f ms)", model.describe, cfg.max_batch, cfg.max_wait_ms)
        yield
        await batcher.stop()

    app = FastAPI(title="spx serve", version="1", lifespan=lifespan,
                  description=f"{DESCRIPTIONS[model.task]} with {model.describe['backend']} "
                              f"({model.describe['kind']}: {model.describe['format']}): POST /v1/{endpoint}")

    def answer(status: int, body: dict[str, Any], t0: float) -> JSONResponse:
        metrics["requests"].labels(endpoint, str(status)).inc()
        metrics["latency"].labels(endpoint).observe(time.perf_counter() - t0)
        return JSONResponse(body, status_code=status, headers={"X-Request-ID": body.get("request_id", "")})

    def failed(err: ApiError, rid: str, t0: float) -> JSONResponse:
        metrics["errors"].labels(err.kind).inc()
        return answer(err.status, {"error": err.kind, "detail": err.message, "request_id": rid}, t0)

    async def run_model(item: Any, rid: str) -> tuple[Any, dict[str, Any]]:
        try:
            return await batcher.submit(item)
        except Exception:  # noqa: BLE001 - the model failed: a 500, logged with the request id
            log.exception("spx serve: request %s: the model failed", rid)
            metrics["errors"].labels("model").inc()
            raise ApiError(500, "model_error", "the model failed on this request; the server log has the "
                                               "traceback") from None

    async def audio_in(request: Request, shape: Callable[[Any], dict[str, Any]]) -> JSONResponse:
        """An audio request (multipart or raw body) through the checks, the batcher and `shape` (result -> body)."""
        t0 = time.perf_counter()
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            data = await request_audio(request, cfg.max_bytes)
            if not data:
                raise ApiError(400, "empty", "the request has no audio bytes")
            try:
                wav, rate = await asyncio.get_running_loop().run_in_executor(
                    None, _decode, data, model.sample_rate)
            except SpxError as exc:
                detail = exc.message.replace("the piped command's output", "the request body")  # materialize's words
                raise ApiError(422, "not_audio", detail) from None
            duration = len(wav) / model.sample_rate
            if duration < MIN_SECONDS:
                raise ApiError(422, "too_short", f"the audio is {duration * 1e3:.1f} ms; the shortest the models "
                                                 f"take is {MIN_SECONDS * 1e3:.0f} ms")
            if duration > cfg.max_seconds:
                raise ApiError(413, "too_long", f"the audio is {duration:.1f} s; the limit is {cfg.max_seconds} s "
                                                "(--max-seconds)")
            result, timing = await run_model(wav, rid)
        except ApiError as err:
            return failed(err, rid, t0)
        metrics["audio"].inc(duration)
        timing["total_ms"] = (time.perf_counter() - t0) * 1e3
        return answer(200, {**shape(result), "duration": duration, "input_sample_rate": rate, "timing": timing,
                            "request_id": rid}, t0)

    if model.task == "asr":
        @app.post("/v1/transcribe", openapi_extra=AUDIO_BODY)
        async def transcribe(request: Request) -> JSONResponse:
            """Transcribe one recording (any codec and rate spx reads: WAV, FLAC, OGG, MP3 via ffmpeg, ...)."""
            return await audio_in(request, lambda text: {"text": text})

    if model.task == "classification":
        @app.post("/v1/classify", openapi_extra=AUDIO_BODY)
        async def classify(request: Request) -> JSONResponse:
            """Classify one recording: the best label and the top-k class probabilities (best first)."""
            def shape(result: tuple[str, dict[str, float]]) -> dict[str, Any]:
                label, scores = result
                best = sorted(scores.items(), key=lambda kv: -kv[1])[: model.top_k]
                return {"label": label, "scores": dict(best)}

            return await audio_in(request, shape)

    if model.task == "tts":
        @app.post("/v1/synthesize", responses={200: {"content": {"audio/wav": {}}}})
        async def synthesize(request: Request) -> Response:
            """Synthesize a sentence: JSON {text, speaker?} -> a WAV (16-bit PCM at the model's rate)."""
            t0 = time.perf_counter()
            rid = request.headers.get("x-request-id") or uuid.uuid4().hex
            try:
                body = await read_limited(request, cfg.max_bytes)
                try:
                    req = SynthesizeRequest.model_validate_json(body)
                except ValidationError as exc:
                    raise ApiError(422, "bad_request", "send JSON {\"text\": \"...\", \"speaker\": optional}: "
                                                       + "; ".join(e["msg"] for e in exc.errors()[:3])) from None
                text = req.text.strip()
                if not text:
                    raise ApiError(422, "empty_text", "the text is empty")
                if not clean_transcript(text):
                    raise ApiError(422, "no_speakable_text", "the text has no letter or digit to speak")
                if len(text) > cfg.max_chars:
                    raise ApiError(413, "too_long", f"the text has {len(text)} characters; the limit is "
                                                    f"{cfg.max_chars} (--max-chars)")
                check_text = getattr(model.run, "check_text", None)  # a model's own limits (too few symbols)
                if check_text is not None:
                    try:
                        check_text(text)
                    except ValueError as exc:
                        raise ApiError(422, "unspeakable_text", str(exc)) from None
                speakers = getattr(model.run, "speakers", None)
                if req.speaker is not None and speakers is not None and req.speaker not in speakers:
                    raise ApiError(422, "unknown_speaker", f"unknown speaker {req.speaker!r}; the model has "
                                                           f"{', '.join(speakers) if speakers else 'one voice'}")
                (wav, rate), timing = await run_model((text, req.speaker), rid)
            except ApiError as err:
                return failed(err, rid, t0)
            duration = len(wav) / rate
            metrics["audio"].inc(duration)
            buf = io.BytesIO()
            sf.write(buf, np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
            metrics["requests"].labels(endpoint, "200").inc()
            metrics["latency"].labels(endpoint).observe(time.perf_counter() - t0)
            return Response(buf.getvalue(), media_type="audio/wav", headers={
                "X-Request-ID": rid, "X-Audio-Duration": f"{duration:.3f}", "X-Sample-Rate": str(rate),
                "X-Model-Ms": f"{timing['model_ms']:.1f}", "X-Total-Ms": f"{(time.perf_counter() - t0) * 1e3:.1f}"})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ok = batcher.running
        return JSONResponse({"ready": ok, "model": model.describe}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _decode(data: bytes, sample_rate: int) -> tuple[np.ndarray, int]:
    from spx.deploy.audio import decode_audio_bytes

    return decode_audio_bytes(data, sample_rate)


def app_from_env() -> FastAPI:
    """uvicorn's factory for --workers > 1 (each worker process loads its own model)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))


def parse_args(argv: list[str] | None = None) -> ServeConfig:
    p = argparse.ArgumentParser(prog="spx serve")
    p.add_argument("target")
    for f in ("host", "port", "workers", "max_batch", "max_wait_ms", "max_seconds", "max_bytes", "max_chars", "device",
              "threads"):
        default = getattr(ServeConfig, f)
        p.add_argument("--" + f.replace("_", "-"), dest=f, type=type(default), default=default)
    return ServeConfig(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    if cfg.workers > 1:
        os.environ[CONFIG_ENV] = json.dumps(asdict(cfg))
        uvicorn.run("spx.deploy.server:app_from_env", factory=True, host=cfg.host, port=cfg.port,
                    workers=cfg.workers, log_level="info")
    else:
        uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="info")


if __name__ == "__main__":
    main()
