"""Deployment figures (issue 17): per backend, the toolkit's torch model vs its ONNX export vs the ONNX-int8 exports
(dynamic `int8` and calibrated `int8-static`; RTFx and WER on the run's test set, the same batches for each), then
`spx serve` on the ONNX export: throughput and p50/p99 latency at 1, 8 and 32 concurrent clients.

    python benchmarks/deploy_bench.py RUN_DIR [RUN_DIR ...] [--threads 1] [--clients 1,8,32] [--requests 96] [--skip-serve]

Exports are made with `spx export` when RUN_DIR/export/onnx[-int8] is missing. Targets (issue 17): ONNX-int8 RTFx
>= 2x torch at <= 1 point WER loss; p99 at 8 clients <= 2x the single-request latency. The engines' repeats are
interleaved and each is timed on the wall clock and in CPU time (RTFx over the process's CPU seconds: on a machine
shared with other jobs it moves far less than the wall clock); the server rows add the responses' mean timing fields
(queue_ms, model_ms, model_cpu_ms, batch_size).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXPORTS = ("onnx", "onnx-int8", "onnx-int8-static")
sys.path.insert(0, str(REPO))


def engines_figures(run_dir: str, threads: int, repeats: int) -> dict:
    """(in a child process per backend) torch / onnx / onnx-int8[-static]: decode the test set in the run's batches."""
    import jiwer
    import torch

    from spx.adapters.common import child
    from spx.deploy.engine import ExportEngine
    from spx.adapters import get_adapter
    from spx.rundir import RunDir

    torch.set_num_threads(threads)
    rd = RunDir(run_dir)
    spec = rd.spec
    items = sorted(child.test_utterances(spec), key=lambda it: it[1].duration)
    audio = [child.load_audio(u, spec.features.sample_rate) for _, u in items]
    refs = [child.clean_transcript(u.text or "") for _, u in items]
    audio_s = sum(len(a) for a in audio) / spec.features.sample_rate
    bs = spec.decoding.batch_size
    batches = [audio[i: i + bs] for i in range(0, len(audio), bs)]
    engines = {"torch": importlib.import_module(get_adapter(rd.backend).inference_module(spec)).load_transcriber(run_dir, "cpu")}
    for kind in EXPORTS:
        engines[kind] = ExportEngine(rd.path / "export" / kind, threads=threads).transcribe
    out = {"backend": rd.backend, "audio_seconds": audio_s, "utterances": len(audio), "batch_size": bs,
           "threads": threads}
    for fn in engines.values():
        fn(batches[0])  # warm-up
    times: dict[str, list[float]] = {kind: [] for kind in engines}
    cpu: dict[str, list[float]] = {kind: [] for kind in engines}
    hyps: dict[str, list[str]] = {}
    for r in range(repeats):  # interleaved: a load change on the shared machine hits every engine alike
        for kind, fn in engines.items():
            t0, c0 = time.perf_counter(), time.process_time()
            got = [h for b in batches for h in fn(b)]
            times[kind].append(time.perf_counter() - t0)
            cpu[kind].append(time.process_time() - c0)
            hyps.setdefault(kind, got)
    for kind in engines:
        wall_s, cpu_s = statistics.median(times[kind]), statistics.median(cpu[kind])
        out[kind] = {"seconds": wall_s, "rtfx": audio_s / wall_s, "cpu_seconds": cpu_s, "cpu_rtfx": audio_s / cpu_s,
                     "wer": float(jiwer.wer(refs, [child.clean_transcript(h) for h in hyps[kind]]))}
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_figures(export_dir: Path, files: list[bytes], clients: list[int], requests: int, threads: int) -> dict:
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "spx", "serve", str(export_dir), "--port", str(port),
                             "--threads", str(threads), "--max-batch", "8", "--max-wait-ms", "5"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        out = {}
        for n in clients:
            latencies: list[float] = []
            timings: list[dict] = []
            lock = threading.Lock()
            count = iter(range(max(requests, n * 4)))

            def worker():
                with httpx.Client(timeout=120) as c:
                    c.post(url + "/v1/transcribe", content=files[0], headers={"content-type": "audio/flac"})
                    for i in count:
                        t0 = time.perf_counter()
                        r = c.post(url + "/v1/transcribe", content=files[i % len(files)],
                                   headers={"content-type": "audio/flac"})
                        dt = time.perf_counter() - t0
                        assert r.status_code == 200, r.text
                        with lock:
                            latencies.append(dt)
                            timings.append(r.json()["timing"])

            ts = [threading.Thread(target=worker) for _ in range(n)]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            wall = time.perf_counter() - t0
            lat = sorted(latencies)
            out[n] = {"requests": len(lat), "throughput_rps": len(lat) / wall,
                      "p50_ms": 1e3 * lat[len(lat) // 2], "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                      **{k: statistics.mean(t.get(k, float("nan")) for t in timings)
                         for k in ("queue_ms", "model_ms", "model_cpu_ms", "batch_size")}}
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--requests", type=int, default=96)
    p.add_argument("--skip-serve", action="store_true", help="engine figures only (no server)")
    p.add_argument("--engines-only", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.engines_only:
        print("JSON " + json.dumps(engines_figures(a.engines_only, a.threads, a.repeats)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(REPO)}
    clients = [int(c) for c in a.clients.split(",")]
    for run in a.runs:
        rd = Path(run)
        for kind in EXPORTS:
            if not (rd / "export" / kind / "export.json").is_file():
                fmt, _, q = kind.partition("-")
                subprocess.run([sys.executable, "-m", "spx", "export", run, "--format", fmt,
                                *(["--quantize", q] if q else [])], check=True, env=env, cwd=REPO)
        # in the run dir, as its decode step runs (an ESPnet config names its feature statistics relative to it)
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--engines-only", str(rd.resolve()),
                               "--threads", str(a.threads), "--repeats", str(a.repeats)],
                              capture_output=True, text=True, env=env, cwd=rd)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("JSON ")), None)
        if line is None:
            raise SystemExit(f"engine figures failed for {run}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        f = json.loads(line[5:])
        t = f["torch"]
        print(f"\n{f['backend']}: {f['utterances']} utterances, {f['audio_seconds']:.1f} s audio, batch "
              f"{f['batch_size']}, {f['threads']} thread(s), CPU")
        print(f"  {'engine':<16} {'RTFx':>8} {'x torch':>8} {'CPU RTFx':>9} {'x torch':>8} {'WER':>7} {'dWER pts':>9}")
        for kind in ("torch",) + EXPORTS:
            e = f[kind]
            print(f"  {kind:<16} {e['rtfx']:8.1f} {e['rtfx'] / t['rtfx']:8.2f} {e['cpu_rtfx']:9.1f} "
                  f"{e['cpu_rtfx'] / t['cpu_rtfx']:8.2f} {100 * e['wer']:7.2f} {100 * (e['wer'] - t['wer']):9.2f}")
        for kind in ("onnx-int8", "onnx-int8-static"):
            i8 = f[kind]
            ok = i8["rtfx"] >= 2 * t["rtfx"] and (i8["wer"] - t["wer"]) <= 0.01
            ok_cpu = i8["cpu_rtfx"] >= 2 * t["cpu_rtfx"] and (i8["wer"] - t["wer"]) <= 0.01
            print(f"  target {kind} >= 2x torch RTFx at <= 1 pt WER loss: {'met' if ok else 'NOT met'} "
                  f"(CPU-time RTFx: {'met' if ok_cpu else 'NOT met'})")
        print("JSON " + json.dumps(f))
        if a.skip_serve:
            continue
        manifest = [json.loads(x) for x in (rd / "manifests" / "test.jsonl").read_text().splitlines()[1:]]
        files = [Path(r["audio"]).read_bytes() for r in manifest]
        s = serve_figures(rd / "export" / "onnx", files, clients, a.requests, a.threads)
        print(f"  spx serve (onnx, max-batch 8, max-wait 5 ms): {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
              f" {'queue':>7} {'model':>7} {'cpu':>6} {'batch':>6}")
        for n, row in s.items():
            print(f"  {'':<44} {n:>7} {row['throughput_rps']:8.1f} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f}"
                  f" {row['queue_ms']:7.1f} {row['model_ms']:7.1f} {row['model_cpu_ms']:6.1f} {row['batch_size']:6.2f}")
        print("JSON " + json.dumps({"serve": s}))
        if 1 in s and 8 in s:
            ok = s[8]["p99_ms"] <= 2 * s[1]["p50_ms"]
            print(f"  target p99 at 8 clients <= 2x single-request latency: {'met' if ok else 'NOT met'} "
                  f"({s[8]['p99_ms']:.1f} vs {2 * s[1]['p50_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
