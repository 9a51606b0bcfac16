"""The embedded demo corpus (spx/demo/corpus) and the generator that made it."""
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
