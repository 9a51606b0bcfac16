"""Child step `export` (`spx export`) of the ESPnet FastSpeech2 family: `torch.onnx.export` (dynamo=False) or
TorchScript (torch.jit.trace) of the acoustic model's inference path, token ids [1, N] -> the denormalised log-mel
[1, frames, n_mels] that Text2Speech hands its vocoder (`feat_gen_denorm`).

The graph is ESPnet's FastSpeech2.inference + ESPnetTTSModel's GlobalMVN inverse with two changes that keep every
length in the graph instead of in Python: the encoder's all-valid masks are built from the ids' shape (ESPnet sizes
them with int(max(lengths)), which the tracer freezes), and the length regulator is a cumulative-sum gather (ESPnet
loops over the batch in Python and pads with a Python max). Same arithmetic, so the mel matches to float rounding.
One limit the trace keeps: the positional-encoding table ESPnet extends in Python is a constant of its initial size
(5000 positions: ~80 s of frames at hop 256 / 16 kHz); a longer sentence fails in the graph instead of growing it.

`python -m spx.adapters.espnet.steps.tts_export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8]`
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from spx.adapters.common.export import TtsExporter, export_tts_run, main
from spx.adapters.espnet.steps.common import start
from spx.adapters.espnet.steps.tts_synth import load_text2speech
from spx.textclean import clean_transcript

ROUTE = ("torch.onnx.export (TorchScript exporter, dynamo=False) of FastSpeech2.inference + GlobalMVN inverse "
         "(ids -> denormalised log10-mel); TorchScript by torch.jit.trace")
EXAMPLE_TEXT = "the export traces one sentence; every length stays dynamic"


def fastspeech2_mel_module(model: Any, speakers: bool = False) -> Any:
    """ESPnetTTSModel (tts: fastspeech2) -> a module ids [1, N] int64 (+ speaker id [1] int64 when the model has
    speaker ids) -> denormalised log-mel [1, frames, n_mels] float32, tracing with dynamic token and frame axes."""
    import torch
    import torch.nn.functional as F

    fs2 = model.tts
    if type(fs2).__name__ != "FastSpeech2":
        raise SystemExit(f"spx export: an ESPnet {type(fs2).__name__} model is not a FastSpeech2")
    unsupported = [name for name, on in (("global style tokens", fs2.use_gst), ("language ids", fs2.langs),
                                         ("speaker embeddings", fs2.spk_embed_dim)) if on]
    if unsupported:
        raise SystemExit(f"spx export: ESPnet FastSpeech2 with {', '.join(unsupported)} is not exported yet")
    if bool(fs2.spks) != speakers:
        raise SystemExit(f"spx export: the model has {fs2.spks or 'no'} speaker ids, the run "
                         f"{'names speakers' if speakers else 'names none'}")
    mvn = mvn_inverse(model)

    class FastSpeech2Mel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fs2 = fs2
            if mvn is not None:
                self.register_buffer("mvn_scale", mvn[0])
                self.register_buffer("mvn_shift", mvn[1])
            else:
                self.mvn_scale = self.mvn_shift = None

        def forward(self, ids, sid=None):
            fs2 = self.fs2
            xs = F.pad(ids, [0, 1], "constant", fs2.eos)  # FastSpeech2.inference appends <sos/eos>
            valid = torch.ones_like(xs, dtype=torch.bool)
            hs, _ = fs2.encoder(xs, valid.unsqueeze(-2))
            if sid is not None:
                hs = hs + fs2.sid_emb(sid.view(-1)).unsqueeze(1)
            pad = ~valid.unsqueeze(-1)  # make_pad_mask(ilens): nothing padded in one sentence
            p_outs = fs2.pitch_predictor(hs.detach() if fs2.stop_gradient_from_pitch_predictor else hs, pad)
            e_outs = fs2.energy_predictor(hs.detach() if fs2.stop_gradient_from_energy_predictor else hs, pad)
            d_outs = fs2.duration_predictor.inference(hs, ~valid)
            p_embs = fs2.pitch_embed(p_outs.transpose(1, 2)).transpose(1, 2)
            e_embs = fs2.energy_embed(e_outs.transpose(1, 2)).transpose(1, 2)
            hs = hs + e_embs + p_embs
            # LengthRegulator (alpha 1): all-zero durations become all ones, then token i fills frames
            # [cum[i-1], cum[i]): frame t takes the token whose cumulative duration first exceeds t
            d = d_outs[0]
            d = d + (d.sum() == 0).to(d.dtype)
            cum = torch.cumsum(d, dim=0)
            frames = torch.arange(cum[-1], device=d.device)
            token = (frames.unsqueeze(1) >= cum.unsqueeze(0)).sum(dim=1)
            hs = hs[0].index_select(0, token).unsqueeze(0)
            zs, _ = fs2.decoder(hs, None)
            before = fs2.feat_out(zs).view(zs.size(0), -1, fs2.odim)
            after = before if fs2.postnet is None else before + fs2.postnet(before.transpose(1, 2)).transpose(1, 2)
            if self.mvn_scale is not None:
                after = after * self.mvn_scale + self.mvn_shift
            return after

    return FastSpeech2Mel().eval()


def mvn_inverse(model: Any) -> "tuple[Any, Any] | None":
    """ESPnetTTSModel's feature normalisation as (scale, shift) tensors [n_mels] of its inverse (GlobalMVN.inverse:
    x * std + mean, what Text2Speech's feat_gen_denorm applies), or None when the model has none."""
    import torch

    normalize = model.normalize
    if normalize is None:
        return None
    if type(normalize).__name__ != "GlobalMVN":
        raise SystemExit(f"spx export: ESPnet feature normalisation {type(normalize).__name__} is not exported yet")
    scale = normalize.std if normalize.norm_vars else torch.ones_like(normalize.std)
    shift = normalize.mean if normalize.norm_means else torch.zeros_like(normalize.mean)
    return scale.detach().clone().float(), shift.detach().clone().float()


