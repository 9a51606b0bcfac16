"""Decode step of the hf families (child process): the exported model through the shared decoding/timing protocol
(child.decode_and_time) -> hyps.jsonl + speed.json. Also the families' model loader (load_transcriber) for the
bench's judge and serving.

`python -m spx.adapters.hf.steps.decode RUN_DIR`
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from spx.adapters.common import child
from spx.adapters.hf.steps.models import CtcText, export_info, load_ctc, load_whisper, to_device


def ctc_forward(export: Path, device: str, dtype: str):
    """The exported CTC model as (model, feature extractor, text codec, forward): forward(list of 16 kHz float
    arrays) -> (logits [B, T, V], valid frame counts [B]) through the feature extractor as training saw it (its
    attention mask passed only when the checkpoint takes one, e.g. not wav2vec2-base's group-norm layout)."""
    from transformers import AutoFeatureExtractor

    info = export_info(export)
    text = CtcText.load(export, info["tokenizer"])
    model = to_device(load_ctc(str(export), text, None, keep_head=True), device, dtype)
    fe = AutoFeatureExtractor.from_pretrained(str(export))

    @torch.inference_mode()
    def forward(batch: list[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        inputs = fe(batch, sampling_rate=fe.sampling_rate, padding=True, return_tensors="pt",
                    return_attention_mask=True)
        mask = inputs.pop("attention_mask")
        if fe.return_attention_mask:
            inputs["attention_mask"] = mask
        inputs = {k: v.to(device=device, dtype=getattr(torch, dtype) if v.is_floating_point() else v.dtype)
                  for k, v in inputs.items()}
        return model(**inputs).logits.cpu(), model._get_feat_extract_output_lengths(mask.sum(-1)).tolist()

    return model, fe, text, forward


def ctc_transcriber(export: Path, device: str, dtype: str) -> Callable[[list[np.ndarray]], list[str]]:
    _, _, text, forward = ctc_forward(export, device, dtype)

    def transcribe(batch: list[np.ndarray]) -> list[str]:
        logits, lengths = forward(batch)
        return [text.decode_ctc(row[:n]) for row, n in zip(logits.argmax(-1), lengths)]

    return transcribe


def whisper_transcriber(export: Path, device: str, dtype: str, spec) -> Callable[[list[np.ndarray]], list[str]]:
    model, processor = load_whisper(str(export), None)
    model = to_device(model, device, dtype)
    m = spec.model
    beams = spec.decoding.beam_size if spec.decoding.strategy == "beam" else 1

    @torch.inference_mode()
    def transcribe(batch: list[np.ndarray]) -> list[str]:
        feats = processor.feature_extractor(batch, sampling_rate=16000, return_tensors="pt").input_features
        out = model.generate(feats.to(device=device, dtype=getattr(torch, dtype)), language=m.language, task=m.task,
                             num_beams=beams, max_new_tokens=m.max_new_tokens, return_timestamps=False)
        return [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]

    return transcribe


def transcriber_for(rd, spec, device: str, dtype: str):
    import json

    export = Path(json.loads((rd / "train_summary.json").read_text())["exported_model"])
    if spec.model.family == "whisper":
        return whisper_transcriber(export, device, dtype, spec), export
    return ctc_transcriber(export, device, dtype), export


def load_transcriber(run_dir: str, device: str, dtype: str = "float32"):
    """The exported model as `transcribe(list of 16 kHz float arrays) -> texts`."""
    spec, rd = child.load_run(run_dir)
    return transcriber_for(rd, spec, device, dtype)[0]


def main(run_dir: str) -> None:
    import transformers

    spec, rd = child.load_run(run_dir)
    threads = child.set_threads(spec)
    device = child.pick_device(spec)
    dtype = child.precision_dtype(spec, device)
    fn, export = transcriber_for(rd, spec, device, dtype)
    print(f"spx: decoding with {export} ({spec.model.family}, {spec.decoding.strategy}, {device}, {dtype}, "
          f"{threads} threads)", flush=True)
    speed = child.decode_and_time(rd, spec, fn, device, dtype)
    print(f"spx: decoded {speed['utterances']} utterances, {speed['audio_seconds']:.1f} s audio, median "
          f"{speed['median_decode_seconds']:.3f} s (transformers {transformers.__version__})", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    child.main_guard(main)
    sys.exit(0)
