"""spec.logging: each toolkit's own TensorBoard logger writes into the run dir by default (`tensorboard --logdir
runs/` shows every backend side by side), W&B / MLflow where the toolkit has them and only when asked."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import RECIPE, run_spx

BACKENDS = ("nemo", "speechbrain", "espnet")


def _steps_argv(rd: Path) -> list[str]:
    return [a for s in json.loads((rd / "steps.json").read_text()) for a in s["argv"]]


def test_native_loggers_are_rendered_as_spec_logging_says(tmp_path):
    rd = tmp_path / "nemo"
    assert run_spx("run", "--backend", "nemo", RECIPE, "--run-dir", rd, "--dry-run").returncode == 0
    exp = yaml.safe_load((rd / "native" / "config.yaml").read_text())["exp_manager"]
    assert exp["create_tensorboard_logger"] is True and exp["create_wandb_logger"] is False
    rd = tmp_path / "nemo-wandb"
    assert run_spx("run", "--backend", "nemo", RECIPE, "--run-dir", rd, "--dry-run", "logging.tensorboard=false",
                   "logging.wandb=true", "logging.mlflow=true", "logging.project=study").returncode == 0
    exp = yaml.safe_load((rd / "native" / "config.yaml").read_text())["exp_manager"]
    assert exp["create_tensorboard_logger"] is False and exp["wandb_logger_kwargs"]["project"] == "study"
    assert exp["mlflow_logger_kwargs"]["experiment_name"] == "study"

    rd = tmp_path / "espnet"
    assert run_spx("run", "--backend", "espnet", RECIPE, "--run-dir", rd, "--dry-run", "logging.wandb=true").returncode == 0
    cmds = json.loads((rd / "native" / "commands.json").read_text())["commands"]["asr_train"]
    assert cmds[cmds.index("--use_tensorboard") + 1] == "true" and cmds[cmds.index("--use_wandb") + 1] == "true"


@pytest.mark.parametrize("backend", ["espnet", "speechbrain"])
def test_a_logger_the_toolkit_lacks_is_one_clear_error(tmp_path, backend):
    proc = run_spx("run", "--backend", backend, RECIPE, "--run-dir", tmp_path / "rd", "--dry-run", "logging.mlflow=true")
    assert proc.returncode == 2
    assert f"{backend} has no mlflow logger" in proc.stderr and "logging.mlflow" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "rd" / "steps.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_trained_runs_hold_tensorboard_events_with_the_loss(trained_run, backend):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rd = trained_run(backend)
    files = sorted(rd.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event files under {rd}"
    losses = {}
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if "loss" in tag.lower():
                losses[tag] = [e.value for e in acc.Scalars(tag)]
    # at least one loss curve over the epochs, finite (ESPnet also reports its unused attention loss of a CTC-only
    # model, as NaN)
    curves = [tag for tag, values in losses.items() if len(values) >= 2 and all(map(math.isfinite, values))]
    assert curves, f"{backend}: no finite loss curve in {losses}"


def test_speechbrain_loggers_take_every_curve_row_a_train_step_writes(tmp_path):
    """record_epoch feeds SpeechBrain's TensorboardLogger the curve row: numbers only, parts dicts flattened (the
    FastSpeech2 step's train_parts), None values left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from spx.adapters.speechbrain.steps.loggers import record_epoch
    from spx.rundir import RunDir

    rd = tmp_path / "rd"
    assert run_spx("run", "--backend", "speechbrain", RECIPE, "--run-dir", rd, "--dry-run").returncode == 0
    for epoch in (1, 2):
        record_epoch(RunDir(rd), {"epoch": epoch, "step": 10 * epoch, "train_loss": 2.0 / epoch, "valid_loss": 2.5 / epoch,
                                  "valid_mel_loss": None, "lr": 1e-3, "time": 1.0,
                                  "train_parts": {"mel_loss": 0.5, "dur_loss": 0.25}})
    [events] = (rd / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert {"loss/train", "loss/valid", "parts.mel_loss/train", "epoch"} <= set(acc.Tags()["scalars"])
    assert [e.value for e in acc.Scalars("loss/train")] == [2.0, 1.0]
    assert len((rd / "curve.jsonl").read_text().splitlines()) == 2
