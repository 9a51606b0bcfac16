"""Child-process side of `spx export` shared by the backends' steps/export.py: write the artefact (graph, frontend,
vocabulary), quantize, check parity against the toolkit's own model, time it, write export.json.

A backend's exporter supplies the toolkit parts (how to write its graph, its frontend settings, its vocabulary, and
a reference = the toolkit's own waveform -> (log-probs, greedy text) path); everything after is the same for all.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from spx.adapters.common import child
from spx.deploy.engine import (EXPORT_JSON, TEXT_JSON, TOKENS_JSON, VOCODER_JSON, VOCODER_NPZ, ClassifierEngine,
                               ExportEngine, TtsEngine, mel_to_ln)
from spx.deploy.features import LogMelFrontend, WaveformFrontend
from spx.deploy.parity import (LOGIT_TOLERANCE, LOGPROB_TOLERANCE, check_classifier_parity, check_parity,
                               check_tts_parity, check_tts_waveform_parity)

FORMATS = ("onnx", "torchscript")
QUANTIZE = ("int8", "int8-static")  # int8-static: ONNX only (onnxruntime static quantization, calibrated)
CALIBRATION_UTTERANCES = 24         # valid-set utterances whose activation ranges int8-static calibrates on
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}


@dataclass
class Exporter:
    """What a backend's steps/export.py gives to export_run."""

    backend: str
    route: str                                                  # how the graph is made, for export.json and docs
    write_graph: Callable[[Path, str, int, bool], dict[str, Any]]  # (path, fmt, opset, int8_torchscript) -> io info
    frontend: LogMelFrontend | WaveformFrontend                 # the numpy side of the graph's input
    tokens: dict[str, Any]                                      # tokens.json
    reference: Callable[[np.ndarray], tuple[np.ndarray, str]]   # toolkit: waveform -> (log-probs [T, V], greedy text)
    toolkit_features: Callable[[np.ndarray], np.ndarray] | None = None  # toolkit frontend [T, n_mels], for parity


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Export a finished spx run (child side of `spx export`).")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="onnx")
    p.add_argument("--quantize", choices=list(QUANTIZE), default=None)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--parity-utterances", type=int, default=0, help="test utterances to check (0: all)")
    return p.parse_args(argv)


def main(export_fn: Callable[..., dict[str, Any]], argv: list[str] | None = None) -> None:
    """`python -m spx.adapters.<b>.steps.export RUN_DIR OUT_DIR --format ... [--quantize int8] [--opset N]`:
    exit 0 when the artefact passed its parity check, 3 when it did not (the artefact is still written: the caller,
    spx export, writes into a temp dir and discards it)."""
    a = parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    info = export_fn(a.run_dir, a.out_dir, a.fmt, a.quantize, a.opset, parity_utterances=a.parity_utterances)
    sys.exit(0 if info["parity"]["passed"] else 3)


def trace_encoder_ctc(net: Any, path: Path, fmt: str, opset: int, int8: bool, n_mels: int, masks: Any) -> dict[str, Any]:
    """Write a features -> (log-probs, output lengths) module as ONNX (the TorchScript-based exporter, dynamo=False:
    the dynamo one needs onnxscript, which the lock does not hold) or TorchScript; batch, frames and output frames are
    dynamic. `masks`: a context manager that makes the toolkit's padding masks traceable while it runs."""
    import torch

    net = net.eval()
    if int8:
        net = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
    n_frames = 400  # example input; every axis but features is dynamic
    example = (torch.randn(2, n_frames, n_mels), torch.tensor([n_frames, n_frames - 37]))
    with masks, torch.inference_mode(False), torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(net, example, str(path), dynamo=False, opset_version=opset,
                              input_names=["features", "lengths"], output_names=["log_probs", "out_lengths"],
                              dynamic_axes={"features": {0: "batch", 1: "frames"}, "lengths": {0: "batch"},
                                            "log_probs": {0: "batch", 1: "out_frames"}, "out_lengths": {0: "batch"}})
        else:
            torch.jit.save(torch.jit.trace(net, example, check_trace=False), str(path))
    return {"inputs": {"features": "features", "lengths": "lengths"},
            "input_shapes": {"features": ["batch", "frames", "n_mels"], "lengths": ["batch"]},
            "outputs": {"log_probs": "log_probs", "lengths": "out_lengths"},
            "output_order": ["log_probs", "out_lengths"],
            "output_shapes": {"log_probs": ["batch", "out_frames", "vocab"], "out_lengths": ["batch"]}}


