"""spx: one recipe, three speech toolkits."""
__version__ = "0.1.0"
