"""NeMo backend: `task: asr` with Conformer-CTC (EncDecCTCModel / EncDecCTCModelBPE), `task: tts` with FastPitch
(family fastspeech2, NeMo's internal aligner) and HiFi-GAN (family hifigan, a vocoder job). Each family module renders
NeMo's own OmegaConf config and JSONL manifests; the steps/ modules run NeMo in child processes. No torch or NeMo
import here (docs/backends/nemo.md)."""
from __future__ import annotations

from spx.adapters.base import BackendAdapter

ADAPTER = BackendAdapter(
    name="nemo",
    loggers=("tensorboard", "wandb", "mlflow"),  # exp_manager creates each
    families={"classification": {"kws_classifier": "kws_classifier"},
              "asr": {"conformer_ctc": "conformer_ctc"},
              "tts": {"fastspeech2": "fastspeech2", "hifigan": "hifigan"}},
    hint="run it on a backend that has it; nemo has task: asr with family: conformer_ctc, task: classification with "
         "family: kws_classifier (MatchboxNet) and task: tts with family: "
         "fastspeech2 (FastPitch) or hifigan (a vocoder job); NeMo 3.0 ships no Tacotron2/VITS: run those on espnet "
         "or speechbrain; NeMo loads no Hugging Face or fairseq models, so ssl_ctc, whisper and ssl_classifier run on the other backends",
)
