"""`spx bench --variants torch,onnx,onnx-int8`: each finished cell exported (`spx export`, parity-checked) and its
test set decoded again with the exported model on the deploy engine (spx.deploy.engine, the one `spx serve` runs),
so WER (or accuracy), RTFx and model size of the toolkit model and its exports sit side by side in one table.

The torch row is the cell itself (its metrics.json and speed.json). An exported variant is decoded in batches of
the recipe's decoding.batch_size in the test manifest's order, eval.warmup_batches batches first, the whole set
eval.speed_repeats times (median), the clock covering features + graph + greedy decoding, on
resources.threads intra-op threads: the cell's own protocol (child.time_batches), on the exported model.
Scored by the task's scorer on the cell's hyps rows with the hypothesis replaced, so normalisation is the same.
Results: RUN_DIR/variants.json; the report reads it (spx.bench.report: "Deployment variants")."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spx.errors import SpxError

VARIANTS = ("torch", "onnx", "onnx-int8", "onnx-int8-static", "torchscript", "torchscript-int8")
TASKS = ("asr", "classification", "tts")  # the tasks spx export handles
VARIANTS_JSON = "variants.json"


def parse_variants(value: str | None) -> list[str]:
    names = [v.strip() for v in (value or "torch").split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise SpxError(f"--variants {value!r}: unknown variant {', '.join(bad) or '(none given)'}",
                       hint=f"a comma-separated subset of {','.join(VARIANTS)}")
    return list(dict.fromkeys(names))


def check_tasks(specs: list[Any], variants: list[str], backends: list[str]) -> None:
    """Refuse, before anything trains, a recipe whose family no chosen backend can export (a backend without an
    exporter for it while another has one gets a failed variant row, saying why)."""
    if variants == ["torch"]:
        return
    from spx.adapters import get_adapter

    for spec in specs:
        if spec.task not in TASKS:
            raise SpxError(f"--variants {','.join(variants)}: spx export has no {spec.task} exporter yet "
                           f"(recipe {spec.name})", where="--variants", hint="bench it with --variants torch")
        exporting = []
        for name in backends:
            try:
                family = get_adapter(name).family(spec)
            except SpxError:  # the backend does not run this family: the bench says so on its own
                continue
            if getattr(family, "EXPORT", None):
                exporting.append(name)
        if not exporting:
            raise SpxError(f"--variants {','.join(variants)}: spx export has no exporter for {spec.task} family "
                           f"{spec.model.family} on {', '.join(backends)} (recipe {spec.name})", where="--variants",
                           hint="bench it with --variants torch, or on a backend that exports it (docs/deploy.md)")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def decode_variant(cell: Path, variant: str, export_dir: Path | None) -> dict[str, Any]:
    """The cell's test set decoded by `variant` in a child process (spx.deploy.decode_variant): the toolkit model
    through the family's INFERENCE loader for torch, the export's engine otherwise; one protocol for all, one
    variant at a time, so their RTFx compare within one bench call."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "decoded.json"
        argv = [sys.executable, "-m", "spx.deploy.decode_variant", str(cell), variant, str(out)]
        if export_dir is not None:
            argv.append(str(export_dir))
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise SpxError(f"decoding {cell.name} with {variant} failed (exit {proc.returncode}): "
                           + " / ".join(proc.stdout.strip().splitlines()[-3:]), where=str(cell))
        return json.loads(out.read_text())


def _score(cell: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    from spx.registry import TASKS as TASK_REGISTRY
    from spx.rundir import RunDir

    spec = RunDir(cell).spec
    m = TASK_REGISTRY[spec.task].score()(rows, spec)
    if spec.task == "tts":  # the judge's CER of the spoken sentences, and a MOS proxy of how they sound
        return {k: m.get(k) for k in ("cer", "wer", "dnsmos_ovrl", "utmos") if m.get(k) is not None}
    return {"wer": m["wer"]} if spec.task == "asr" else {"accuracy": m["accuracy"]}


def metric_key(task: str) -> str:
    return {"asr": "wer", "classification": "accuracy", "tts": "cer"}[task]


def run_variants(cell: Path, variants: list[str], console=None) -> dict[str, Any]:
    """Export and decode `cell` for every variant but torch; write and return RUN_DIR/variants.json."""
    from spx.deploy.export import export
    from spx.rundir import RunDir
    from spx.yamlio import atomic_write_text

    rd = RunDir(cell)
    metrics = json.loads((cell / "metrics.json").read_text())
    summary = json.loads((cell / "train_summary.json").read_text())
    model = Path(summary.get("exported_model") or summary.get("best_checkpoint") or summary["last_checkpoint"])
    key = metric_key(rd.spec.task)
    out: dict[str, Any] = {}
    for variant in ["torch"] + [v for v in variants if v != "torch"]:  # torch: the baseline of the others
        fmt, _, quant = variant.partition("-")
        try:
            if variant == "torch":
                dec = decode_variant(cell, "torch", None)
                out[variant] = {**_score(cell, dec["rows"]), "rtfx": dec["rtfx"], "cell_rtfx": metrics.get("rtfx"),
                                "model_bytes": _size(model) if model.exists() else None, "model_file": str(model),
                                "decode_seconds": dec["decode_seconds"], "audio_seconds": dec["audio_seconds"],
                                "batch_size": dec["batch_size"], "threads": dec["threads"],
                                "engine": "toolkit (the family's INFERENCE loader)"}
                continue
            info = export(cell, fmt, quant or None, out=cell / "export" / variant, force=True)
            dec = decode_variant(cell, variant, Path(info["path"]))
            sizes = info["sizes"]
            out[variant] = {**_score(cell, dec["rows"]), "rtfx": dec["rtfx"],
                            "model_bytes": sizes.get("int8_model_bytes", sizes["fp32_model_bytes"]),
                            "artefact_bytes": sizes["artefact_bytes"], "export_dir": info["path"],
                            "parity": info["parity"]["summary"], "decode_seconds": dec["decode_seconds"],
                            "audio_seconds": dec["audio_seconds"], "batch_size": dec["batch_size"],
                            "threads": dec["threads"],
                            "engine": f"spx.deploy.engine ({'onnxruntime' if fmt == 'onnx' else 'TorchScript'})"}
        except SpxError as exc:  # a failed export (parity) is a result of the bench: recorded, the others go on
            out[variant] = {"error": exc.one_line()}
        if console is not None:
            v = out[variant]
            console.log(f"{cell.name} {variant}: " + (v["error"] if "error" in v else
                        f"{key} {v.get(key, float('nan')):.4f}, RTFx {v['rtfx']:.1f}, "
                        f"model {(v['model_bytes'] or 0) / 1e6:.2f} MB"))
    atomic_write_text(cell / VARIANTS_JSON, json.dumps({"metric": key, "variants": out}, indent=1, default=float) + "\n")
    return out
