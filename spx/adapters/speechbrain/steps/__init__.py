"""Child-process entry points of the speechbrain backend (`python -m spx.adapters.speechbrain.steps.<step> RUN_DIR`): the only
modules that import torch or the toolkit."""
