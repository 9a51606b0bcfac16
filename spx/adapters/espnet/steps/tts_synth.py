"""Child step `tts_synth`: synthesize the test sentences with espnet2.bin.tts_inference.Text2Speech from the model
render chose (Tacotron2, FastSpeech2: valid.loss.best.pth; VITS: latest.pth), Griffin-Lim (native/conf/griffin_lim.yaml) unless
tts.vocoder names a ParallelWaveGAN-family vocoder, none for VITS (it outputs the waveform); timed by the shared
protocol (synthesize_and_time). Also the families' model loader `load_synthesizer(run_dir, device)` (their
INFERENCE module: `spx serve` on a run dir)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from spx.adapters.common import child
from spx.adapters.espnet.helpers import EXP, GL_CONF, TTS_COMMANDS
from spx.adapters.espnet.steps.common import start


def load_text2speech(rd, spec, device: str, dtype: str) -> tuple[Any, dict]:
    """(espnet2.bin.tts_inference.Text2Speech of the run's model with its vocoder, the run's native commands); the
    working directory must be the run dir (the config names its feature statistics relative to it)."""
    native = json.loads((rd / TTS_COMMANDS).read_text())
    model = rd / native["synth_model"]
    if not model.exists():
        raise SystemExit(f"no {model}: run the tts_train step first")

    from espnet2.bin.tts_inference import Text2Speech

    voc = native["vocoder"]
    end_to_end = native["family"] == "vits"
    tts = Text2Speech(train_config=str(rd / EXP / "config.yaml"), model_file=str(model),
                      vocoder_config=voc["config"] if voc else (None if end_to_end else str(rd / GL_CONF)),
                      vocoder_file=voc["file"] if voc else None, device=device, dtype=dtype, seed=spec.training.seed)
    if tts.tts.require_vocoder and tts.vocoder is None:
        raise SystemExit("Text2Speech built no vocoder (Griffin-Lim needs the fbank settings in the model config)")
    return tts, native


def _synthesizer(rd, spec, device: str, dtype: str) -> tuple[Callable[[str, str | None], np.ndarray], int, dict]:
    """(synthesize(text, speaker) -> waveform, sample rate, the run's native commands) from the run's model."""
    import torch

    tts, native = load_text2speech(rd, spec, device, dtype)
    speakers = native["speakers"]

    def synthesize(text: str, speaker: str | None) -> np.ndarray:
        kwargs = {"sids": np.array(speakers[speaker])} if speakers else {}
        with torch.no_grad():
            out = tts(text, **kwargs)
        return out["wav"].float().cpu().numpy()

    return synthesize, int(tts.fs), native


def load_synthesizer(run_dir: str | Path, device: str) -> Callable[[list[tuple[str, str | None]]], list[Any]]:
    """A batch of (text, speaker or None) -> [(waveform float32, sample rate)], one sentence at a time (as the test
    synthesis: an autoregressive decoder stops per sentence). The text is cleaned as the test sentences are
    (child.clean_transcript). `.speakers`: the speaker names the model takes (empty: single speaker)."""
    here = os.getcwd()
    spec, rd = start(str(run_dir))  # chdir: the native paths are relative to the run dir
    try:
        synthesize, rate, native = _synthesizer(rd, spec, device, "float32")
    finally:
        os.chdir(here)
    speakers = dict(native["speakers"] or {})
    default = next(iter(speakers), None)

    def run(batch: list[tuple[str, str | None]]) -> list[tuple[np.ndarray, int]]:
        out = []
        for text, speaker in batch:
            if speaker is not None and speaker not in speakers:
                raise ValueError(f"unknown speaker {speaker!r}; the model has {sorted(speakers) or 'one voice'}")
            wav = synthesize(child.clean_transcript(text, spec.tokenizer.lowercase), speaker or default)
            out.append((np.asarray(wav, dtype=np.float32), rate))
        return out

    run.speakers = sorted(speakers)  # type: ignore[attr-defined]
    return run


def main(run_dir: str) -> None:
    spec, rd = start(run_dir)
    child.set_threads(spec)
    device = child.pick_device(spec)
    dtype = child.precision_dtype(spec, device)
    synthesize, fs, native = _synthesizer(rd, spec, device, dtype)
    child.synthesize_and_time(rd, spec, synthesize, fs, device, dtype, native["vocoder_name"])


if __name__ == "__main__":
    child.main_guard(main)
