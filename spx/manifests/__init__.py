"""The unified spx manifest: JSON lines, one utterance a line. See spx/manifests/schema.py."""
from spx.manifests.schema import SCHEMA_VERSION, Utterance
from spx.manifests.io import iter_manifest, read_manifest, write_manifest, ManifestWriter

__all__ = ["SCHEMA_VERSION", "Utterance", "iter_manifest", "read_manifest", "write_manifest", "ManifestWriter"]
