"""Deployment: `spx export` (a finished run -> a self-contained ONNX/TorchScript artefact, parity-checked) and
`spx serve` (an HTTP server over an export or a run dir). Core side: no torch or toolkit import at import time."""