def trace_features_to_logits(net: Any, path: Path, fmt: str, opset: int, int8: bool, n_mels: int,
                             masks: Any = None) -> dict[str, Any]:
    """A classifier's features [B, T, n_mels] + lengths [B] -> logits [B, classes] module as ONNX (dynamo=False, as
    trace_encoder_ctc) or TorchScript; batch and frames are dynamic."""
    import contextlib

    import torch

    net = net.eval()
    if int8:
        net = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
    n_frames = 120  # example input (a ~1.2 s clip); every axis but features is dynamic
    example = (torch.randn(2, n_frames, n_mels), torch.tensor([n_frames, n_frames - 37]))
    with masks or contextlib.nullcontext(), torch.inference_mode(False), torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(net, example, str(path), dynamo=False, opset_version=opset,
                              input_names=["features", "lengths"], output_names=["logits"],
                              dynamic_axes={"features": {0: "batch", 1: "frames"}, "lengths": {0: "batch"},
                                            "logits": {0: "batch"}})
        else:
            torch.jit.save(torch.jit.trace(net, example, check_trace=False), str(path))
    return {"inputs": {"features": "features", "lengths": "lengths"},
            "input_shapes": {"features": ["batch", "frames", "n_mels"], "lengths": ["batch"]},
            "outputs": {"logits": "logits"}, "output_order": ["logits"],
            "output_shapes": {"logits": ["batch", "classes"]}}


WAV2VEC2_EPSILON = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm: (x - mean) / sqrt(var + 1e-7)


def waveform_frontend(fe) -> WaveformFrontend:
    """The checkpoint's Wav2Vec2FeatureExtractor as spx's numpy frontend (normalised over each utterance's own
    samples, as hf's decode step and s3prl's hf experts call it with return_attention_mask=True)."""
    if type(fe).__name__ != "Wav2Vec2FeatureExtractor" or fe.feature_size != 1:
        raise SystemExit(f"spx export: the feature extractor {type(fe).__name__} (feature_size "
                         f"{getattr(fe, 'feature_size', '?')}) is not a raw-waveform Wav2Vec2FeatureExtractor; "
                         "spx's numpy frontend reproduces only that one")
    return WaveformFrontend({"kind": "waveform", "sample_rate": int(fe.sampling_rate),
                             "do_normalize": bool(fe.do_normalize), "epsilon": WAV2VEC2_EPSILON,
                             "padding_value": float(fe.padding_value),
                             "attention_mask": bool(fe.return_attention_mask),
                             "toolkit": "transformers.Wav2Vec2FeatureExtractor; the feature encoder is in the graph"})


def sample_mask(waveform, lengths):
    """The attention mask of a padded waveform batch, from its sample counts (inside the graph: batch-dynamic)."""
    import torch

    return (torch.arange(waveform.shape[1], device=waveform.device)[None, :] < lengths[:, None]).long()


def trace_waveform_graph(net: Any, path: Path, fmt: str, opset: int, int8: bool,
                         outputs: dict[str, list[str]]) -> dict[str, Any]:
    """A raw-waveform graph (hf ssl_ctc/ssl_classifier, SpeechBrain ssl_ctc: the SSL model's convolutional feature
    encoder is inside): (waveform [B, S], lengths [B]) -> `outputs` (name -> axis names) as ONNX (dynamo=False, as
    trace_encoder_ctc) or TorchScript; batch, samples and every output axis but vocab/classes are dynamic."""
    import torch

    net = net.eval()
    if int8:
        net = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
    n_samples = 16000  # example input (1 s); every axis is dynamic
    example = (torch.randn(2, n_samples), torch.tensor([n_samples, n_samples - 3217]))
    with torch.inference_mode(False), torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(net, example, str(path), dynamo=False, opset_version=opset,
                              input_names=["waveform", "lengths"], output_names=list(outputs),
                              dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "lengths": {0: "batch"},
                                            **{name: {i: axis for i, axis in enumerate(axes) if axis != "vocab"
                                                      and axis != "classes"} for name, axes in outputs.items()}})
        else:
            torch.jit.save(torch.jit.trace(net, example, check_trace=False), str(path))
    return {"inputs": {"features": "waveform", "lengths": "lengths"},
            "input_shapes": {"waveform": ["batch", "samples"], "lengths": ["batch"]},
            "output_order": list(outputs), "output_shapes": outputs}


