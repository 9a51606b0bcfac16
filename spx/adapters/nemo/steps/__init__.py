"""Child-process entry points of the nemo backend (`python -m spx.adapters.nemo.steps.<step> RUN_DIR`): the only
modules that import torch or the toolkit."""
