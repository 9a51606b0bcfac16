"""NeMo child-process entry points (`python -m spx.adapters.nemo.steps.<step> RUN_DIR`)."""