def text_settings(tts: Any, lowercase: bool) -> dict[str, Any]:
    """text.json from Text2Speech's preprocessing (CommonPreprocessor: no cleaner, ESPnet's CharTokenizer, the
    token list; <sos/eos> is appended inside the graph, as FastSpeech2.inference does)."""
    pre = tts.preprocess_fn
    tokenizer = getattr(pre, "tokenizer", None)
    if type(tokenizer).__name__ != "CharTokenizer" or tokenizer.non_linguistic_symbols or pre.text_cleaner.cleaner_types:
        raise SystemExit(f"spx export: ESPnet TTS text processing {type(tokenizer).__name__} with cleaners "
                         f"{pre.text_cleaner.cleaner_types} is not exported yet (spx's char tokens without cleaner are)")
    converter = pre.token_id_converter
    return {"symbols": list(converter.token_list), "space": tokenizer.space_symbol, "lowercase": lowercase,
            "prefix": [], "suffix": [], "unknown": converter.unk_symbol}


def griffin_lim_settings(tts: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """vocoder.json and its mel_basis from Text2Speech's Griffin-Lim (Spectrogram2Waveform, griffin_lim.yaml's
    iterations) and the model's own LogMelFbank: log10 of the mel of |STFT| (amplitude, clamped at 1e-10)."""
    voc, fe = tts.vocoder, tts.model.feats_extract
    if type(voc).__name__ != "Spectrogram2Waveform":
        raise SystemExit(f"spx export: an ESPnet TTS run with the vocoder {type(voc).__name__} is not exported yet "
                         "(Griffin-Lim runs are)")
    if type(fe).__name__ != "LogMelFbank" or fe.logmel.log_base != 10.0 or fe.stft.window != "hann":
        raise SystemExit(f"spx export: ESPnet TTS features {type(fe).__name__} (log base "
                         f"{getattr(getattr(fe, 'logmel', None), 'log_base', None)}) are not exported yet")
    p = voc.params
    if p["window"] != "hann" or (p["n_fft"], p["n_shift"], p["win_length"]) != (fe.stft.n_fft, fe.stft.hop_length,
                                                                                  fe.stft.win_length):
        raise SystemExit(f"spx export: the run's Griffin-Lim settings {p} differ from its features'")
    vocoder = {"kind": "griffin_lim", "sample_rate": int(p["fs"]), "n_fft": int(p["n_fft"]),
               "win_length": int(p["win_length"]), "hop_length": int(p["n_shift"]), "power": 1.0,
               "log": {"base": "10", "floor": 1e-10}, "n_iter": int(p["n_iter"])}
    return vocoder, {"mel_basis": fe.logmel.melmat.detach().cpu().numpy().T.copy()}


def write_mel_graph(net: Any, path: Path, fmt: str, opset: int, int8: bool, example_ids: list[int],
                    speakers: bool) -> dict[str, Any]:
    """The module as ONNX (dynamo=False: the dynamo exporter needs onnxscript, not in the lock) or TorchScript
    (torch.jit.trace; int8: PyTorch dynamic quantization of its Linear layers); tokens and frames are dynamic."""
    import torch

    if int8:
        net = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
    example = (torch.tensor([example_ids], dtype=torch.long),) + ((torch.tensor([0]),) if speakers else ())
    inputs = ["ids"] + (["speaker"] if speakers else [])
    with torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(net, example, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                              output_names=["mel"], dynamic_axes={"ids": {1: "tokens"}, "mel": {1: "frames"}})
        else:
            torch.jit.save(torch.jit.trace(net, example, check_trace=False), str(path))
    return {"inputs": {"ids": "ids", **({"speaker": "speaker"} if speakers else {})}, "input_order": inputs,
            "outputs": {"mel": "mel"}, "mel_layout": "BTD", "output_order": ["mel"],
            "input_shapes": {"ids": [1, "tokens"], **({"speaker": [1]} if speakers else {})},
            "output_shapes": {"mel": [1, "frames", "n_mels"]}}


@dataclass
class TtsExportParts:
    """What every ESPnet TTS exporter starts from: Text2Speech (its vocoder removed), speaker ids, text.json,
    Griffin-Lim vocoder.json + arrays, and the toolkit's own text -> ids."""

    tts: Any
    speakers: dict[str, int]
    lowercase: bool
    text: dict[str, Any]
    vocoder: dict[str, Any]
    arrays: dict[str, Any]
    toolkit_ids: Callable[[str], list[int]]


def load_tts_for_export(run_dir: str) -> TtsExportParts:
    spec, rd = start(run_dir)  # chdir: the ESPnet config names its feature statistics relative to the run dir
    tts, native = load_text2speech(rd, spec, "cpu", "float32")
    if native["vocoder"]:
        raise SystemExit(f"spx export: an ESPnet TTS run with the neural vocoder {native['vocoder']['file']} is not "
                         "exported yet (Griffin-Lim runs are)")
    lowercase = spec.tokenizer.lowercase
    text = text_settings(tts, lowercase)
    vocoder, arrays = griffin_lim_settings(tts)
    tts.vocoder = None  # Text2Speech stops at the mel: the reference and its timing leave the vocoder out

    def toolkit_ids(sentence: str) -> list[int]:
        return [int(i) for i in tts.preprocess_fn("<dummy>", {"text": clean_transcript(sentence, lowercase)})["text"]]

    return TtsExportParts(tts, {str(k): int(v) for k, v in (native["speakers"] or {}).items()}, lowercase, text,
                          vocoder, arrays, toolkit_ids)


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    out_dir = str(Path(out_dir).resolve())
    p = load_tts_for_export(run_dir)
    import torch

    tts, speakers, lowercase, toolkit_ids = p.tts, p.speakers, p.lowercase, p.toolkit_ids
    net = fastspeech2_mel_module(tts.model.eval(), speakers=bool(speakers))

    @torch.no_grad()
    def reference(sentence: str, speaker: str | None) -> np.ndarray:
        kwargs = {"sids": np.array(speakers[speaker or sorted(speakers)[0]])} if speakers else {}
        out = tts(clean_transcript(sentence, lowercase), **kwargs)
        return out["feat_gen_denorm"].float().numpy()

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        return write_mel_graph(net, path, fmt, opset, int8, toolkit_ids(EXAMPLE_TEXT), bool(speakers))

    exporter = TtsExporter(backend="espnet", route=ROUTE, write_graph=write_graph, text=p.text,
                           toolkit_ids=toolkit_ids, reference=reference, vocoder=p.vocoder, vocoder_arrays=p.arrays,
                           speakers=speakers)
    return export_tts_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