def frontend_info(frontend: LogMelFrontend | WaveformFrontend) -> dict[str, str]:
    """export.json's account of the numpy frontend (spx.deploy.features.load_frontend reads frontend.json's kind)."""
    if isinstance(frontend, WaveformFrontend):
        return {"json": "frontend.json", "input": "waveform, normalised per utterance (numpy frontend, "
                "spx.deploy.features.WaveformFrontend)"}
    return {"json": "frontend.json", "arrays": "frontend.npz",
            "input": "log-mel features (numpy frontend, spx.deploy.features)"}


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def parity_audio(spec, limit: int) -> list[tuple[str, str, np.ndarray]]:
    """(id, reference text, waveform) of the run's test set (the first `limit`; 0: all)."""
    items = child.test_utterances(spec)
    if limit:
        items = items[:limit]
    return [(u.id, u.text or "", child.load_audio(u, spec.features.sample_rate)) for _, u in items]


def _time_per_pass(fn: Callable[[np.ndarray], Any], wavs: list[np.ndarray], repeats: int = 2) -> float:
    """Median seconds to run fn over every waveform one at a time (after one warm-up pass)."""
    for w in wavs[:2]:
        fn(w)
    totals = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w in wavs:
            fn(w)
        totals.append(time.perf_counter() - t0)
    return statistics.median(totals)


STATIC_OP_TYPES = ("Conv", "MatMul")
# a raw-waveform graph (wav2vec2/HuBERT/WavLM): its feature encoder's convolutions see audio samples, whose per-tensor
# uint8 ranges moved the tiny HuBERT's log-probs by 5-7 (no hypothesis kept); its MatMuls alone moved them by 0.26
WAVEFORM_STATIC_OP_TYPES = ("MatMul",)


def quantize_onnx(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]] | None = None,
                  op_types: tuple[str, ...] = STATIC_OP_TYPES) -> None:
    """int8 (calibration None): onnxruntime dynamic quantization: int8 weights of MatMul/Gemm (and the attention's),
    activations quantized on the fly; convolutions stay fp32 (dynamic ConvInteger ran 0.5-0.7x fp32 on the demo
    models). int8-static (calibration: feeds of valid-set features): static quantization in the QOperator format,
    per-tensor int8 weights, uint8 activations with MinMax ranges from the calibration feeds, of Conv and MatMul
    (QLinearConv / QLinearMatMul: 1.4-1.9x the fp32 graph on the demo ASR models where dynamic MatMul gave 1.1-1.3x).
    A convolution over one input channel (the first one on the features) is quantized, or left fp32, whichever graph
    runs the calibration feeds in less CPU time: on the NeMo demo conformer (its output goes through fp32 masking)
    fp32 took the graph from 1.2x to 1.45x fp32, on SpeechBrain's it cost 1.9x -> 1.45x. Per-tensor weights: with
    that conv fp32, per-channel ones lost 2 words of the 140-word demo test set on NeMo, per-tensor none (measured by
    benchmarks/int8_options.py and benchmarks/deploy_bench.py with onnxruntime 1.31 on CPU). `op_types`: what the
    static quantizer quantizes (WAVEFORM_STATIC_OP_TYPES for a graph that takes the raw waveform)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    if calibration is None:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        return

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(calibration)

        def get_next(self):
            return next(self.feeds, None)

    import onnx

    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {w.name: list(w.dims) for w in graph.initializer}
    single_channel_convs = [
        n.name for n in graph.node
        if "Conv" in op_types and n.op_type == "Conv" and len(weights.get(n.input[1], [])) > 1
        and weights[n.input[1]][1] == 1 and next((a.i for a in n.attribute if a.name == "group"), 1) == 1]
    # the static quantizer reads a Conv's weight and bias as initializers: one computed in the graph (the bias of
    # wav2vec2/HuBERT's weight-normed positional conv reaches it through an Identity) keeps that Conv fp32
    computed = [n.name for n in graph.node if n.op_type == "Conv" and any(x and x not in weights for x in n.input[1:])]
    tries = {(): dst} if not single_channel_convs else {
        (): dst.with_name(dst.stem + ".all-quantized.onnx"),
        tuple(single_channel_convs): dst.with_name(dst.stem + ".first-conv-fp32.onnx")}
    try:
        for exclude, path in tries.items():
            quantize_static(str(src), str(path), Feeds(), quant_format=QuantFormat.QOperator,
                            op_types_to_quantize=list(op_types), nodes_to_exclude=[*exclude, *computed],
                            per_channel=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    except RuntimeError as exc:  # e.g. SpeechBrain's ECAPA-TDNN: "Invalid model with unknown initializers/tensors"
        raise SystemExit(f"spx export: onnxruntime's static quantizer cannot quantize this graph ({exc}); "
                         "use --quantize int8 (dynamic)") from None
    if len(tries) > 1:
        cpu = {exclude: _graph_cpu_seconds(path, calibration) for exclude, path in tries.items()}
        best = min(cpu, key=cpu.get)
        print(f"spx export: int8-static: {', '.join(single_channel_convs)} (one input channel) "
              f"{'left fp32' if best else 'quantized'}: {cpu[best]:.3f} s of CPU on the calibration feeds against "
              f"{max(cpu.values()):.3f} s the other way", flush=True)
        tries[best].replace(dst)
        for path in tries.values():
            path.unlink(missing_ok=True)


def _graph_cpu_seconds(model: Path, feeds: list[dict[str, np.ndarray]], passes: int = 3) -> float:
    """The least CPU time (one thread) of `passes` runs of the graph over the feeds, after a warm-up: CPU time, as
    the wall clock of a shared machine moves more than the 20-30 % this has to tell apart."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    session.run(None, feeds[0])
    best = float("inf")
    for _ in range(passes):
        t0 = time.process_time()
        for feed in feeds:
            session.run(None, feed)
        best = min(best, time.process_time() - t0)
    return best


