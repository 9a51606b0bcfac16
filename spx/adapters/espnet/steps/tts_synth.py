"""Child step `tts_synth`: synthesize the test sentences with espnet2.bin.tts_inference.Text2Speech from the model
render chose (Tacotron2, FastSpeech2: valid.loss.best.pth; VITS: latest.pth), Griffin-Lim (native/conf/griffin_lim.yaml) unless
tts.vocoder names a ParallelWaveGAN-family vocoder, none for VITS (it outputs the waveform); timed by the shared
protocol (synthesize_and_time)."""
from __future__ import annotations

import json

import numpy as np

from spx.adapters.common import child
from spx.adapters.espnet.helpers import EXP, GL_CONF, TTS_COMMANDS
from spx.adapters.espnet.steps.common import start


def main(run_dir: str) -> None:
    spec, rd = start(run_dir)
    child.set_threads(spec)
    device = child.pick_device(spec)
    dtype = child.precision_dtype(spec, device)
    native = json.loads((rd / TTS_COMMANDS).read_text())
    model = rd / native["synth_model"]
    if not model.exists():
        raise SystemExit(f"no {model}: run the tts_train step first")

    import torch
    from espnet2.bin.tts_inference import Text2Speech

    voc = native["vocoder"]
    end_to_end = native["family"] == "vits"
    tts = Text2Speech(train_config=str(rd / EXP / "config.yaml"), model_file=str(model),
                      vocoder_config=voc["config"] if voc else (None if end_to_end else str(rd / GL_CONF)),
                      vocoder_file=voc["file"] if voc else None, device=device, dtype=dtype, seed=spec.training.seed)
    if tts.tts.require_vocoder and tts.vocoder is None:
        raise SystemExit("Text2Speech built no vocoder (Griffin-Lim needs the fbank settings in the model config)")
    speakers = native["speakers"]
    fs = tts.fs

    def synthesize(text: str, speaker: str | None) -> np.ndarray:
        kwargs = {"sids": np.array(speakers[speaker])} if speakers else {}
        with torch.no_grad():
            out = tts(text, **kwargs)
        return out["wav"].float().cpu().numpy()

    child.synthesize_and_time(rd, spec, synthesize, fs, device, dtype, native["vocoder_name"])


if __name__ == "__main__":
    child.main_guard(main)
