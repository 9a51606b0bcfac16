"""Child step `tts_synth`: the best SpeechBrain FastSpeech2 checkpoint speaks the test sentences.

    python -m spx.adapters.speechbrain.tts_fastspeech2_synth RUN_DIR

Text -> character ids -> FastSpeech2WithAlignment (predicted durations, pitch and energy) -> postnet log-mel ->
vocoder (Griffin-Lim via torchaudio, the one Tacotron2 on SpeechBrain uses, or the SpeechBrain HiFi-GAN named in
tts.vocoder), timed by the shared protocol (synthesize_and_time).
"""
from __future__ import annotations

import torch

from spx.adapters.common.child import (load_run, main_guard, pick_device, precision_dtype, set_threads,
                                       synthesize_and_time)
from spx.adapters.speechbrain.tts_model import GriffinLimVocoder, HifiganVocoder, encode_text, load_native
from spx.adapters.speechbrain.tts_train import load_hparams


def synth(run_dir: str) -> None:
    spec, rd = load_run(run_dir)
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