def calibration_feeds(spec, engine: Any) -> list[dict[str, np.ndarray]]:
    """The graph's inputs for the first CALIBRATION_UTTERANCES utterances of the run's valid set, one per feed."""
    from spx.manifests import read_manifest

    utts = list(read_manifest(spec.data.valid))[:CALIBRATION_UTTERANCES]
    io = engine.info["inputs"]
    feeds = []
    for u in utts:
        feats, lengths = engine.frontend.batch([child.load_audio(u, spec.features.sample_rate)])
        feeds.append({io["features"]: feats, **({io["lengths"]: lengths} if io.get("lengths") else {})})
    return feeds


def _quantize(fmt: str, quantize: str, spec, fp32_path: Path, int8_path: Path, fp32_engine: Any, exporter: Any,
              opset: int, info: dict[str, Any]) -> None:
    if fmt == "onnx":
        waveform = isinstance(exporter.frontend, WaveformFrontend)
        quantize_onnx(fp32_path, int8_path, calibration_feeds(spec, fp32_engine) if quantize == "int8-static" else None,
                      WAVEFORM_STATIC_OP_TYPES if waveform else STATIC_OP_TYPES)
    elif quantize == "int8-static":
        raise SystemExit("spx export: --quantize int8-static is ONNX only (TorchScript takes int8: PyTorch dynamic "
                         "quantization)")
    else:
        info.update(exporter.write_graph(int8_path, fmt, opset, True))


