"""Which child module exports a run, and which loads it for inference (`spx serve` on a run dir).

# MERGE: replace by ADAPTER.export_module(spec) / inference_module(spec)
The adapters in this branch predate the contract's EXPORT/INFERENCE attributes; this table is the one place that
stands in for them (the lead replaces both functions' bodies by
`get_adapter(backend).export_module(spec)` / `get_adapter(backend).inference_module(spec)` at merge).
"""
from __future__ import annotations

from spx.errors import SpxError

# (backend, task, family) -> module
_EXPORT = {
    ("nemo", "asr", "conformer_ctc"): "spx.adapters.nemo.steps.export",
    ("espnet", "asr", "conformer_ctc"): "spx.adapters.espnet.steps.export",
    ("speechbrain", "asr", "conformer_ctc"): "spx.adapters.speechbrain.steps.export",
}
_INFERENCE = {
    ("nemo", "asr", "conformer_ctc"): "spx.adapters.nemo.decode",
    ("espnet", "asr", "conformer_ctc"): "spx.adapters.espnet.decode",
    ("speechbrain", "asr", "conformer_ctc"): "spx.adapters.speechbrain.decode",
}


def export_module(backend: str, spec) -> str:
    # MERGE: replace by ADAPTER.export_module(spec) / inference_module(spec)
    module = _EXPORT.get((backend, spec.task, spec.model.family))
    if module is None:
        raise SpxError(f"spx cannot export {backend} {spec.task}/{spec.model.family} models yet",
                       hint="export a run of a family that has an exporter (docs/deploy.md lists them)")
    return module


def inference_module(backend: str, spec) -> str:
    # MERGE: replace by ADAPTER.export_module(spec) / inference_module(spec)
    module = _INFERENCE.get((backend, spec.task, spec.model.family))
    if module is None:
        raise SpxError(f"spx serve has no model loader for {backend} {spec.task}/{spec.model.family} runs yet",
                       hint="serve an ASR run, or an export of one (docs/deploy.md)")
    return module
