"""Child step `export` (`spx export`) of SpeechBrain whisper: the run's exported model as the decode step loads it
(SpeechBrain's Whisper integration, LoRA adapters inserted and traced in place) -> encoder.onnx + decoder.onnx
(spx.adapters.common.seq2seq_export: the integration wraps a Transformers WhisperModel; its logits are the decoder
states @ embed_tokens.T, as forward_decoder computes them), the numpy Whisper log-mel with the integration's
filterbank, its tokenizer and the test searcher's settings (S2SWhisperGreedySearcher / S2SWhisperBeamSearcher:
initial tokens, suppressed tokens, decode length from max_decode_ratio, beam size, eos threshold, length
normalisation, temperature). The parity reference is the decode step's own transcriber, batch 1.

`python -m spx.adapters.speechbrain.steps.whisper_export RUN_DIR OUT_DIR --format onnx [--quantize int8]`
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spx.adapters.common import child
from spx.adapters.common.export import main
from spx.adapters.common.seq2seq_export import Seq2SeqExporter, export_seq2seq_run, whisper_frontend
from spx.adapters.speechbrain.steps.whisper_model import load_exported, transcriber


def search_settings(whisper: Any, search: Any, encoder_frames: int) -> dict[str, Any]:
    """export.json `search` from the run's test searcher, as its forward_step and forward run."""
    from speechbrain.decoders.seq2seq import S2SWhisperBeamSearcher, S2SWhisperGreedySearcher

    beam = isinstance(search, S2SWhisperBeamSearcher)
    if not beam and not isinstance(search, S2SWhisperGreedySearcher):
        raise SystemExit(f"spx export: the test searcher {type(search).__name__} is not one of SpeechBrain's "
                         "S2SWhisper searchers; spx's search reproduces only those")
    if search.prompt or search.prefix or search.lang_tokens is not None:
        raise SystemExit("spx export: a searcher prompt/prefix/language override is not reproduced by spx's search")
    if not beam and search.temperature != 0:
        raise SystemExit("spx export: greedy search with temperature > 0 samples; spx's export reproduces argmax only")
    eos = int(search.eos_index)
    begin = whisper.tokenizer.encode(" ", add_special_tokens=False) + [eos] if search.suppress_blank else []
    max_steps = int(encoder_frames * search.max_decode_ratio)
    if int(encoder_frames * search.min_decode_ratio) != 0:
        raise SystemExit("spx export: a searcher with min_decode_ratio > 0 is not reproduced by spx's search")
    out = {"style": "speechbrain", "prompt": [int(t) for t in search.initial_tokens], "eos": eos,
           "num_beams": int(search.beam_size) if beam else 1, "max_new_tokens": max_steps,
           "max_decode_steps": max_steps, "max_attn_tokens": int(search.max_attn_tokens),
           "suppress": sorted(int(t) for t in (search.get_tokens_to_suppress if search.suppress_tokens else ())),
           "begin_suppress": sorted(int(t) for t in begin),
           "decoded_by": f"speechbrain {type(search).__name__} (the run's test_search)"}
    if beam:
        if search.scorer is not None or search.using_max_attn_shift or search.return_topk:
            raise SystemExit("spx export: a beam searcher with a scorer (CTC/LM), max_attn_shift or return_topk is "
                             "not reproduced by spx's search")
        out.update(temperature=float(search.temperature), using_eos_threshold=bool(search.using_eos_threshold),
                   eos_threshold=float(search.eos_threshold), length_normalization=bool(search.length_normalization),
                   minus_inf=float(search.minus_inf))
    return out


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    _, rd = child.load_run(run_dir)
    hparams, export_dir = load_exported(rd, "cpu")
    whisper, search = hparams["whisper_base"], hparams["test_search"]
    transcribe = transcriber(hparams, "cpu", "float32")
    frontend = whisper_frontend(whisper.feature_extractor)
    if not np.array_equal(frontend.mel.astype(np.float32), whisper._mel_filters.numpy()):
        raise SystemExit("spx export: the integration's mel filterbank is not its feature extractor's")

    @torch.no_grad()
    def features(wav: np.ndarray) -> np.ndarray:
        return whisper._get_mel(torch.from_numpy(wav)[None].float())[0].numpy()

    @torch.no_grad()
    def encode(wav: np.ndarray) -> torch.Tensor:
        return whisper.forward_encoder(torch.from_numpy(features(wav))[None])

    settings = search_settings(whisper, search, int(encode(np.zeros(1600, dtype=np.float32)).shape[1]))

    @torch.no_grad()
    def first_logits(wav: np.ndarray) -> np.ndarray:
        logits, _, _ = whisper.forward_decoder(encode(wav), torch.tensor([settings["prompt"]]))
        return logits[0, -1].float().numpy()

    exporter = Seq2SeqExporter(
        backend="speechbrain", route="torch.onnx.export (TorchScript exporter, dynamo=False) of SpeechBrain's Whisper "
        f"integration's WhisperModel ({export_dir}): the encoder from the log-mel, the decoder from the token prefix "
        "and the encoder states to the last position's logits (@ embed_tokens.T); the searcher in numpy",
        whisper=whisper.model, output_weight=whisper.model.decoder.embed_tokens.weight, frontend=frontend,
        tokenizer=whisper.tokenizer, search=settings, reference=lambda w: transcribe([w])[0],
        reference_first_logits=first_logits, toolkit_features=features)
    return export_seq2seq_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
