"""SpeechBrain child-process entry points (`python -m spx.adapters.speechbrain.steps.<step> RUN_DIR`)."""