def export_run(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int, exporter: Exporter,
               parity_utterances: int = 0) -> dict[str, Any]:
    """Write the artefact into out_dir (made here; the caller owns atomicity), check it, return export.json."""
    spec, rd, out, threads, model_file, fp32_path = _begin(run_dir, out_dir, fmt, quantize)
    t0 = time.perf_counter()
    io = exporter.write_graph(fp32_path, fmt, opset, False)
    exporter.frontend.save(out)
    (out / TOKENS_JSON).write_text(json.dumps(exporter.tokens, ensure_ascii=False, indent=1) + "\n")
    sizes: dict[str, int] = {"fp32_model_bytes": file_size(fp32_path)}
    info: dict[str, Any] = {
        **_base_info(spec, exporter, fmt, quantize, opset),
        "model_file": model_file, **io, "frontend": frontend_info(exporter.frontend),
        "tokenizer": TOKENS_JSON, "sample_rate": exporter.frontend.sample_rate,
        **_provenance(spec, rd),
    }
    _write_info(out, info)  # the engine reads it (fp32 engine first)
    wavs = parity_audio(spec, parity_utterances)
    fp32_engine = None
    if quantize:
        tmp_info = dict(info, model_file=fp32_path.name)
        _write_info(out, tmp_info)
        fp32_engine = ExportEngine(out, threads=threads)
        int8_path = out / model_file
        _quantize(fmt, quantize, spec, fp32_path, int8_path, fp32_engine, exporter, opset, info)
        sizes["int8_model_bytes"] = file_size(int8_path)
        _write_info(out, info)
    engine = ExportEngine(out, threads=threads)
    export_seconds = time.perf_counter() - t0

    refs = [exporter.reference(w) for _, _, w in wavs]
    got = [engine.run_padded([w])[0] for _, _, w in wavs]
    # does a padded batch give each utterance what it gets alone? (the engine batches only equal lengths if not)
    padded = [lp for i in range(0, len(wavs), 8) for lp in engine.run_padded([w for _, _, w in wavs[i: i + 8]])]
    padding_diff = max(float(np.abs(a - b).max()) if a.shape == b.shape else float("inf") for a, b in zip(padded, got))
    info["padding_changes_outputs"] = padding_diff > LOGPROB_TOLERANCE
    info["padding_max_abs_logprob_diff"] = padding_diff
    hyps = [engine.ctc.text(engine.ctc.best_path(lp)) for lp in got]
    feat_diff = None
    if exporter.toolkit_features is not None:
        feat_diff = max(float(np.abs(exporter.toolkit_features(w) - exporter.frontend(w)[0]).max()) for _, _, w in wavs)
    parity = check_parity(ids=[i for i, _, _ in wavs], refs=[t for _, t, _ in wavs],
                          toolkit=[(lp, text) for lp, text in refs], exported=list(zip(got, hyps)),
                          quantized=bool(quantize), feature_max_abs_diff=feat_diff)
    audio_s = sum(len(w) for _, _, w in wavs) / exporter.frontend.sample_rate
    speed = {"threads": threads, "audio_seconds": audio_s, "batch": 1,
             "torch_seconds": _time_per_pass(exporter.reference, [w for _, _, w in wavs])}
    speed["export_seconds"] = _time_per_pass(lambda w: engine.transcribe([w]), [w for _, _, w in wavs])
    if quantize:
        speed["fp32_export_seconds"] = _time_per_pass(lambda w: fp32_engine.transcribe([w]), [w for _, _, w in wavs])
    return _finish(out, info, sizes, parity, speed, export_seconds, fp32_path if quantize else None)


@dataclass
class ClassifierExporter:
    """What a backend's classification exporter gives to export_classifier_run."""

    backend: str
    route: str
    write_graph: Callable[[Path, str, int, bool], dict[str, Any]]  # (path, fmt, opset, int8_torchscript) -> io info
    frontend: LogMelFrontend | WaveformFrontend                 # the numpy side of the graph's input
    classes: list[str]                                          # the graph's output order
    reference: Callable[[np.ndarray], np.ndarray]               # toolkit: waveform -> logits [classes] (graph's output)
    logit_scale: float = 1.0                                    # softmax(scale * logits) = the toolkit's probabilities
    toolkit_features: Callable[[np.ndarray], np.ndarray] | None = None


def export_classifier_run(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int,
                          exporter: ClassifierExporter, parity_utterances: int = 0) -> dict[str, Any]:
    """export_run for task: classification: graph + frontend + classes in export.json, parity on logits and top-1
    labels (spx.deploy.parity.check_classifier_parity), timing against the toolkit's forward."""
    spec, rd, out, threads, model_file, fp32_path = _begin(run_dir, out_dir, fmt, quantize)
    t0 = time.perf_counter()
    io = exporter.write_graph(fp32_path, fmt, opset, False)
    exporter.frontend.save(out)
    sizes: dict[str, int] = {"fp32_model_bytes": file_size(fp32_path)}
    info: dict[str, Any] = {
        **_base_info(spec, exporter, fmt, quantize, opset),
        "model_file": fp32_path.name, **io, "frontend": frontend_info(exporter.frontend),
        "classes": list(exporter.classes), "top_k": spec.classification.top_k, "logit_scale": exporter.logit_scale,
        "padding_changes_outputs": True, "sample_rate": exporter.frontend.sample_rate,
        **_provenance(spec, rd),
    }
    _write_info(out, info)
    items = child.test_utterances(spec)[: parity_utterances or None]
    utts = [(u.id, u.label or "", child.load_audio(u, spec.features.sample_rate)) for _, u in items]
    wavs = [w for _, _, w in utts]
    fp32_engine = ClassifierEngine(out, threads=threads) if quantize else None
    if quantize:
        int8_path = out / model_file
        _quantize(fmt, quantize, spec, fp32_path, int8_path, fp32_engine, exporter, opset, info)
        sizes["int8_model_bytes"] = file_size(int8_path)
    info["model_file"] = model_file
    _write_info(out, info)
    engine = ClassifierEngine(out, threads=threads)
    export_seconds = time.perf_counter() - t0

    refs = [np.asarray(exporter.reference(w), dtype=np.float32) for w in wavs]
    got = [engine.logits([w])[0] for w in wavs]
    # does a padded batch give each clip what it gets alone? (the engine batches only clips of one length if not)
    padded = [row for i in range(0, len(wavs), 8) for row in engine.run_padded(wavs[i: i + 8])]
    padding_diff = max(float(np.abs(exporter.logit_scale * (a - b)).max()) for a, b in zip(padded, got))
    info["padding_changes_outputs"] = padding_diff > LOGIT_TOLERANCE
    info["padding_max_abs_logit_diff"] = padding_diff
    feat_diff = None
    if exporter.toolkit_features is not None:
        feat_diff = max(float(np.abs(exporter.toolkit_features(w) - exporter.frontend(w)[0]).max()) for w in wavs)
    parity = check_classifier_parity(ids=[i for i, _, _ in utts], ref_labels=[lab for _, lab, _ in utts],
                                     classes=engine.classes, toolkit=refs, exported=got, quantized=bool(quantize),
                                     scale=exporter.logit_scale, feature_max_abs_diff=feat_diff)
    audio_s = sum(len(w) for w in wavs) / exporter.frontend.sample_rate
    speed = {"threads": threads, "audio_seconds": audio_s, "batch": 1,
             "torch_seconds": _time_per_pass(exporter.reference, wavs),
             "export_seconds": _time_per_pass(lambda w: engine.classify([w]), wavs)}
    if fp32_engine is not None:
        speed["fp32_export_seconds"] = _time_per_pass(lambda w: fp32_engine.classify([w]), wavs)
    return _finish(out, info, sizes, parity, speed, export_seconds, fp32_path if quantize else None)


