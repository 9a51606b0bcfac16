"""Hugging Face Transformers backend: pretrained wav2vec2 / HuBERT / WavLM with a new CTC head (ssl_ctc) and Whisper
(whisper) fine-tuned through the library's own Trainer / Seq2SeqTrainer (peft for LoRA). docs/backends/hf.md."""
from spx.adapters.base import BackendAdapter

ADAPTER = BackendAdapter(
    name="hf",
    families={"asr": {"ssl_ctc": "ssl_ctc", "whisper": "whisper"}},
    hint="the hf backend fine-tunes pretrained models (model.family ssl_ctc or whisper); train conformer_ctc and TTS "
         "families on nemo, speechbrain or espnet",
)
