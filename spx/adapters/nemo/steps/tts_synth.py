"""Child step `tts_synth`: the exported FastPitch (checkpoints/model.nemo) speaks the test sentences; for a vocoder
job the exported HifiGanModel re-synthesizes the test recordings (copy synthesis).

    python -m spx.adapters.nemo.steps.tts_synth RUN_DIR

Text -> NeMo's char tokenizer (FastPitchModel.parse) -> generate_spectrogram (predicted durations and pitch) ->
log-mel -> vocoder: Griffin-Lim through the model's own mel filterbank (torchaudio), or the HiFiGAN .nemo named by
tts.vocoder (HifiGanModel.convert_spectrogram_to_audio). Vocoder job: recording -> the model's own mel preprocessor
-> generator. Timed by the shared protocol (synthesize_and_time).
Also the fastspeech2 family's model loader `load_synthesizer(run_dir, device)` (its INFERENCE module: `spx serve` on a
run dir), built by the same fastpitch_synthesizer as the step.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from spx.adapters.common.child import clean_transcript, load_run, main_guard, pick_device, precision_dtype, \
    set_threads, synthesize_and_time
from spx.adapters.nemo.helpers import TTS_INFO


class GriffinLim:
    """NeMo's log-mel (natural log of slaney mel of |STFT|, + 1e-5 guard) back to a waveform: least-squares inverse
    of the model's own filterbank, then Griffin-Lim with the same STFT settings."""

    def __init__(self, featurizer, mel: dict, iters: int, device: str) -> None:
        import torch
        import torchaudio

        self.fb = featurizer.fb[0].to(device).float()  # (n_mels, n_fft // 2 + 1)
        self.guard = float(getattr(featurizer, "log_zero_guard_value", 1e-5))
        self.pinv = torch.linalg.pinv(self.fb)
        self.gl = torchaudio.transforms.GriffinLim(n_fft=mel["n_fft"], n_iter=iters, win_length=mel["win_length"],
                                                   hop_length=mel["hop_length"], power=1.0,
                                                   window_fn=lambda n: torch.hann_window(n, periodic=False)).to(device)

    def __call__(self, log_mel):
        mel = (log_mel.float().exp() - self.guard).clamp(min=0)
        linear = (self.pinv @ mel).clamp(min=1e-8)
        return self.gl(linear)


class VocoderMismatch(RuntimeError):
    """tts.vocoder makes another mel than the acoustic model."""


def exported_model(rd) -> str:
    """The run's exported .nemo (train_summary.json's exported_model)."""
    summary_path = rd / "train_summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"{summary_path} is missing: run the tts_train step first")
    return json.loads(summary_path.read_text())["exported_model"]


def fastpitch_synthesizer(rd, spec, device: str) -> tuple[Callable[[str, str | None], np.ndarray], int, str, Any]:
    """(synthesize(cleaned text, speaker) -> waveform, sample rate, vocoder name, the FastPitchModel) of a fastspeech2
    run: its exported FastPitch and its vocoder (Griffin-Lim, or the HiFiGAN .nemo tts.vocoder named)."""
    import torch

    from nemo.collections.tts.models import FastPitchModel

    info = json.loads((rd / TTS_INFO).read_text())
    mel = info["mel"]
    model = FastPitchModel.restore_from(exported_model(rd), map_location=device).eval()
    if info["vocoder"]:
        from nemo.collections.tts.models import HifiGanModel

        vocoder_model = HifiGanModel.restore_from(info["vocoder"], map_location=device).eval()
        want = (mel["sample_rate"], mel["n_mels"])
        pre = vocoder_model.cfg.preprocessor  # FilterbankFeatures (nfilt), AudioToMelSpectrogramPreprocessor (features)
        got = (int(pre.sample_rate), int(pre.get("nfilt", pre.get("features", 0))))
        if got != want:
            raise VocoderMismatch(f"tts.vocoder {info['vocoder']} was trained on {got[1]} mels at {got[0]} Hz, this "
                                  f"FastPitch makes {want[1]} mels at {want[0]} Hz")

        def vocoder(log_mel):
            return vocoder_model.convert_spectrogram_to_audio(spec=log_mel.unsqueeze(0))[0]
    else:
        vocoder = GriffinLim(model.preprocessor.featurizer, mel, info["griffin_lim_iters"], device)
    torch.manual_seed(spec.training.seed)

    @torch.inference_mode()
    def synthesize(text: str, speaker: str | None) -> np.ndarray:
        tokens = model.parse(text, normalize=False)
        log_mel = model.generate_spectrogram(tokens=tokens)[0]
        return vocoder(log_mel).float().cpu().numpy()

    return synthesize, int(mel["sample_rate"]), info["vocoder_name"], model


def load_synthesizer(run_dir: str | Path, device: str) -> Callable[[list[tuple[str, str | None]]], list[Any]]:
    """The fastspeech2 family's model loader (`spx serve` on a run dir): a batch of (text, speaker or None) ->
    [(waveform float32, sample rate)], one sentence at a time as the test synthesis does, the text cleaned as the test
    sentences are (child.clean_transcript). `.speakers`: empty (spx's NeMo FastPitch speaks with one voice)."""
    spec, rd = load_run(run_dir)
    synthesize, rate, _, _ = fastpitch_synthesizer(rd, spec, device)

    def run(batch: list[tuple[str, str | None]]) -> list[tuple[np.ndarray, int]]:
        out = []
        for text, speaker in batch:
            if speaker is not None:
                raise ValueError(f"unknown speaker {speaker!r}; the model has one voice")
            wav = synthesize(clean_transcript(text, spec.tokenizer.lowercase), None)
            out.append((np.asarray(wav, dtype=np.float32).reshape(-1), rate))
        return out

    run.speakers = []  # type: ignore[attr-defined]
    return run


def synth(run_dir: str) -> None:
    spec, rd = load_run(run_dir)
    device = pick_device(spec)
    set_threads(spec)
    info = json.loads((rd / TTS_INFO).read_text())
    if info.get("model_class") == "HifiGanModel":
        return _copy_synthesis(spec, rd, exported_model(rd), info["mel"], device, info["vocoder_name"])
    try:
        synthesize, rate, vocoder_name, _ = fastpitch_synthesizer(rd, spec, device)
    except VocoderMismatch as err:
        print(f"spx nemo: error: {err}", flush=True)
        sys.exit(2)
    synthesize_and_time(rd, spec, synthesize, rate, device, precision_dtype(spec, device), vocoder_name)


def _copy_synthesis(spec, rd, exported: str, mel: dict, device: str, vocoder_name: str) -> None:
    import torch

    from nemo.collections.tts.models import HifiGanModel

    model = HifiGanModel.restore_from(exported, map_location=device).eval()
    torch.manual_seed(spec.training.seed)

    @torch.inference_mode()
    def synthesize(recording, speaker: str | None):
        audio = torch.from_numpy(recording).to(device).unsqueeze(0)
        log_mel, _ = model.audio_to_melspec_precessor(audio, torch.tensor([audio.shape[1]], device=device))
        return model.convert_spectrogram_to_audio(spec=log_mel)[0].float().cpu().numpy()

    synthesize_and_time(rd, spec, synthesize, mel["sample_rate"], device, precision_dtype(spec, device),
                        vocoder_name, copy_synthesis=True)


if __name__ == "__main__":
    main_guard(synth)
