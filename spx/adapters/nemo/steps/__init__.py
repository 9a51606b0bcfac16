"""The NeMo backend's child-process entry points (`python -m spx.adapters.nemo.steps.<step> RUN_DIR`): the only NeMo
modules that import torch, Lightning or NeMo. prep (the bpe tokenizer), train and decode run Conformer-CTC jobs;
tts_prepare (FastPitch pitch statistics), tts_train and tts_synth run the TTS families (FastPitch, HiFi-GAN)."""
