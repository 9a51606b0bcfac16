"""SpeechBrain TTS pieces the child processes share (imports torch/speechbrain: child processes only).

- SpeakerTacotron2: SpeechBrain's Tacotron2 plus a speaker-embedding table added to the encoder output
  (the same integration as ESPnet's `spks`), used only when `tts.multi_speaker` is on.
- mel features (speechbrain.lobes.models.Tacotron2.mel_spectrogram, log-compressed) and their inverse:
  InverseMelScale + Griffin-Lim (torchaudio).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from speechbrain.lobes.models.Tacotron2 import Tacotron2, mel_spectrogram

from spx.adapters.common.child import clean_transcript


class SpeakerTacotron2(Tacotron2):
    """Tacotron2 conditioned on a speaker id: encoder output + speaker embedding (ESPnet `spks` style)."""

    def __init__(self, n_speakers: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.speaker_embedding = torch.nn.Embedding(n_speakers, kwargs["encoder_embedding_dim"])

    def _encode(self, text, text_lengths, speakers, infer: bool):
        embedded = self.embedding(text).transpose(1, 2)
        enc = (self.encoder.infer if infer else self.encoder)(embedded, text_lengths)
        return enc + self.speaker_embedding(speakers).unsqueeze(1)

    def forward(self, inputs, alignments_dim=None):
        text, text_lengths, targets, _max_len, output_lengths, speakers = inputs
        memory = self._encode(text, text_lengths, speakers, infer=False)
        mel, gate, align = self.decoder(memory, targets, memory_lengths=text_lengths)
        post = mel + self.postnet(mel)
        return self.parse_output([mel, post, gate, align], output_lengths, alignments_dim)

    def infer(self, inputs, input_lengths, speakers=None):  # noqa: D102 - same as Tacotron2.infer + speakers
        memory = self._encode(inputs, input_lengths, speakers, infer=True)
        mel, _gate, align, mel_lengths = self.decoder.infer(memory, input_lengths)
        post = mel + self.postnet(mel)
        return post, mel_lengths, align


def load_native(native: Path) -> dict[str, Any]:
    return json.loads((native / "tts_info.json").read_text())


def encode_text(text: str, symbols: list[str], lowercase: bool = True) -> list[int]:
    """Cleaned characters -> ids (0 is padding, so symbol i has id i + 1)."""
    index = {s: i + 1 for i, s in enumerate(symbols)}
    cleaned = clean_transcript(text, lowercase)
    return [index[c] for c in cleaned if c in index]


def compute_mel(wav: np.ndarray, mel: dict[str, Any]) -> torch.Tensor:
    """(n_mels, frames) natural-log mel spectrogram, the features SpeechBrain's Tacotron2 recipes use."""
    return mel_spectrogram(
        sample_rate=mel["sample_rate"], hop_length=mel["hop_length"], win_length=mel["win_length"],
        n_fft=mel["n_fft"], n_mels=mel["n_mels"], f_min=mel["f_min"], f_max=mel["f_max"], power=1.0,
        normalized=False, norm="slaney", mel_scale="slaney", compression=True, audio=torch.from_numpy(wav),
    )


class GriffinLimVocoder:
    """log-mel -> linear magnitude (least squares, InverseMelScale) -> Griffin-Lim phase reconstruction."""

    def __init__(self, mel: dict[str, Any], iters: int, device: str):
        import torchaudio

        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=mel["n_fft"] // 2 + 1, n_mels=mel["n_mels"], sample_rate=mel["sample_rate"],
            f_min=mel["f_min"], f_max=mel["f_max"], norm="slaney", mel_scale="slaney").to(device)
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=mel["n_fft"], win_length=mel["win_length"], hop_length=mel["hop_length"], power=1.0,
            n_iter=iters).to(device)

    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.griffin_lim(self.inverse_mel(torch.exp(log_mel)))


class HifiganVocoder:
    """A SpeechBrain HiFi-GAN (a folder with hyperparams.yaml + generator.ckpt, e.g. a local copy of
    speechbrain/tts-hifigan-*, or the export of an spx speechbrain hifigan run), loaded with
    speechbrain.inference.vocoders.HIFIGAN. One hop of audio per mel frame: HifiganGenerator.inference replicates
    `inference_padding` frames at each end, whose audio is cut off again."""

    def __init__(self, source: str, device: str, savedir: Path, mel: dict[str, Any]):
        from speechbrain.inference.vocoders import HIFIGAN

        self.model = HIFIGAN.from_hparams(source=source, savedir=str(savedir), run_opts={"device": device})
        generator = self.model.hparams.generator
        n_mels = generator.conv_pre.in_channels
        hop = int(np.prod([up.conv.stride[0] for up in generator.ups]))
        if (n_mels, hop) != (mel["n_mels"], mel["hop_length"]):
            raise RuntimeError(f"tts.vocoder {source} reads {n_mels} mels with a hop of {hop} samples; the acoustic "
                               f"model makes {mel['n_mels']} mels with a hop of {mel['hop_length']}: the vocoder must be "
                               "trained on the same mel settings (tts.n_mels, features.hop_length_ms)")
        self.hop = hop
        self.padding = int(getattr(generator, "inference_padding", 0)) * hop

    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        wav = self.model.decode_batch(log_mel.unsqueeze(0)).reshape(-1)
        return wav[self.padding: self.padding + log_mel.size(-1) * self.hop]
