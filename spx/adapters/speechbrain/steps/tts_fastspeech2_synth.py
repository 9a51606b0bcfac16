"""Child step `tts_synth`: the best SpeechBrain FastSpeech2 checkpoint speaks the test sentences.

    python -m spx.adapters.speechbrain.steps.tts_fastspeech2_synth RUN_DIR

Text -> character ids -> FastSpeech2WithAlignment (predicted durations, pitch and energy) -> postnet log-mel ->
vocoder (Griffin-Lim via torchaudio, the one Tacotron2 on SpeechBrain uses, or the SpeechBrain HiFi-GAN named in
tts.vocoder), timed by the shared protocol (synthesize_and_time).
"""
from __future__ import annotations

import torch

from spx.adapters.common.child import main_guard, precision_dtype, synthesize_and_time
from spx.adapters.speechbrain.steps.tts_model import encode_text
from spx.adapters.speechbrain.steps.tts_synth import load_for_synthesis


def synth(run_dir: str) -> None:
    spec, rd, device, info, model, vocoder = load_for_synthesis(run_dir)
    mel = info["mel"]

    @torch.inference_mode()
    def synthesize(text: str, speaker: str | None):
        ids = torch.tensor([encode_text(text, info["symbols"], spec.tokenizer.lowercase)], device=device)
        outputs = model(ids)  # no mel/pitch/energy given: the model uses its own predictions
        postnet_mel, mel_lengths = outputs[1], outputs[7]
        frames = int(mel_lengths[0])
        if frames == 0:
            raise RuntimeError(f"the model predicts zero frames for {text!r}: it is not trained enough to speak")
        return vocoder(postnet_mel[0, :frames].transpose(0, 1)).float().cpu().numpy()

    synthesize_and_time(rd, spec, synthesize, mel["sample_rate"], device, precision_dtype(spec, device),
                        info["vocoder_name"])


if __name__ == "__main__":
    main_guard(synth)
