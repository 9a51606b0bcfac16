"""Child step `export` (`spx export`): a finished NeMo conformer_ctc run -> ONNX or TorchScript through NeMo's own
route, `Exportable.export` (encoder + CTC decoder in one graph, log-mel features in, log-probs out), with the
preprocessor's settings and arrays for spx's numpy frontend, the vocabulary, and the parity check.

`python -m spx.adapters.nemo.steps.export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8] [--opset N]`
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from spx.adapters.common import child
from spx.adapters.common.export import Exporter, export_run, main
from spx.adapters.nemo.steps.decode import load_transcriber
from spx.deploy.features import LogMelFrontend, centred_window


def _frontend(model) -> LogMelFrontend:
    f = model.preprocessor.featurizer
    unsupported = {"exact_pad": f.exact_pad, "frame_splicing": f.frame_splicing != 1, "log": not f.log,
                   "mag_power": f.mag_power != 2.0, "normalize": f.normalize not in ("per_feature", None, "")}
    bad = [k for k, v in unsupported.items() if v]
    if bad or isinstance(f.log_zero_guard_value, str):
        raise SystemExit(f"spx export: the NeMo preprocessor's {', '.join(bad) or 'log_zero_guard_value'} setting "
                         "is not reproduced by spx's numpy frontend yet")
    guard = float(f.log_zero_guard_value)
    return LogMelFrontend(
        settings={"sample_rate": int(model.preprocessor._sample_rate), "n_fft": int(f.n_fft),
                  "hop_length": int(f.hop_length), "center": True, "pad_mode": "constant",
                  "preemph": float(f.preemph) if f.preemph else None,
                  "log": {"type": "add", "guard": guard} if f.log_zero_guard_type == "add"
                  else {"type": "clamp", "floor": guard},
                  "normalize": f.normalize or None, "valid_frames": "len_div_hop", "layout": "BDT",
                  "toolkit": "nemo AudioToMelSpectrogramPreprocessor"},
        window=centred_window(f.window.detach().cpu().numpy(), int(f.n_fft)),
        mel=f.fb[0].detach().cpu().numpy())


def _tokens(model) -> dict[str, Any]:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:  # BPE / WordPiece CTC models (EncDecCTCModelBPE)
        n = tokenizer.vocab_size
        tokens = [tokenizer.ids_to_tokens([i])[0] for i in range(n)]
        return {"tokens": tokens + ["<blank>"], "blank": n, "space": None, "bpe": True, "strip": True}
    vocab = list(model.decoder.vocabulary)
    return {"tokens": vocab + ["<blank>"], "blank": len(vocab), "space": None, "bpe": False, "strip": True}


def _length_rule(model) -> list[list[float]]:
    """The encoder's subsampling as (add_pad, stride, ceil) steps (NeMo's calc_length), for the engine's lengths."""
    pre = model.encoder.pre_encode
    if not hasattr(pre, "_sampling_num"):
        raise SystemExit(f"spx export: NeMo encoder subsampling {type(pre).__name__} is not supported yet")
    add_pad = float(pre._left_padding + pre._right_padding - pre._kernel_size)
    return [[add_pad, float(pre._stride), bool(pre._ceil_mode)]] * int(pre._sampling_num)


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    import torch
    from nemo.collections.asr.models import ASRModel

    spec, rd = child.load_run(run_dir)
    summary = json.loads((rd / "train_summary.json").read_text())

    def restore():
        m = ASRModel.restore_from(summary["exported_model"], map_location="cpu")
        m.preprocessor.featurizer.dither = 0.0
        m.preprocessor.featurizer.pad_to = 0
        return m.eval()

    model = restore()
    transcribe = load_transcriber(run_dir, "cpu")  # spx's own decode path: the reference greedy text

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        net = model
        if int8:  # TorchScript int8: PyTorch dynamic quantization of the Linear layers, on a copy of its own
            # (a NeMo model does not deepcopy; the fp32 one stays the parity check's reference)
            net = torch.ao.quantization.quantize_dynamic(restore(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        net.export(str(path), onnx_opset_version=opset, check_trace=False)
        return {"inputs": {"features": "audio_signal", "lengths": "length"},
                "input_shapes": {"audio_signal": ["batch", "n_mels", "frames"], "length": ["batch"]},
                "outputs": {"log_probs": "logprobs", "lengths": None}, "output_order": ["logprobs"],
                "output_shapes": {"logprobs": ["batch", "frames/subsampling", "vocab+blank"]},
                "length_rule": _length_rule(model)}

    @torch.inference_mode()
    def reference(wav: np.ndarray) -> tuple[np.ndarray, str]:
        sig = torch.from_numpy(wav)[None]
        lp, enc_len, _ = model.forward(input_signal=sig, input_signal_length=torch.tensor([len(wav)]))
        return lp[0, : int(enc_len[0])].numpy(), transcribe([wav])[0]

    @torch.inference_mode()
    def toolkit_features(wav: np.ndarray) -> np.ndarray:
        feats, _ = model.preprocessor(input_signal=torch.from_numpy(wav)[None], length=torch.tensor([len(wav)]))
        return feats[0].T.numpy()

    exporter = Exporter(backend="nemo", route="NeMo Exportable.export (encoder + CTC decoder)",
                        write_graph=write_graph, frontend=_frontend(model), tokens=_tokens(model),
                        reference=reference, toolkit_features=toolkit_features)
    return export_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
