"""Run an export dir: numpy frontend -> the exported graph (onnxruntime, or TorchScript through torch) -> greedy CTC
-> text. Used by `spx serve` on an export, by the export's own parity check and by benchmarks/deploy_bench.py.
Imports onnxruntime/torch only when an engine is made."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from spx.deploy.features import LogMelFrontend

EXPORT_JSON = "export.json"
TOKENS_JSON = "tokens.json"


def read_export_info(export_dir: Path) -> dict[str, Any]:
    return json.loads((Path(export_dir) / EXPORT_JSON).read_text())


class CtcText:
    """Greedy CTC ids -> text with the exported vocabulary (tokens.json: tokens, blank, space token, bpe, strip)."""

    def __init__(self, info: dict[str, Any]):
        self.tokens: list[str] = info["tokens"]
        self.blank = int(info["blank"])
        self.space = info.get("space")
        self.bpe = bool(info.get("bpe"))
        self.strip = bool(info.get("strip"))

    @classmethod
    def load(cls, export_dir: Path) -> "CtcText":
        return cls(json.loads((Path(export_dir) / TOKENS_JSON).read_text()))

    def best_path(self, log_probs: np.ndarray) -> list[int]:
        ids = log_probs.argmax(axis=-1)
        keep = np.ones(len(ids), dtype=bool)
        keep[1:] = ids[1:] != ids[:-1]
        return [int(i) for i in ids[keep] if i != self.blank]

    def text(self, ids: list[int]) -> str:
        pieces = [" " if self.space is not None and self.tokens[i] == self.space else self.tokens[i] for i in ids]
        text = "".join(pieces)
        if self.bpe:
            text = text.replace("\u2581", " ")
        return text.strip() if self.strip else text


def output_lengths(lengths: np.ndarray, rule: list[list[float]]) -> np.ndarray:
    """Frame counts after the encoder's subsampling, for a graph without a lengths output: each step
    (add_pad, stride, ceil) maps L -> floor_or_ceil((L + add_pad) / stride + 1) (NeMo's calc_length)."""
    out = lengths.astype(np.float64)
    for add_pad, stride, ceil in rule:
        out = (out + add_pad) / stride + 1.0
        out = np.ceil(out) if ceil else np.floor(out)
    return out.astype(np.int64)


class ExportEngine:
    """An export dir as log_probs(wavs) / transcribe(wavs)."""

    def __init__(self, export_dir: str | Path, threads: int | None = None):
        self.dir = Path(export_dir)
        self.info = read_export_info(self.dir)
        self.frontend = LogMelFrontend.load(self.dir)
        self.ctc = CtcText.load(self.dir)
        self.sample_rate = self.frontend.sample_rate
        model_file = str(self.dir / self.info["model_file"])
        self.format = self.info["format"]
        if self.format == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(model_file, opts, providers=["CPUExecutionProvider"])
        elif self.format == "torchscript":
            import torch

            if threads:
                torch.set_num_threads(threads)
            self.module = torch.jit.load(model_file, map_location="cpu").eval()
        else:
            raise ValueError(f"{self.dir / EXPORT_JSON}: unknown format {self.format!r}")

    def _run(self, feats: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        io = self.info
        if self.format == "onnx":
            outs = self.session.run(None, {io["inputs"]["features"]: feats, io["inputs"]["lengths"]: lengths})
            names = [o.name for o in self.session.get_outputs()]
            named = dict(zip(names, outs))
        else:
            import torch

            with torch.inference_mode():
                res = self.module(torch.from_numpy(feats), torch.from_numpy(lengths))
            res = res if isinstance(res, (tuple, list)) else (res,)
            named = dict(zip(io["output_order"], [r.numpy() for r in res]))
        log_probs = named[io["outputs"]["log_probs"]]
        if io["outputs"].get("lengths"):
            out_len = named[io["outputs"]["lengths"]].astype(np.int64)
        else:
            out_len = np.minimum(output_lengths(lengths, io["length_rule"]), log_probs.shape[1])
        return log_probs, out_len

    def log_probs(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        feats, lengths = self.frontend.batch(wavs)
        lp, out_len = self._run(feats, lengths)
        return [lp[i, : int(n)] for i, n in enumerate(out_len)]

    def transcribe(self, wavs: list[np.ndarray]) -> list[str]:
        return [self.ctc.text(self.ctc.best_path(lp)) for lp in self.log_probs(wavs)]
