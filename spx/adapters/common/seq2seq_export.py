"""Child-process side of `spx export` for encoder-decoder ASR (Whisper on hf and SpeechBrain, whose integration wraps
a Transformers WhisperModel): two ONNX graphs (torch.onnx.export, dynamo=False, as the other exporters)
  encoder.onnx   input_features [1, n_mels, 3000] -> encoder_hidden_states [1, 1500, d_model]
  decoder.onnx   input_ids [B, n] + encoder_hidden_states [B, 1500, d_model] -> logits of the last position [B, V]
(whatever the run's model holds is traced as it is: merged LoRA on hf, SpeechBrain's LoRA wrappers in place), the
numpy Whisper log-mel (spx.deploy.features.WhisperLogMelFrontend, the model's filterbank), the run's tokenizer files
and its search settings in export.json; then the parity check (spx.deploy.parity.check_seq2seq_parity) of the numpy
engine (spx.deploy.seq2seq.Seq2SeqEngine) against the toolkit's own decode, batch 1, on the test utterances.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from spx.adapters.common.export import (_base_info, _begin, _finish, _provenance, _time_per_pass, _write_info,
                                        file_size, parity_audio, quantize_onnx)
from spx.deploy.engine import EXPORT_JSON
from spx.deploy.features import WhisperLogMelFrontend
from spx.deploy.parity import check_seq2seq_parity
from spx.deploy.seq2seq import TOKENIZER_DIR, Seq2SeqEngine

GRAPHS = {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}


@dataclass
class Seq2SeqExporter:
    """What a backend's whisper exporter gives to export_seq2seq_run."""

    backend: str
    route: str
    whisper: Any                                    # the transformers WhisperModel (encoder + decoder) to trace
    output_weight: Any                              # [V, d_model]: logits = decoder states @ output_weight.T
    frontend: WhisperLogMelFrontend
    tokenizer: Any                                  # the run's transformers tokenizer (saved into the artefact)
    search: dict[str, Any]                          # export.json `search` (spx.deploy.seq2seq)
    reference: Callable[[np.ndarray], str]          # toolkit: waveform -> its decoded text (batch 1)
    reference_first_logits: Callable[[np.ndarray], np.ndarray]  # toolkit: waveform -> logits after the prompt [V]
    toolkit_features: Callable[[np.ndarray], np.ndarray]        # toolkit: waveform -> log-mel [n_mels, 3000]


def whisper_frontend(feature_extractor: Any) -> WhisperLogMelFrontend:
    """The checkpoint's WhisperFeatureExtractor settings and filterbank as spx's numpy frontend."""
    fe = feature_extractor
    mel = np.asarray(fe.mel_filters, dtype=np.float64)
    if mel.shape[0] != fe.feature_size:
        mel = mel.T  # transformers keeps it [n_freq, n_mels]
    return WhisperLogMelFrontend({"kind": "whisper_log_mel", "sample_rate": int(fe.sampling_rate),
                                  "n_fft": int(fe.n_fft), "hop_length": int(fe.hop_length),
                                  "n_samples": int(fe.n_samples),
                                  "toolkit": "Whisper's log-mel (WhisperFeatureExtractor's recipe and filterbank)"},
                                 mel)


def write_graphs(whisper: Any, output_weight: Any, out: Path, opset: int, n_mels: int,
                 n_frames: int) -> dict[str, str]:
    """encoder.onnx and decoder.onnx of a transformers WhisperModel (see the module docstring)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = whisper.encoder

        def forward(self, input_features):
            return self.encoder(input_features).last_hidden_state

    class DecoderStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = whisper.decoder
            self.register_buffer("output_weight", output_weight.detach().clone())

        def forward(self, input_ids, encoder_hidden_states):
            # an all-ones mask: without one, transformers looks for packed sequences with aten::diff (no ONNX op)
            states = self.decoder(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                  encoder_hidden_states=encoder_hidden_states, use_cache=False).last_hidden_state
            return states[:, -1] @ self.output_weight.T

    feats = torch.randn(1, n_mels, n_frames)
    with torch.inference_mode(False), torch.no_grad():
        enc_module, dec_module = Encoder().eval(), DecoderStep().eval()
        torch.onnx.export(enc_module, (feats,), str(out / GRAPHS["encoder"]), dynamo=False, opset_version=opset,
                          input_names=["input_features"], output_names=["encoder_hidden_states"])
        enc = enc_module(feats)
        ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=torch.long)
        torch.onnx.export(dec_module, (ids, enc.expand(2, -1, -1).contiguous()), str(out / GRAPHS["decoder"]),
                          dynamo=False, opset_version=opset, input_names=["input_ids", "encoder_hidden_states"],
                          output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "encoder_hidden_states": {0: "batch"}, "logits": {0: "batch"}})
    return dict(GRAPHS)


def artefact_info(folder: Path) -> dict[str, Any]:
    return json.loads((folder / EXPORT_JSON).read_text())


def write_artefact(out: Path, whisper: Any, output_weight: Any, frontend: WhisperLogMelFrontend, tokenizer: Any,
                   search: dict[str, Any], opset: int = 17) -> dict[str, str]:
    """The graphs, frontend, tokenizer and an export.json with what Seq2SeqEngine reads (format, graphs, search,
    tokenizer) into `out`; export_seq2seq_run adds the run's provenance and checks to it."""
    fe = frontend
    out.mkdir(parents=True, exist_ok=True)
    n_frames = int(fe.settings["n_samples"]) // int(fe.settings["hop_length"])
    graphs = write_graphs(whisper, output_weight, out, opset, fe.mel.shape[0], n_frames)
    fe.save(out)
    tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    info = {"format": "onnx", "task": "asr",
            "kind": "seq2seq", "graphs": graphs, "model_file": graphs["decoder"],
            "inputs": {"encoder": ["input_features"], "decoder": ["input_ids", "encoder_hidden_states"]},
            "input_shapes": {"input_features": [1, fe.mel.shape[0], n_frames], "input_ids": ["batch", "tokens"],
                             "encoder_hidden_states": ["batch", "encoder_frames", "d_model"]},
            "outputs": {"encoder": ["encoder_hidden_states"], "decoder": ["logits"]},
            "frontend": {"json": "frontend.json", "arrays": "frontend.npz", "input": "Whisper log-mel, 30 s "
                         "(numpy frontend, spx.deploy.features.WhisperLogMelFrontend)"},
            "tokenizer": {"dir": TOKENIZER_DIR, "class": type(tokenizer).__name__},
            "search": search, "sample_rate": fe.sample_rate, "padding_changes_outputs": False}
    (out / EXPORT_JSON).write_text(json.dumps(info, indent=2) + "\n")
    return graphs


