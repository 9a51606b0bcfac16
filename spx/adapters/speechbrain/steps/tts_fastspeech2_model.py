"""SpeechBrain FastSpeech2 with an alignment prior (imports torch/speechbrain: child processes only).

FastSpeech2WithAlignmentPrior is SpeechBrain's FastSpeech2WithAlignment whose aligner also gets the beta-binomial
alignment prior of the paper that aligner comes from (Badlani et al. 2021, "One TTS Alignment To Rule Them All"; NeMo
FastPitch uses it too), through SpeechBrain AlignmentNetwork's own `attn_prior` input. Without it the soft alignment
of a small model on a small corpus stays near uniform, and monotonic alignment search then gives every character one
frame and the last one the rest, which the duration predictor learns. alignment_prior_scaling 0 = SpeechBrain's
aligner unchanged (no prior).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.stats import betabinom
from speechbrain.lobes.models.FastSpeech2 import FastSpeech2WithAlignment, maximum_path_numpy


@lru_cache(maxsize=4096)
def beta_binomial_prior(n_tokens: int, n_frames: int, scaling: float) -> np.ndarray:
    """(n_frames, n_tokens): for mel frame i (1-based) a beta-binomial over the tokens with a = s*i,
    b = s*(n_frames + 1 - i), so the prior mass moves along the diagonal."""
    frames = np.arange(1, n_frames + 1)[:, None]
    return betabinom(n_tokens - 1, scaling * frames, scaling * (n_frames + 1 - frames)).pmf(
        np.arange(n_tokens)[None, :]).astype(np.float32)


class FastSpeech2WithAlignmentPrior(FastSpeech2WithAlignment):
    def __init__(self, alignment_prior_scaling: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.alignment_prior_scaling = alignment_prior_scaling

    def batch_prior(self, x_mask: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        """[B, T_frames, T_tokens] prior of each utterance (zeros over padding, which the aligner masks)."""
        token_lengths = x_mask.reshape(x_mask.size(0), -1).sum(1).long().tolist()
        frame_lengths = y_mask.reshape(y_mask.size(0), -1).sum(1).long().tolist()
        prior = torch.zeros(x_mask.size(0), y_mask.size(-1), x_mask.size(-1), device=x_mask.device)
        for i, (n_tokens, n_frames) in enumerate(zip(token_lengths, frame_lengths)):
            block = beta_binomial_prior(n_tokens, n_frames, self.alignment_prior_scaling)
            prior[i, :n_frames, :n_tokens] = torch.from_numpy(block).to(prior.device)
        return prior

    def _forward_aligner(self, x, y, x_mask, y_mask):
        """SpeechBrain's aligner step (soft alignment -> monotonic alignment search -> durations), with the prior."""
        prior = self.batch_prior(x_mask, y_mask) if self.alignment_prior_scaling > 0 else None
        attn_mask = torch.unsqueeze(x_mask, -1) * torch.unsqueeze(y_mask, 2)
        alignment_soft, alignment_logprob = self.aligner(y.transpose(1, 2), x.transpose(1, 2), x_mask, prior)
        alignment_mas = maximum_path_numpy(alignment_soft.squeeze(1).transpose(1, 2).contiguous(),
                                           attn_mask.squeeze(1).contiguous())
        durations = torch.sum(alignment_mas, -1).int()
        return durations, alignment_soft.squeeze(1).transpose(1, 2), alignment_logprob, alignment_mas
