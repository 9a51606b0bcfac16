"""task: classification, the same on every backend: the class list (classification.classes, or the sorted labels of
the training manifest) and the label checks a run makes before anything is written. A leaf the family modules import
(no torch, no toolkit)."""
from __future__ import annotations

from pathlib import Path

from spx.errors import SpxError
from spx.manifests.io import without_bom, parse_manifest_lines
from spx.spec import Spec


def manifest_labels(path: str, key: str) -> list[tuple[int, str, str]]:
    """(line, utterance id, label) of every row; a row without a label is one SpxError naming file:line."""
    p = Path(path)
    out: list[tuple[int, str, str]] = []
    with open(p, "rb") as fh:
        for lineno, raw in enumerate(without_bom(fh), start=1):
            for u in parse_manifest_lines([raw], p, resolve_audio=False, first_lineno=lineno):
                if u.label is None or not str(u.label).strip():
                    raise SpxError(f"{key}: row {u.id!r} has no label (task: classification reads each row's class "
                                   "from its `label` field)", where=f"{p}:{lineno}",
                                   hint="add \"label\": \"<class>\" to every row (spx manifest stats shows the labels)")
                out.append((lineno, u.id, str(u.label)))
    return out


def class_list(spec: Spec, train_rows: list[tuple[int, str, str]] | None = None) -> list[str]:
    """The model's classes in output order: classification.classes, or the sorted training labels."""
    if spec.classification.classes is not None:
        return list(spec.classification.classes)
    rows = train_rows if train_rows is not None else manifest_labels(spec.data.train, "data.train")
    return sorted({label for _, _, label in rows})


def check_labels(spec: Spec) -> list[str]:
    """Every row of every manifest has a label; every label is a class; every class has a training example; a
    label is one word (ESPnet's label files and NeMo's label lists split on spaces). Returns the class list."""
    train = manifest_labels(spec.data.train, "data.train")
    classes = class_list(spec, train)
    if len(classes) < 2:
        raise SpxError(f"data.train has one class only ({classes[0]!r}): a classifier needs two or more",
                       where=spec.data.train, hint="check the manifest's `label` fields")
    known = set(classes)
    keys = [("data.train", spec.data.train, train), ("data.valid", spec.data.valid, None)]
    keys += [(f"data.test[{i}]" if isinstance(spec.data.test, list) else "data.test", t, None)
             for i, t in enumerate(spec.test_sets)]
    for key, path, rows in keys:
        for lineno, uid, label in rows if rows is not None else manifest_labels(path, key):
            if " " in label.strip() or label != label.strip():
                raise SpxError(f"{key}: row {uid!r} has label {label!r}: class labels are single words",
                               where=f"{path}:{lineno}", hint="replace spaces in labels by '_'")
            if label not in known:
                source = "classification.classes" if spec.classification.classes is not None else "the training labels"
                raise SpxError(f"{key}: row {uid!r} has label {label!r}, which is not one of the {len(classes)} classes "
                               f"({source}: {', '.join(classes[:12])}{', ...' if len(classes) > 12 else ''})",
                               where=f"{path}:{lineno}",
                               hint="a model can only predict the classes it was trained on: fix the label, or add "
                                    "training examples of that class")
    seen = {label for _, _, label in train}
    empty = [c for c in classes if c not in seen]
    if empty:
        raise SpxError(f"classification.classes lists {empty} but data.train has no example of "
                       f"{'it' if len(empty) == 1 else 'them'}", where="classification.classes",
                       hint="add training examples of every class, or drop the class from classification.classes")
    return classes