def export_seq2seq_run(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int,
                       exporter: Seq2SeqExporter, parity_utterances: int = 0) -> dict[str, Any]:
    """Write the artefact into out_dir, check it against the toolkit's decode, time both, write export.json."""
    if fmt != "onnx":
        raise SystemExit("spx export: a whisper (encoder-decoder) run exports to --format onnx only: the numpy "
                         "search loop drives an encoder and a decoder-step graph through onnxruntime")
    if quantize not in (None, "int8"):
        raise SystemExit(f"spx export: --quantize {quantize} is not offered for whisper; use --quantize int8 "
                         "(onnxruntime dynamic quantization of both graphs)")
    spec, rd, out, threads, _, _ = _begin(run_dir, out_dir, fmt, quantize)
    t0 = time.perf_counter()
    fp32_dir = out / "fp32" if quantize else out
    fp32_dir.mkdir(exist_ok=True)
    fe = exporter.frontend
    graphs = write_artefact(fp32_dir, exporter.whisper, exporter.output_weight, fe, exporter.tokenizer,
                            exporter.search, opset)
    sizes: dict[str, int] = {"fp32_model_bytes": sum(file_size(fp32_dir / g) for g in graphs.values())}
    if quantize:
        for g in graphs.values():
            quantize_onnx(fp32_dir / g, out / g)
        sizes["int8_model_bytes"] = sum(file_size(out / g) for g in graphs.values())
        fe.save(out)
        exporter.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    info: dict[str, Any] = {**_base_info(spec, exporter, fmt, quantize, opset), **artefact_info(fp32_dir),
                            **_provenance(spec, rd)}
    _write_info(out, info)
    engine = Seq2SeqEngine(out, threads=threads)
    fp32_engine = Seq2SeqEngine(fp32_dir, threads=threads) if quantize else None
    export_seconds = time.perf_counter() - t0

    wavs = parity_audio(spec, parity_utterances)
    toolkit = [(np.asarray(exporter.reference_first_logits(w), dtype=np.float32), exporter.reference(w))
               for _, _, w in wavs]
    got = [(engine.first_logits(w), engine.transcribe([w])[0]) for _, _, w in wavs]
    feat_diff = max(float(np.abs(exporter.toolkit_features(w) - fe(w)[0]).max()) for _, _, w in wavs)
    parity = check_seq2seq_parity(ids=[i for i, _, _ in wavs], refs=[t for _, t, _ in wavs], toolkit=toolkit,
                                  exported=got, quantized=bool(quantize), feature_max_abs_diff=feat_diff)
    audio = [w for _, _, w in wavs]
    speed = {"threads": threads, "audio_seconds": sum(len(w) for w in audio) / fe.sample_rate, "batch": 1,
             "torch_seconds": _time_per_pass(exporter.reference, audio, repeats=1),
             "export_seconds": _time_per_pass(lambda w: engine.transcribe([w]), audio, repeats=1)}
    if fp32_engine is not None:
        speed["fp32_export_seconds"] = _time_per_pass(lambda w: fp32_engine.transcribe([w]), audio, repeats=1)
        import shutil

        shutil.rmtree(fp32_dir)
    return _finish(out, info, sizes, parity, speed, export_seconds, None)
