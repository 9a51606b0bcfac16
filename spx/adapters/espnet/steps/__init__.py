"""The ESPnet backend's child-process entry points (`python -m spx.adapters.espnet.steps.<step> RUN_DIR`, run by the
launcher) and the modules only they import: the only ESPnet code of spx that imports torch or espnet2.

ASR (conformer_ctc): fetch (a hub init_from), prepare, train, decode (its load_transcriber is the family's INFERENCE).
ASR ssl_ctc: the same steps, after s3prl_compat's shims (s3prl 0.4.18 on torchaudio 2.11); ssl_export (`spx export`).
TTS (tacotron2, fastspeech2, vits): tts_prepare, tts_train, tts_synth. lazy_imports: deferred toolkit imports.
"""
