"""Child step `export` (`spx export`) of hf whisper: the run's WhisperForConditionalGeneration (LoRA runs merged, as
the decode step loads them) -> encoder.onnx + decoder.onnx (spx.adapters.common.seq2seq_export), the numpy Whisper
log-mel, the run's tokenizer and generate's search settings as the decode step calls it (language/task prompt,
num_beams, max_new_tokens, the generation config's suppress tokens, length_penalty, early_stopping). The parity
reference is the decode step's own transcriber (generate), batch 1.

`python -m spx.adapters.hf.steps.whisper_export RUN_DIR OUT_DIR --format onnx [--quantize int8] [--opset N]`
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spx.adapters.common import child
from spx.adapters.common.export import main
from spx.adapters.common.seq2seq_export import Seq2SeqExporter, export_seq2seq_run, whisper_frontend
from spx.adapters.hf.steps.decode import whisper_transcriber
from spx.adapters.hf.steps.models import load_whisper


def prompt_ids(model, tokenizer, language: str | None, task: str | None) -> list[int]:
    """<|startoftranscript|> <|lang|> <|task|> <|notimestamps|>: the prompt generate forces for the decode step's
    call (language and task given, return_timestamps False)."""
    gen = model.generation_config
    ids = [int(gen.decoder_start_token_id)]
    if language is not None:
        ids.append(int(tokenizer.convert_tokens_to_ids(f"<|{language}|>")))
    if task is not None:
        ids.append(int(gen.task_to_id[task]))
    ids.append(int(gen.no_timestamps_token_id))
    return ids


def search_settings(model, tokenizer, spec) -> dict[str, Any]:
    gen, m = model.generation_config, spec.model
    defaults = type(gen)._get_default_generation_params()  # what generate applies to the unset ones

    def setting(name: str) -> Any:
        value = getattr(gen, name)
        return defaults[name] if value is None else value

    eos = gen.eos_token_id
    if isinstance(eos, list):
        if len(eos) != 1:
            raise SystemExit(f"spx export: the generation config has {len(eos)} eos tokens; spx's search takes one")
        eos = eos[0]
    return {"style": "transformers", "prompt": prompt_ids(model, tokenizer, m.language, m.task), "eos": int(eos),
            "num_beams": spec.decoding.beam_size if spec.decoding.strategy == "beam" else 1,
            "max_new_tokens": int(m.max_new_tokens), "length_penalty": float(setting("length_penalty")),
            "early_stopping": setting("early_stopping"),
            "suppress": sorted(int(t) for t in (gen.suppress_tokens or [])),
            "begin_suppress": sorted(int(t) for t in (gen.begin_suppress_tokens or [])),
            "decoded_by": "transformers generate (the decode step's call)"}


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    spec, rd = child.load_run(run_dir)
    source = Path(json.loads((rd / "train_summary.json").read_text())["exported_model"])
    model, processor = load_whisper(str(source), None)
    model = model.to(dtype=torch.float32).eval()
    transcribe = whisper_transcriber(source, "cpu", "float32", spec)
    fe = processor.feature_extractor
    search = search_settings(model, processor.tokenizer, spec)

    def features(wav: np.ndarray) -> np.ndarray:
        return fe([wav], sampling_rate=fe.sampling_rate, return_tensors="np").input_features[0]

    @torch.inference_mode()
    def first_logits(wav: np.ndarray) -> np.ndarray:
        out = model(input_features=torch.from_numpy(features(wav))[None],
                    decoder_input_ids=torch.tensor([search["prompt"]]))
        return out.logits[0, -1].float().numpy()

    exporter = Seq2SeqExporter(
        backend="hf", route="torch.onnx.export (TorchScript exporter, dynamo=False) of "
        f"{type(model).__name__}: the encoder from the log-mel, the decoder (+ proj_out) from the token prefix and "
        "the encoder states to the last position's logits; the search in numpy", whisper=model.model,
        output_weight=model.proj_out.weight, frontend=whisper_frontend(fe), tokenizer=processor.tokenizer,
        search=search, reference=lambda w: transcribe([w])[0], reference_first_logits=first_logits,
        toolkit_features=features)
    return export_seq2seq_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