@dataclass
class TtsExporter:
    """What a backend's TTS exporter gives to export_tts_run (the acoustic model; the vocoder is Griffin-Lim in the
    engine, or a vocoder graph the exporter writes)."""

    backend: str
    route: str
    write_graph: Callable[[Path, str, int, bool], dict[str, Any]]  # (path, fmt, opset, int8_torchscript) -> io info
    text: dict[str, Any]                                        # text.json (spx.deploy.engine.TextTable)
    toolkit_ids: Callable[[str], list[int]]                     # the toolkit's own text -> token ids
    # toolkit: (text, speaker) -> log-mel [frames, n_mels]; a waveform graph (vocoder kind none): (text, speaker,
    # the noise the engine fed the graph) -> waveform [samples]
    reference: Callable[..., np.ndarray]
    vocoder: dict[str, Any]                                     # vocoder.json (kind griffin_lim | graph | none)
    vocoder_arrays: dict[str, np.ndarray] | None = None        # griffin_lim: {"mel_basis": [n_mels, n_freq]}
    write_vocoder: Callable[[Path, str, int], dict[str, Any]] | None = None  # graph: (path, fmt, opset) -> io info
    speakers: dict[str, int] | None = None                      # name -> the graph's speaker id (None: one voice)


def _default_input_order(io: dict[str, Any]) -> list[str]:
    roles = io["inputs"]
    return [roles[r] for r in ("ids", "lengths", "speaker") if roles.get(r)] + list(io.get("extra_inputs") or {})


