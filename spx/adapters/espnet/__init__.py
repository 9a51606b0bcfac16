"""ESPnet backend: each spec becomes ESPnet's own config (`conf/train_asr.yaml`, `conf/train_tts.yaml`), Kaldi-style
data dirs and `espnet2.bin.*` commands, written to run_dir/native/ so that ESPnet alone reproduces the run.

Families: asr/conformer_ctc (conformer_ctc.py), asr/ssl_ctc (ssl_ctc.py: a pretrained wav2vec2/HuBERT through the
s3prl frontend), asr/whisper (whisper.py: refused with the reason), tts/tacotron2, tts/fastspeech2 (from a Tacotron2 teacher's
durations), tts/vits (tacotron2.py, fastspeech2.py, vits.py); what they share is in helpers.py; the child-process
entry points, the only code that imports torch or espnet2, are in steps/ (docs/backends/espnet.md).
"""
from spx.adapters.base import BackendAdapter

ADAPTER = BackendAdapter(
    name="espnet",
    families={"classification": {"kws_classifier": "kws_classifier"},
              "asr": {"conformer_ctc": "conformer_ctc", "ssl_ctc": "ssl_ctc", "whisper": "whisper"},
              "tts": {"tacotron2": "tacotron2", "fastspeech2": "fastspeech2", "vits": "vits"}},
    hint="ESPnet in spx renders asr/conformer_ctc, asr/ssl_ctc, classification/kws_classifier and tts/tacotron2, tts/fastspeech2, "
         "tts/vits; use another backend "
         "for this job",
)
