"""SpeechBrain backend: each spec becomes a SpeechBrain-native recipe (generated hyperpyyaml + a Brain subclass).

Families (one module each, docs/backends/speechbrain.md): asr/conformer_ctc, asr/ssl_ctc (a pretrained
wav2vec2/HuBERT/WavLM through SpeechBrain's Transformers integration), asr/whisper (its Whisper
integration), tts/tacotron2, tts/fastspeech2 and
tts/hifigan (a vocoder job); helpers.py holds what they share; steps/ the child processes, the only code that imports
torch or speechbrain.
"""
from spx.adapters.base import BackendAdapter

ADAPTER = BackendAdapter(
    name="speechbrain",
    families={"classification": {"kws_classifier": "kws_classifier"},
              "asr": {"conformer_ctc": "conformer_ctc", "ssl_ctc": "ssl_ctc", "whisper": "whisper"},
              "tts": {"tacotron2": "tacotron2", "fastspeech2": "fastspeech2", "hifigan": "hifigan"}},
    hint="choose another backend or model.family (see `spx spec schema`)",
)
