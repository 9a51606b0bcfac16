"""Synthesize the test sentences with the best SpeechBrain Tacotron2 checkpoint (child process).

    python -m spx.adapters.speechbrain.steps.tts_synth RUN_DIR

Text -> character ids -> Tacotron2.infer -> log-mel -> vocoder (Griffin-Lim via torchaudio, or the
SpeechBrain HiFi-GAN named in tts.vocoder), timed by the shared protocol (synthesize_and_time).
Also the model loader of the SpeechBrain TTS families, `load_synthesizer(run_dir, device)` (their INFERENCE module:
`spx serve` on a run dir), built on the same synthesize function the test synthesis uses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from spx.adapters.common.child import (load_run, main_guard, pick_device, precision_dtype, set_threads,
                                       synthesize_and_time)
from spx.adapters.speechbrain.steps.tts_model import GriffinLimVocoder, HifiganVocoder, encode_text, load_native
from spx.adapters.speechbrain.steps.tts_train import load_hparams
from spx.deploy.engine import check_symbols

# (spec, device, native info, model, vocoder) -> synthesize(text, speaker or None) -> waveform
SynthesizerFactory = Callable[..., Callable[[str, "str | None"], np.ndarray]]


def load_for_synthesis(run_dir: str | Path, device: str | None = None):
    """(spec, run dir, device, native info, the best checkpoint's model in eval mode, vocoder): what every
    SpeechBrain TTS synth step starts from. device None: the spec's (and its thread count); a server names its own
    device and sets its threads itself."""
    spec, rd = load_run(run_dir)
    if device is None:
        device = pick_device(spec)
        set_threads(spec)
    info = load_native(rd / "native")
    hp = load_hparams(rd)
    best = hp["checkpointer"].find_checkpoint(min_key="loss")
    if best is None:
        raise RuntimeError(f"no checkpoint under {rd / 'checkpoints'}: run the tts_train step first")
    model = hp["model"]
    model.load_state_dict(torch.load(best.path / "model.ckpt", map_location="cpu"))
    model.to(device).eval()
    mel = info["mel"]
    if info["vocoder"]:
        vocoder = HifiganVocoder(info["vocoder"], device, rd / "native" / "vocoder", mel)
    else:
        vocoder = GriffinLimVocoder(mel, info["griffin_lim_iters"], device)
    torch.manual_seed(spec.training.seed)
    return spec, rd, device, info, model, vocoder


def text_ids(text: str, spec, info: dict[str, Any], device: str) -> torch.Tensor:
    """[1, N] character ids of the cleaned text (child.clean_transcript, as in training); an error if none is left."""
    ids = encode_text(text, info["symbols"], spec.tokenizer.lowercase)
    if not ids:
        raise ValueError(f"no character of {text!r} is in the model's symbols: nothing to synthesize")
    return torch.tensor([ids], device=device)


def tacotron2_synthesizer(spec, device: str, info: dict[str, Any], model, vocoder):
    """synthesize(text, speaker) -> waveform: Tacotron2.infer (its gate stops the decoder) -> vocoder."""
    speakers = info["speakers"]

    @torch.inference_mode()
    def synthesize(text: str, speaker: str | None) -> np.ndarray:
        ids = text_ids(text, spec, info, device)
        lengths = torch.tensor([ids.size(1)], device=device)
        if speakers:
            out, mel_lengths, _ = model.infer(ids, lengths, torch.tensor([speakers[speaker]], device=device))
        else:
            out, mel_lengths, _ = model.infer(ids, lengths)
        log_mel = out[0, :, : int(mel_lengths[0])]
        return vocoder(log_mel).float().cpu().numpy()

    return synthesize


def synth_step(run_dir: str, factory: SynthesizerFactory) -> None:
    """The tts_synth step of a SpeechBrain TTS family: its synthesize function, timed over the test sets."""
    spec, rd, device, info, model, vocoder = load_for_synthesis(run_dir)
    synthesize_and_time(rd, spec, factory(spec, device, info, model, vocoder), info["mel"]["sample_rate"], device,
                        precision_dtype(spec, device), info["vocoder_name"])


def serving_synthesizer(run_dir: str | Path, device: str, factory: SynthesizerFactory,
                        min_symbols: int = 1) -> Callable[[list[tuple[str, str | None]]], list[Any]]:
    """A batch of (text, speaker or None) -> [(waveform float32, sample rate)], one sentence at a time, through the
    family's synthesize function (the test synthesis's; the text cleaned as the test sentences are).
    `.speakers`: the speaker names the model takes (empty: one voice); `.check_text(text)`: a ValueError when the
    text has fewer than `min_symbols` symbols of the model's alphabet."""
    spec, _rd, device, info, model, vocoder = load_for_synthesis(run_dir, device)
    synthesize = factory(spec, device, info, model, vocoder)
    speakers = dict(info["speakers"] or {})
    default = next(iter(speakers), None)
    rate = int(info["mel"]["sample_rate"])

    def run(batch: list[tuple[str, str | None]]) -> list[tuple[np.ndarray, int]]:
        out = []
        for text, speaker in batch:
            if speaker is not None and speaker not in speakers:
                raise ValueError(f"unknown speaker {speaker!r}; the model has {sorted(speakers) or 'one voice'}")
            out.append((np.asarray(synthesize(text, speaker or default), dtype=np.float32), rate))
        return out

    def check_text(text: str) -> None:
        check_symbols(text, len(encode_text(text, info["symbols"], spec.tokenizer.lowercase)), min_symbols)

    run.speakers = sorted(speakers)  # type: ignore[attr-defined]
    run.check_text = check_text  # type: ignore[attr-defined]
    return run


def load_synthesizer(run_dir: str | Path, device: str) -> Callable[[list[tuple[str, str | None]]], list[Any]]:
    """The tacotron2 family's loader for `spx serve` (see serving_synthesizer)."""
    return serving_synthesizer(run_dir, device, tacotron2_synthesizer)


def synth(run_dir: str) -> None:
    synth_step(run_dir, tacotron2_synthesizer)


if __name__ == "__main__":
    main_guard(synth)
