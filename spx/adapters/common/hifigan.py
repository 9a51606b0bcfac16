"""The render-side rules every backend's HiFi-GAN vocoder job shares (no torch, no toolkit): the residual block
shapes of the `resblock` types, the training crop in whole hops, and the checks on the spec that hold whatever
toolkit trains the generator. Each backend adds its own checks after check_hifigan_job."""
from __future__ import annotations

import math
from typing import Any

from spx.errors import SpxError
from spx.spec import Spec

# kernels and dilations per residual block type, as in HiFi-GAN V1 (type 1) and V3 (type 2)
RESBLOCKS = {1: ([3, 7, 11], [[1, 3, 5], [1, 3, 5], [1, 3, 5]]), 2: ([3, 5, 7], [[1, 2], [2, 6], [3, 12]])}


def segment_samples(spec: Spec, hop: int) -> int:
    """The training crop in samples, rounded down to whole hops."""
    return int(spec.model.segment_seconds * spec.tts.sample_rate) // hop * hop


def check_hifigan_job(spec: Spec, mel: dict[str, Any], toolkit: str) -> None:
    """Raise SpxError before anything runs when the spec cannot be a HiFi-GAN job on any toolkit.
    mel: the backend's mel settings (hop_length, n_fft, win_length in samples); toolkit: its name in messages."""
    m, t, hop = spec.model, spec.training, mel["hop_length"]
    if math.prod(m.upsample_rates) != hop:
        raise SpxError(f"model.upsample_rates {m.upsample_rates} multiply to {math.prod(m.upsample_rates)}, but the mel "
                       f"hop is {hop} samples (features.hop_length_ms {spec.features.hop_length_ms} at "
                       f"{spec.tts.sample_rate} Hz): the generator must make one hop of audio per mel frame",
                       where="model.upsample_rates", hint="e.g. [8, 8, 4] for a 256-sample hop, [8, 5, 4] for 160")
    if segment_samples(spec, hop) < 4 * hop:
        raise SpxError(f"model.segment_seconds {m.segment_seconds} is under 4 mel hops", where="model.segment_seconds",
                       hint="use e.g. 0.5 (the toolkits' recipes crop 8192 samples at 22.05 kHz)")
    if t.batch_size is None:
        raise SpxError("the vocoder job batches by utterance crops", where="training.batch_size",
                       hint="set training.batch_size")
    if t.scheduler.name not in {"cosine", "constant"}:
        raise SpxError(f"training.scheduler {t.scheduler.name!r} is not mapped for the {toolkit} vocoder",
                       where="training.scheduler.name", hint="use cosine (with warmup_steps) or constant")
    if spec.tts.vocoder:
        raise SpxError("tts.vocoder names the vocoder of an acoustic model; this job *is* a vocoder",
                       where="tts.vocoder", hint="remove tts.vocoder from the hifigan recipe")
    if spec.resources.devices * spec.resources.nodes > 1:
        raise SpxError(f"the {toolkit} vocoder job runs as one process in spx", where="resources.devices",
                       hint="set resources.devices: 1 and resources.nodes: 1")
