"""Child step `export` (`spx export`) of the SpeechBrain fastspeech2 family: ONNX (torch.onnx.export, dynamo=False:
the TorchScript-based exporter; onnxscript is not in the lock) or TorchScript (torch.jit.trace) of the best
checkpoint's FastSpeech2WithAlignment at inference (token ids [1, N] -> postnet log-mel [1, frames, n_mels] + the
frame count; token and frame axes dynamic), with text.json (spx's cleaning + SpeechBrain's character ids), the
vocoder (Griffin-Lim settings from the run's mel settings, or the HiFi-GAN generator tts.vocoder names as a second
graph) and the parity check (spx.adapters.common.export.export_tts_run).

`python -m spx.adapters.speechbrain.steps.tts_export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8]`
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from spx.adapters.common.export import TtsExporter, export_tts_run, main
from spx.adapters.speechbrain.fastspeech2 import MIN_SYMBOLS
from spx.adapters.speechbrain.steps.tts_fastspeech2_synth import postnet_mel
from spx.adapters.speechbrain.steps.tts_model import HifiganVocoder, encode_text
from spx.adapters.speechbrain.steps.tts_synth import load_for_synthesis

PAD_SYMBOL = "<pad>"  # id 0, SpeechBrain's padding_idx: never a cleaned character
VOCODER_FILES = {"onnx": "vocoder.onnx", "torchscript": "vocoder.ts"}


class FastSpeech2Inference(torch.nn.Module):
    """FastSpeech2WithAlignment.forward without targets (what the tts_synth step runs: predicted durations, pitch
    and energy, pace and rates 1) for one sentence, in traceable ops: SpeechBrain's forward upsamples with a Python
    loop over the batch and torch.tensor(list of lengths), which a trace freezes; here frame t takes the token whose
    cumulative duration span holds it (the same repeat_interleave), and expm1 is exp - 1 (no ONNX op for expm1).
    One sentence, so no padding: the masks are all-keep, computed as SpeechBrain does."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor):
        from speechbrain.lobes.models.transformer.Transformer import get_key_padding_mask

        m = self.model
        pad = get_key_padding_mask(ids, pad_idx=m.padding_idx)
        keep = (~pad).unsqueeze(-1)
        feats = m.encPreNet(ids)
        feats = (feats + m.sinusoidal_positional_embed_encoder(feats)) * keep
        mask = pad.unsqueeze(-1).repeat(m.enc_num_head, 1, feats.shape[1]).permute(0, 2, 1).bool()
        feats, _ = m.encoder(feats, src_mask=mask, src_key_padding_mask=pad)
        feats = feats * keep
        durations = torch.clamp(torch.exp(m.durPred(feats, keep).squeeze(-1)) - 1, 0).long()
        pitch = m.pitchPred(feats, keep)
        feats = feats + m.pitchEmbed(pitch.permute(0, 2, 1)).permute(0, 2, 1)
        energy = m.energyPred(feats, keep)
        feats = feats + m.energyEmbed(energy.permute(0, 2, 1)).permute(0, 2, 1)
        ends = torch.cumsum(durations[0], 0)
        frames = ends[-1:]
        token = (torch.arange(frames[0], device=ids.device).unsqueeze(1) >= ends.unsqueeze(0)).sum(1)
        spec = feats[0].index_select(0, token).unsqueeze(0)
        dec_pad = torch.zeros_like(spec[:, :, 0], dtype=torch.bool)
        dec_keep = (~dec_pad).unsqueeze(-1)
        mask = dec_pad.unsqueeze(-1).repeat(m.dec_num_head, 1, spec.shape[1]).permute(0, 2, 1).bool()
        spec = (spec + m.sinusoidal_positional_embed_decoder(spec)) * dec_keep
        out, *_ = m.decoder(spec, src_mask=mask, src_key_padding_mask=dec_pad)
        mel = m.linear(out) * dec_keep
        return m.postnet(mel) + mel, frames


class HifiganInference(torch.nn.Module):
    """The SpeechBrain HiFi-GAN of tts.vocoder as the run's HifiganVocoder runs it: log-mel [1, n_mels, T] ->
    generator.inference (replicate padding) -> the T hops of audio between the padding's."""

    def __init__(self, vocoder: HifiganVocoder):
        super().__init__()
        if vocoder.model.first_call:  # what HIFIGAN.decode_batch does before its first call
            vocoder.model.hparams.generator.remove_weight_norm()
            vocoder.model.first_call = False
        self.generator, self.hop, self.padding = vocoder.model.hparams.generator, vocoder.hop, vocoder.padding

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        wav = self.generator.inference(mel).reshape(-1)
        return wav[self.padding: self.padding + mel.shape[-1] * self.hop]


