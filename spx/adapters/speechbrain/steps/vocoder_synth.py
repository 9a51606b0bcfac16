"""Child step `tts_synth` of the SpeechBrain HiFi-GAN vocoder job: copy synthesis of the test recordings.

    python -m spx.adapters.speechbrain.steps.vocoder_synth RUN_DIR

The exported folder (train_summary.json `exported_model`) is loaded the way any user loads it,
speechbrain.inference.vocoders.HIFIGAN.from_hparams (through tts_model.HifiganVocoder, which checks its mels and hop);
each recording -> the folder's own mel_spectrogram -> the generator, one hop of audio per mel frame of the recording
(the frames HifiganGenerator.inference pads at each end are cut off again). Timed by the shared protocol
(synthesize_and_time, copy_synthesis: the recording is loaded before the clock) and scored like any TTS run.
"""
from __future__ import annotations

import json

import torch

from spx.adapters.common.child import (load_run, main_guard, pick_device, precision_dtype, set_threads,
                                       synthesize_and_time)
from spx.adapters.speechbrain.steps.tts_model import HifiganVocoder, load_native


def synth(run_dir: str) -> None:
    spec, rd = load_run(run_dir)
    device = pick_device(spec)
    set_threads(spec)
    info = load_native(rd / "native")
    summary_path = rd / "train_summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"{summary_path} is missing: run the tts_train step first")
    mel = info["mel"]
    vocoder = HifiganVocoder(json.loads(summary_path.read_text())["exported_model"], device, rd / "native" / "vocoder",
                             mel)
    mel_spectrogram = vocoder.model.hparams.mel_spectrogram  # the exported folder's own: what it was trained on
    torch.manual_seed(spec.training.seed)

    @torch.inference_mode()
    def synthesize(recording, speaker: str | None):
        log_mel = mel_spectrogram(audio=torch.from_numpy(recording).to(device))
        return vocoder(log_mel).float().cpu().numpy()

    synthesize_and_time(rd, spec, synthesize, mel["sample_rate"], device, precision_dtype(spec, device),
                        info["vocoder_name"], copy_synthesis=True)


if __name__ == "__main__":
    main_guard(synth)
