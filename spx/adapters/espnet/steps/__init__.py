"""ESPnet child-process entry points (`python -m spx.adapters.espnet.steps.<step> RUN_DIR`)."""