def _trace(net: torch.nn.Module, example: tuple, path: Path, fmt: str, opset: int, inputs: list[str],
           outputs: list[str], dynamic_axes: dict[str, dict[int, str]]) -> None:
    with torch.inference_mode(False), torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(net, example, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                              output_names=outputs, dynamic_axes=dynamic_axes)
        else:
            torch.jit.save(torch.jit.trace(net, example, check_trace=False), str(path))


def griffin_lim(mel: dict[str, Any], iters: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """vocoder.json + vocoder.npz of the run's Griffin-Lim: SpeechBrain's mel_spectrogram (power 1: a mel of |STFT|,
    torchaudio's slaney filterbank, dynamic_range_compression = ln(clamp(x, 1e-5)))."""
    import torchaudio

    basis = torchaudio.transforms.MelScale(
        n_mels=mel["n_mels"], sample_rate=mel["sample_rate"], f_min=mel["f_min"], f_max=mel["f_max"],
        n_stft=mel["n_fft"] // 2 + 1, norm="slaney", mel_scale="slaney").fb.T.numpy()  # [n_mels, n_freq]
    return ({"kind": "griffin_lim", "sample_rate": mel["sample_rate"], "n_fft": mel["n_fft"],
             "win_length": mel["win_length"], "hop_length": mel["hop_length"], "power": 1.0,
             "log": {"base": "e", "floor": 1e-5}, "n_iter": iters},
            {"mel_basis": basis.astype(np.float32)})


def text_settings(symbols: list[str], lowercase: bool) -> dict[str, Any]:
    """text.json of SpeechBrain's TTS character ids (encode_text: id 0 pads, symbol i is id i + 1)."""
    return {"symbols": [PAD_SYMBOL, *symbols], "space": " ", "lowercase": lowercase, "prefix": [], "suffix": [],
            "unknown": None}


def vocoder_parts(vocoder: Any, info: dict[str, Any], fmt: str):
    """(vocoder.json, vocoder.npz arrays or None, write_vocoder or None) of the run's vocoder: Griffin-Lim settings,
    or the HiFi-GAN generator as a second graph."""
    mel = info["mel"]
    write_vocoder, arrays = None, None
    if isinstance(vocoder, HifiganVocoder):
        hifigan = HifiganInference(vocoder).eval()
        vocoder_json = {"kind": "graph", "model_file": VOCODER_FILES[fmt], "format": fmt, "input": "mel",
                        "output": "waveform", "mel_layout": "BDT", "sample_rate": mel["sample_rate"],
                        "source": info["vocoder"]}

        def write_hifigan(path: Path, fmt: str, opset: int) -> dict[str, Any]:
            _trace(hifigan, (torch.zeros(1, mel["n_mels"], 40),), path, fmt, opset, ["mel"], ["waveform"],
                   {"mel": {2: "frames"}, "waveform": {0: "samples"}})
            return {"hop_length": mel["hop_length"]}

        write_vocoder = write_hifigan
    else:
        vocoder_json, arrays = griffin_lim(mel, info["griffin_lim_iters"])

    return vocoder_json, arrays, write_vocoder


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    spec, rd, _device, info, model, vocoder = load_for_synthesis(run_dir, "cpu")
    symbols, lowercase = info["symbols"], spec.tokenizer.lowercase
    graph = FastSpeech2Inference(model).eval()

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        net = torch.ao.quantization.quantize_dynamic(graph, {torch.nn.Linear}, dtype=torch.qint8) if int8 else graph
        example = (torch.tensor([encode_text("an example sentence", symbols, lowercase)]),)
        _trace(net, example, path, fmt, opset, ["ids"], ["mel", "frames"],
               {"ids": {1: "tokens"}, "mel": {1: "frames"}})
        return {"inputs": {"ids": "ids"}, "outputs": {"mel": "mel", "frames": "frames"}, "mel_layout": "BTD",
                "output_order": ["mel", "frames"], "min_symbols": MIN_SYMBOLS}

    def toolkit_ids(text: str) -> list[int]:
        return encode_text(text, symbols, lowercase)

    @torch.no_grad()
    def reference(text: str, speaker: str | None) -> np.ndarray:
        return postnet_mel(model, torch.tensor([toolkit_ids(text)])).T.float().numpy()

    vocoder_json, arrays, write_vocoder = vocoder_parts(vocoder, info, fmt)
    exporter = TtsExporter(
        backend="speechbrain", route="torch.onnx.export (TorchScript exporter, dynamo=False) of "
        "FastSpeech2WithAlignment at inference (predicted durations, pitch, energy; postnet log-mel)",
        write_graph=write_graph, text=text_settings(symbols, lowercase),
        toolkit_ids=toolkit_ids, reference=reference, vocoder=vocoder_json, vocoder_arrays=arrays,
        write_vocoder=write_vocoder, speakers={})
    return export_tts_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
