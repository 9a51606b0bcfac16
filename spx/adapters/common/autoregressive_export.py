"""Child-side helpers of the Tacotron2 exporters (SpeechBrain, ESPnet): write the encoder / decoder_step / postnet
graphs that spx.deploy.autoregressive loops, and replay the engine's prenet dropout masks inside the toolkit's own
inference for the parity check. Imports torch when called (child processes only)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from spx.deploy.autoregressive import GRAPH_ROLES, dropout_mask

PRENET_SEED = 0  # the engine's default per-request seed of the prenet masks (export.json autoregressive.prenet.seed)


@dataclass
class GraphSpec:
    """One graph to trace: the module, an example input tuple, its input/output names and dynamic axes."""

    module: Any
    example: tuple
    inputs: list[str]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]


def write_autoregressive_graphs(graphs: dict[str, GraphSpec], path: Path, fmt: str, opset: int,
                                int8: bool) -> dict[str, Any]:
    """The three graphs beside `path` (its name with 'model' replaced by the role: encoder.onnx, encoder.ts, or
    encoder.fp32.onnx before quantization) -> export.json's "graphs". ONNX (dynamo=False) or TorchScript
    (torch.jit.trace; int8: PyTorch dynamic quantization of the Linear layers). The tracer records the memory's
    length as a size op, so every sentence length runs (the parity check covers lengths other than the example's)."""
    import torch

    out: dict[str, Any] = {}
    for role in GRAPH_ROLES:
        g = graphs[role]
        name = path.name.replace("model", role, 1)
        net = g.module.eval()
        if int8:
            net = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
        with torch.inference_mode(False), torch.no_grad():
            if fmt == "onnx":
                torch.onnx.export(net, g.example, str(path.parent / name), dynamo=False, opset_version=opset,
                                  input_names=g.inputs, output_names=g.outputs, dynamic_axes=g.dynamic_axes)
            else:
                torch.jit.save(torch.jit.trace(net, g.example, check_trace=False), str(path.parent / name))
        out[role] = {"model_file": name, "input_order": g.inputs, "output_order": g.outputs}
    return out


@contextlib.contextmanager
def replay_prenet_dropout(rate: float, seed: int = PRENET_SEED) -> Iterator[dict[str, int]]:
    """While active, every dropout call with training on (at inference only the Tacotron2 prenets' are: SpeechBrain's
    F.dropout(..., training=True), ESPnet's F.dropout(x, p)) multiplies by the next mask the engine would draw for
    the same seed (spx.deploy.autoregressive.dropout_mask, same order: per step, per prenet layer) instead of a
    torch-random one. Yields a counter {"masks": n} the caller checks against the steps decoded."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    real = F.dropout
    count = {"masks": 0}

    def dropout(x, p=0.5, training=True, inplace=False):
        if not training or p == 0:
            return real(x, p, training, inplace)
        if abs(p - rate) > 1e-9 or x.dim() != 2 or x.shape[0] != 1:
            raise RuntimeError(f"a dropout (p={p}, input {tuple(x.shape)}) other than the prenet's (p={rate}, batch "
                               "1) ran with training on during the reference inference")
        count["masks"] += 1
        return x * torch.from_numpy(dropout_mask(rng, x.shape[-1], rate)).to(x.dtype)

    from unittest import mock

    with mock.patch.object(F, "dropout", dropout):
        yield count
