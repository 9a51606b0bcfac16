"""Synthesize the test sentences with the best SpeechBrain Tacotron2 checkpoint (child process).

    python -m spx.adapters.speechbrain.steps.tts_synth RUN_DIR

Text -> character ids -> Tacotron2.infer -> log-mel -> vocoder (Griffin-Lim via torchaudio, or the
SpeechBrain HiFi-GAN named in tts.vocoder), timed by the shared protocol (synthesize_and_time).
"""
from __future__ import annotations

import torch

from spx.adapters.common.child import (load_run, main_guard, pick_device, precision_dtype, set_threads,
                                       synthesize_and_time)
from spx.adapters.speechbrain.steps.tts_model import GriffinLimVocoder, HifiganVocoder, encode_text, load_native
from spx.adapters.speechbrain.steps.tts_train import load_hparams


def load_for_synthesis(run_dir: str):
    """(spec, run dir, device, native info, the best checkpoint's model in eval mode, vocoder): what every
    SpeechBrain TTS synth step starts from."""
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
    return spec, rd, device, info, model, vocoder


def synth(run_dir: str) -> None:
    spec, rd, device, info, model, vocoder = load_for_synthesis(run_dir)
    mel = info["mel"]
    speakers = info["speakers"]

    @torch.inference_mode()
    def synthesize(text: str, speaker: str | None):
        ids = torch.tensor([encode_text(text, info["symbols"], spec.tokenizer.lowercase)], device=device)
        lengths = torch.tensor([ids.size(1)], device=device)
        if speakers:
            out, mel_lengths, _ = model.infer(ids, lengths, torch.tensor([speakers[speaker]], device=device))
        else:
            out, mel_lengths, _ = model.infer(ids, lengths)
        log_mel = out[0, :, : int(mel_lengths[0])]
        return vocoder(log_mel).float().cpu().numpy()

    synthesize_and_time(rd, spec, synthesize, mel["sample_rate"], device, precision_dtype(spec, device),
                        info["vocoder_name"])


if __name__ == "__main__":
    main_guard(synth)
