"""Hugging Face Transformers backend: pretrained wav2vec2 / HuBERT / WavLM with a new CTC head (ssl_ctc) or a new
class layer (ssl_classifier), and Whisper (whisper), fine-tuned through the library's own Trainer / Seq2SeqTrainer
(peft for LoRA). docs/backends/hf.md."""
from spx.adapters.base import BackendAdapter

ADAPTER = BackendAdapter(
    name="hf",
    families={"asr": {"ssl_ctc": "ssl_ctc", "whisper": "whisper"},
              "classification": {"ssl_classifier": "ssl_classifier"}},
    hint="the hf backend fine-tunes pretrained models (model.family ssl_ctc or whisper for asr, ssl_classifier for "
         "classification); train conformer_ctc, kws_classifier and the TTS families on nemo, speechbrain or espnet",
)