def export_tts_run(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int, exporter: TtsExporter,
                   parity_utterances: int = 0) -> dict[str, Any]:
    """export_run for task: tts: acoustic graph + text.json + vocoder.json (+ vocoder graph), parity of token ids and
    log-mels on the test sentences (spx.deploy.parity.check_tts_parity), acoustic-model speed against the toolkit's
    (the vocoder is left out on both sides), and one sentence through the whole engine (waveform check). A graph
    that outputs the waveform itself (vocoder kind none: ESPnet VITS) is compared on waveforms instead, the toolkit
    given the noise the engine drew (check_tts_waveform_parity), and timed whole on both sides."""
    if quantize == "int8-static":
        raise SystemExit("spx export: --quantize int8-static calibrates on audio features; a TTS model takes "
                         "--quantize int8 (dynamic)")
    spec, rd, out, threads, model_file, fp32_path = _begin(run_dir, out_dir, fmt, quantize)
    t0 = time.perf_counter()
    io = exporter.write_graph(fp32_path, fmt, opset, False)
    io.setdefault("input_order", _default_input_order(io))
    (out / TEXT_JSON).write_text(json.dumps(exporter.text, ensure_ascii=False, indent=1) + "\n")
    vocoder = dict(exporter.vocoder)
    if vocoder["kind"] == "graph":
        if exporter.write_vocoder is None:
            raise ValueError("a graph vocoder needs the exporter's write_vocoder")
        vocoder.update(exporter.write_vocoder(out / vocoder["model_file"], fmt, opset))
    elif vocoder["kind"] != "none":
        np.savez(out / VOCODER_NPZ, **{k: np.asarray(v, dtype=np.float32)
                                       for k, v in (exporter.vocoder_arrays or {}).items()})
    (out / VOCODER_JSON).write_text(json.dumps(vocoder, indent=1) + "\n")
    # an autoregressive model (Tacotron2) writes several graphs (io["graphs"]: role -> model_file, io names)
    fp32_files = [out / g["model_file"] for g in io["graphs"].values()] if io.get("graphs") else [fp32_path]
    sizes: dict[str, int] = {"fp32_model_bytes": sum(file_size(f) for f in fp32_files)}
    info: dict[str, Any] = {
        **_base_info(spec, exporter, fmt, quantize, opset),
        "model_file": fp32_path.name, **io, "text": TEXT_JSON, "vocoder": VOCODER_JSON,
        "speakers": dict(exporter.speakers or {}), "sample_rate": int(vocoder["sample_rate"]),
        **_provenance(spec, rd),
    }
    if io.get("graphs"):
        del info["model_file"]  # the graphs name their files
    _write_info(out, info)
    fp32_engine = TtsEngine(out, threads=threads) if quantize else None
    if quantize:
        int8_path = out / model_file
        if fmt == "onnx" and io.get("graphs"):
            for g in info["graphs"].values():
                g["model_file"] = g["model_file"].replace(".fp32.", ".")
                quantize_onnx(out / g["model_file"].replace(".", ".fp32.", 1), out / g["model_file"])
        elif fmt == "onnx":
            quantize_onnx(fp32_path, int8_path)
        else:
            info.update(exporter.write_graph(int8_path, fmt, opset, True))
        sizes["int8_model_bytes"] = (sum(file_size(out / g["model_file"]) for g in info["graphs"].values())
                                     if io.get("graphs") else file_size(int8_path))
    if not io.get("graphs"):
        info["model_file"] = model_file
    _write_info(out, info)
    engine = TtsEngine(out, threads=threads)
    export_seconds = time.perf_counter() - t0

    items = child.test_utterances(spec)[: parity_utterances or None]
    sentences = [(u.id, u.text or "", u.speaker if engine.speaker_ids else None) for _, u in items]
    hop = int(vocoder.get("hop_length") or 0)
    if vocoder["kind"] == "none":  # the graph's waveform against the toolkit's, given the same noise
        runs = [engine.waveform_graph(engine.text.ids(text), spk) for _, text, spk in sentences]
        got = [wav for wav, _ in runs]
        refs = [np.asarray(exporter.reference(text, spk, noise), dtype=np.float32).reshape(-1)
                for (_, text, spk), (_, noise) in zip(sentences, runs)]
        check, units = partial(check_tts_waveform_parity, hop_length=hop), "samples"
    else:
        log = vocoder.get("log", {"base": "e"})
        refs = [mel_to_ln(np.asarray(exporter.reference(text, spk), dtype=np.float32), log)
                for _, text, spk in sentences]
        got = [mel_to_ln(engine.mel(text, spk), log) for _, text, spk in sentences]
        check, units = check_tts_parity, "frames"
    parity = check(ids=[i for i, _, _ in sentences],
                   toolkit_ids=[exporter.toolkit_ids(text) for _, text, _ in sentences],
                   exported_ids=[engine.text.ids(text) for _, text, _ in sentences], toolkit=refs, exported=got,
                   quantized=bool(quantize))
    # the whole engine on the longest sentence: a waveform one hop per frame, not silent
    longest = max(range(len(sentences)), key=lambda i: len(got[i]))
    wav, rate = engine.synthesize([sentences[longest][1:]])[0]
    parity["waveform"] = {"id": sentences[longest][0], "seconds": len(wav) / rate,
                          "rms": float(np.sqrt(np.mean(np.square(wav)))) if len(wav) else 0.0,
                          units: len(got[longest]), "hop_length": hop or None}
    if not len(wav) or not np.isfinite(wav).all() or parity["waveform"]["rms"] <= 1e-5:
        parity["passed"] = False
        parity["summary"] += "; the engine's waveform is empty, silent or not finite"
    if vocoder["kind"] == "none":
        texts = [(text, spk, noise) for (_, text, spk), (_, noise) in zip(sentences, runs)]
        audio_s = sum(len(r) for r in refs) / rate
        measures = "the whole model (text -> waveform, the same noise on both sides)"

        def exported(e: TtsEngine, text: str, spk: str | None, noise: dict[str, np.ndarray]) -> Any:
            return e.waveform_graph(e.text.ids(text), spk)
    else:
        texts = [(text, spk) for _, text, spk in sentences]
        frames = sum(len(r) for r in refs)
        audio_s = frames * hop / rate if hop else float("nan")
        measures = "the acoustic model (log-mel); the vocoder is left out on both sides"

        def exported(e: TtsEngine, text: str, spk: str | None) -> Any:
            return e.mel(text, spk)
    speed = {"threads": threads, "audio_seconds": audio_s, "batch": 1, "measures": measures,
             "torch_seconds": _time_per_pass(lambda ts: exporter.reference(*ts), texts),
             "export_seconds": _time_per_pass(lambda ts: exported(engine, *ts), texts)}
    if fp32_engine is not None:
        speed["fp32_export_seconds"] = _time_per_pass(lambda ts: exported(fp32_engine, *ts), texts)
    return _finish(out, info, sizes, parity, speed, export_seconds, fp32_files if quantize else None)


