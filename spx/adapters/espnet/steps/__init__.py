"""Child-process entry points of the espnet backend (`python -m spx.adapters.espnet.steps.<step> RUN_DIR`): the only
modules that import torch or the toolkit."""
