"""What the three backends' `kws_classifier` family modules share (a leaf: no torch, no toolkit): the checks every
classification job gets before anything is written, and the init_from of an own run."""
from __future__ import annotations

from pathlib import Path

from spx.adapters.common.labels import check_labels
from spx.errors import SpxError
from spx.spec import Spec
from spx.yamlio import read_json


def check_classification(spec: Spec, backend: str) -> None:
    """Labels (when the manifests exist already: a spx-demo:// corpus is made after this check, and is valid by
    construction; render checks again), one process (spx renders no data-parallel classifier yet), the freeze
    items the family has."""
    paths = [spec.data.train, spec.data.valid, *spec.test_sets]
    if all(Path(p).is_file() for p in paths):
        check_labels(spec)
    if spec.resources.devices * spec.resources.nodes > 1:
        raise SpxError(f"task: classification on {backend} runs in one process in spx so far", where="resources.devices",
                       hint="set resources.devices: 1 and nodes: 1")
    for item in spec.freeze:
        if item not in ("encoder", "feature_extractor"):
            raise SpxError(f"freeze item {item!r}: the kws_classifier family freezes 'encoder' (everything before the "
                           "class layer) or 'feature_extractor' (its first block)", where="freeze",
                           hint="freeze: [encoder] or [feature_extractor]")


def own_run_model(init_from: str, backend: str, suffix: str | None = None) -> str:
    """init_from -> the exported model of an spx run dir of this backend (or the model file/folder itself)."""
    p = Path(init_from).expanduser()
    if p.is_dir() and (p / "spec.yaml").is_file():
        summary = read_json(p / "train_summary.json") or {}
        exported = summary.get("exported_model")
        if not exported or not Path(exported).exists():
            raise SpxError(f"init_from {init_from!r}: the run has no exported model (train_summary.json "
                           "exported_model)", where="init_from", hint="finish that run first (spx run --resume)")
        return str(Path(exported).resolve())
    if not p.exists():
        raise SpxError(f"init_from {init_from!r} does not exist", where="init_from",
                       hint=f"give an spx {backend} kws_classifier run dir (or its exported model)")
    if suffix and p.is_file() and p.suffix != suffix:
        raise SpxError(f"init_from {init_from!r} is not a {suffix} file", where="init_from",
                       hint=f"give an spx {backend} kws_classifier run dir or its exported {suffix} model")
    return str(p.resolve())
