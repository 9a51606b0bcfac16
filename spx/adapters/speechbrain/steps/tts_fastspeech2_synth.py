"""Child step `tts_synth`: the best SpeechBrain FastSpeech2 checkpoint speaks the test sentences.

    python -m spx.adapters.speechbrain.steps.tts_fastspeech2_synth RUN_DIR

Text -> character ids -> FastSpeech2WithAlignment (predicted durations, pitch and energy) -> postnet log-mel ->
vocoder (Griffin-Lim via torchaudio, the one Tacotron2 on SpeechBrain uses, or the SpeechBrain HiFi-GAN named in
tts.vocoder), timed by the shared protocol (synthesize_and_time). Also the family's `load_synthesizer(run_dir,
device)` (its INFERENCE module: `spx serve` on a run dir).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from spx.adapters.common.child import main_guard
from spx.adapters.speechbrain.fastspeech2 import MIN_SYMBOLS
from spx.adapters.speechbrain.steps.tts_synth import serving_synthesizer, synth_step, text_ids


def postnet_mel(model, ids: torch.Tensor) -> torch.Tensor:
    """[n_mels, frames] postnet log-mel of one sentence's ids [1, N], from the model's own duration, pitch and
    energy predictions (what the test synthesis and the export's reference both use)."""
    outputs = model(ids)  # no mel/pitch/energy given: the model uses its own predictions
    mel, mel_lengths = outputs[1], outputs[7]
    frames = int(mel_lengths[0])
    if frames == 0:
        raise RuntimeError(f"the model predicts zero frames for ids {ids.tolist()}: it is not trained enough to speak")
    return mel[0, :frames].transpose(0, 1)


def fastspeech2_synthesizer(spec, device: str, info: dict[str, Any], model, vocoder):
    """synthesize(text, speaker) -> waveform: FastSpeech2WithAlignment -> postnet log-mel -> vocoder."""
    @torch.inference_mode()
    def synthesize(text: str, speaker: str | None) -> np.ndarray:
        return vocoder(postnet_mel(model, text_ids(text, spec, info, device))).float().cpu().numpy()

    return synthesize


def load_synthesizer(run_dir: str | Path, device: str) -> Callable[[list[tuple[str, str | None]]], list[Any]]:
    """The fastspeech2 family's loader for `spx serve` (tts_synth.serving_synthesizer)."""
    return serving_synthesizer(run_dir, device, fastspeech2_synthesizer, MIN_SYMBOLS)


def synth(run_dir: str) -> None:
    synth_step(run_dir, fastspeech2_synthesizer)


if __name__ == "__main__":
    main_guard(synth)
