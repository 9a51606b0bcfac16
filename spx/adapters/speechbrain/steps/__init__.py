"""The SpeechBrain backend's child processes (`python -m spx.adapters.speechbrain.steps.<step> RUN_DIR`) and the
modules they share: the only code of the backend that imports torch or speechbrain."""
