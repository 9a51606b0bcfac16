"""int8 options for an ONNX ASR export (issue 17's int8 target: >= 2x torch RTFx at <= 1 point WER loss): onnxruntime
dynamic quantization of MatMul/Gemm (what `spx export --quantize int8` does) per-tensor, per-channel, reduce-range,
with Conv too, and static quantization (QOperator, per-channel, MinMax calibration on valid-set features) of Conv and
Conv+MatMul; then RTFx (the whole test set in batches of 8, median of 3 passes, interleaved, 1 thread; features
included, as the engine runs) and WER of each, and where the fp32 graph spends its time (onnxruntime's op profile).

    python benchmarks/int8_options.py EXPORT_DIR [--out DIR] [--calibration 24]

EXPORT_DIR: an fp32 ONNX ASR export (`spx export RUN_DIR`). Prints figures; changes nothing in the export.
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="where the quantized copies go (default: a temp dir)")
    p.add_argument("--calibration", type=int, default=24, help="valid utterances for static calibration")
    a = p.parse_args()

    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    from spx.adapters.common import child
    from spx.deploy.engine import ExportEngine
    from spx.deploy.parity import wer
    from spx.manifests import read_manifest
    from spx.rundir import RunDir

    src = a.export_dir
    info = json.loads((src / "export.json").read_text())
    if info["format"] != "onnx" or info.get("quantize") or info.get("task", "asr") != "asr":
        raise SystemExit(f"{src}: an fp32 ONNX ASR export is needed")
    spec = RunDir(info["source_run"]).spec
    fp32 = ExportEngine(src, threads=1)
    items = child.test_utterances(spec)
    wavs = [child.load_audio(u, spec.features.sample_rate) for _, u in items]
    refs = [child.clean_transcript(u.text or "") for _, u in items]
    audio_s = sum(len(w) for w in wavs) / spec.features.sample_rate
    calib = [child.load_audio(u, spec.features.sample_rate) for u in list(read_manifest(spec.data.valid))[: a.calibration]]
    inputs = [info["inputs"]["features"], info["inputs"]["lengths"]]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([fp32.frontend.batch([w]) for w in calib])

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else dict(zip(inputs, x))

    mm = ["MatMul", "Gemm"]
    dynamic = {"dynamic MatMul (spx export)": {}, "dynamic MatMul per-channel": {"per_channel": True},
               "dynamic MatMul reduce-range": {"reduce_range": True}, "dynamic MatMul+Conv": {"ops": mm + ["Conv"]}}
    static = {"static Conv": ["Conv"], "static Conv+MatMul": ["Conv", "MatMul"]}
    out = a.out or Path(tempfile.mkdtemp(prefix="spx-int8-"))
    engines = {"fp32": fp32}
    for name, opts in {**dynamic, **static}.items():
        d = out / name.replace(" ", "_").replace("(", "").replace(")", "")
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
        if name in dynamic:
            opts = dict(opts)
            quantize_dynamic(str(src / "model.onnx"), str(d / "model.onnx"), weight_type=QuantType.QInt8,
                             op_types_to_quantize=opts.pop("ops", mm), **opts)
        else:
            quantize_static(str(src / "model.onnx"), str(d / "model.onnx"), Reader(), quant_format=QuantFormat.QOperator,
                            op_types_to_quantize=opts, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        engines[name] = ExportEngine(d, threads=1)

    batches = [wavs[i: i + 8] for i in range(0, len(wavs), 8)]
    times: dict[str, list[float]] = {n: [] for n in engines}
    hyps: dict[str, list[str]] = {}
    for e in engines.values():
        e.transcribe(batches[0])
    for _ in range(3):
        for n, e in engines.items():
            t0 = time.perf_counter()
            hyps[n] = [h for b in batches for h in e.transcribe(b)]
            times[n].append(time.perf_counter() - t0)
    base = audio_s / statistics.median(times["fp32"])
    print(f"{info['backend']} {src}: {len(wavs)} test utterances, {audio_s:.1f} s, batch 8, 1 thread")
    print(f"{'variant':32s} {'RTFx':>7s} {'x fp32':>7s} {'WER %':>6s} {'MB':>6s}")
    for n, e in engines.items():
        rtfx = audio_s / statistics.median(times[n])
        w = wer(refs, [child.clean_transcript(h) for h in hyps[n]])
        print(f"{n:32s} {rtfx:7.1f} {rtfx / base:7.2f} {100 * w:6.2f} {(e.dir / 'model.onnx').stat().st_size / 1e6:6.2f}")

    # where the fp32 engine spends its time: numpy frontend vs graph, and the graph's ops
    t_front = t_graph = 0.0
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(out / "profile")
    session = ort.InferenceSession(str(src / "model.onnx"), so, providers=["CPUExecutionProvider"])
    for b in batches:
        t0 = time.perf_counter()
        feats, lengths = fp32.frontend.batch(b)
        t1 = time.perf_counter()
        session.run(None, dict(zip(inputs, [feats, lengths])))
        t_front, t_graph = t_front + t1 - t0, t_graph + time.perf_counter() - t1
    ops: collections.Counter = collections.Counter()
    for ev in json.loads(Path(session.end_profiling()).read_text()):
        if ev.get("cat") == "Node":
            ops[ev["args"].get("op_name")] += ev["dur"]
    total = sum(ops.values()) or 1
    print(f"fp32 time: numpy frontend {t_front:.3f} s, graph {t_graph:.3f} s; graph ops: " +
          ", ".join(f"{op} {100 * us / total:.0f}%" for op, us in ops.most_common(6)))


if __name__ == "__main__":
    main()
