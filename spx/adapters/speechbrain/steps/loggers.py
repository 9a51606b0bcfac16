"""SpeechBrain's own training loggers as spec.logging asks (TensorboardLogger into run_dir/tensorboard, WandBLogger),
fed the same per-epoch row as curve.jsonl: `record_epoch` replaces a bare child.append_curve in every train step."""
from __future__ import annotations

from typing import Any

from spx.adapters.common import child
from spx.rundir import RunDir

_LOGGERS: dict[str, list[Any]] = {}  # run dir -> its loggers, made on the first epoch of this process


def native_loggers(run_dir: RunDir) -> list[Any]:
    key = str(run_dir.path)
    if key not in _LOGGERS:
        from speechbrain.utils import train_logger

        spec, loggers = run_dir.spec, []
        if spec.logging.tensorboard:
            loggers.append(train_logger.TensorboardLogger(save_dir=str(run_dir / "tensorboard")))
        if spec.logging.wandb:
            import wandb

            loggers.append(train_logger.WandBLogger(initializer=wandb.init, project=spec.logging.project or spec.name,
                                                    name=run_dir.path.name, dir=str(run_dir / "logs"), resume="allow"))
        _LOGGERS[key] = loggers
    return _LOGGERS[key]


def record_epoch(run_dir: RunDir, row: dict[str, Any]) -> None:
    """curve.jsonl row (rank 0) and the same numbers to SpeechBrain's loggers: meta = epoch/step/lr, train/valid
    stats = the row's train_* / valid_* values. Called by every rank."""
    child.append_curve(run_dir, row)  # rank 0 only
    # every rank calls the loggers: SpeechBrain writes on the main process and broadcasts to the others (a collective)
    meta = {k: row[k] for k in ("epoch", "step", "lr") if row.get(k) is not None}
    train, valid = _scalars(row, "train_"), _scalars(row, "valid_")
    for logger in native_loggers(run_dir):
        logger.log_stats(stats_meta=meta, train_stats=train or None, valid_stats=valid or None)
        if getattr(logger, "writer", None) is not None:  # TensorBoard's writer: on disk now, not within 2 min
            logger.writer.flush()


def _scalars(row: dict[str, Any], prefix: str) -> dict[str, float]:
    """The row's numbers under `prefix`, a dict of parts flattened (train_parts: {mel_loss: ..} -> parts.mel_loss):
    TensorBoard takes scalars only."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for part, v in items:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[name if part is None else f"{name}.{part}"] = float(v)
    return out