def _begin(run_dir: str, out_dir: str, fmt: str, quantize: str | None):
    """(spec, run dir, out dir (made), threads, the artefact's model file name, where the fp32 graph goes)."""
    spec, rd = child.load_run(run_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = child.set_threads(spec)
    model_file = MODEL_FILES[fmt]
    fp32_path = out / (model_file.replace("model.", "model.fp32.") if quantize else model_file)
    return spec, rd, out, threads, model_file, fp32_path


def _base_info(spec, exporter: Any, fmt: str, quantize: str | None, opset: int) -> dict[str, Any]:
    return {"spx_export": 1, "backend": exporter.backend, "task": spec.task, "family": spec.model.family,
            "format": fmt, "quantize": quantize, "opset": opset if fmt == "onnx" else None, "route": exporter.route}


def _provenance(spec, rd) -> dict[str, Any]:
    import torch

    return {"spx_version": _spx_version(), "torch": torch.__version__, "source_run": str(rd.path.resolve()),
            "spec_name": spec.name}


def _finish(out: Path, info: dict[str, Any], sizes: dict[str, int], parity: dict[str, Any], speed: dict[str, Any],
            export_seconds: float, fp32_graph: Path | list[Path] | None) -> dict[str, Any]:
    """RTFx from every timing in `speed`, the fp32 graph of a quantized artefact removed (its size and speed stay in
    export.json), export.json written, the summary printed."""
    for k in [k for k in speed if k.endswith("_seconds") and k != "audio_seconds"]:
        speed[k.replace("_seconds", "_rtfx")] = speed["audio_seconds"] / speed[k] if speed[k] else None
    for graph in [fp32_graph] if isinstance(fp32_graph, Path) else fp32_graph or []:
        graph.unlink()
    sizes["artefact_bytes"] = file_size(out)
    info.update(sizes=sizes, parity=parity, speed=speed, export_seconds=round(export_seconds, 2),
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _write_info(out, info)
    _print_summary(info)
    return info


def _write_info(out: Path, info: dict[str, Any]) -> None:
    tmp = out / (EXPORT_JSON + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, default=float) + "\n")
    os.replace(tmp, out / EXPORT_JSON)


def _spx_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spx")
    except PackageNotFoundError:
        return "unknown"


def _print_summary(info: dict[str, Any]) -> None:
    p, s, z = info["parity"], info["speed"], info["sizes"]
    kind = f"{info['format']}{'-' + info['quantize'] if info['quantize'] else ''}"
    print(f"spx export: {info['backend']} -> {kind}: parity {'passed' if p['passed'] else 'FAILED'} on "
          f"{p['utterances']} utterances: {p['summary']}", flush=True)
    line = f"spx export: RTFx torch {s['torch_rtfx']:.1f}, {kind} {s['export_rtfx']:.1f}"
    if "fp32_export_rtfx" in s:
        line += f", fp32 {s['fp32_export_rtfx']:.1f}"
    line += f" (batch 1, {s['threads']} threads); model {z.get('int8_model_bytes', z['fp32_model_bytes']) / 1e6:.2f} MB"
    if "int8_model_bytes" in z:
        line += f" (fp32 {z['fp32_model_bytes'] / 1e6:.2f} MB)"
    print(line, flush=True)
