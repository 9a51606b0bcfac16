"""One exported graph run by onnxruntime, or a TorchScript one through torch: the call path every engine
(spx.deploy.engine, spx.deploy.seq2seq, spx.deploy.autoregressive's graphs) shares. Imports onnxruntime/torch only
when a graph is made."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class Graph:
    """The exported graph (onnxruntime, or TorchScript through torch): run(feeds by input role) -> outputs by name."""

    def __init__(self, export_dir: Path, info: dict[str, Any], threads: int | None = None):
        self.info = info
        model_file = str(Path(export_dir) / info["model_file"])
        self.format = info["format"]
        if self.format == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(model_file, opts, providers=["CPUExecutionProvider"])
            self.output_names = [o.name for o in self.session.get_outputs()]
        elif self.format == "torchscript":
            import torch

            if threads:
                torch.set_num_threads(threads)
            self.module = torch.jit.load(model_file, map_location="cpu").eval()
        else:
            raise ValueError(f"{Path(export_dir) / 'export.json'}: unknown format {self.format!r}")

    def run(self, feats: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        """An audio graph on features (+ lengths, when its outputs use them) -> outputs by name."""
        io = self.info
        feeds = {io["inputs"]["features"]: feats}
        if io["inputs"].get("lengths"):
            feeds[io["inputs"]["lengths"]] = lengths
        return self.run_named(feeds)

    def run_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph on inputs by name -> outputs by name (TorchScript takes them positionally, in the
        export's input_order)."""
        if self.format == "onnx":
            return dict(zip(self.output_names, self.session.run(None, feeds)))
        import torch

        with torch.inference_mode():
            order = self.info.get("input_order") or list(feeds)  # audio graphs: features, then lengths
            res = self.module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in order])
        res = res if isinstance(res, (tuple, list)) else (res,)
        return dict(zip(self.info["output_order"], [r.numpy() for r in res]))
