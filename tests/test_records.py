"""The typed run records (spx/records.py): a child that writes a wrong record fails when it writes it, and a reader
gets one error naming the file and row."""
from __future__ import annotations

import json

import pytest

from spx import records
from spx.errors import SpxError


def test_a_train_summary_with_a_wrong_type_is_refused_before_it_is_written(tmp_path):
    from spx.adapters.common.child import write_train_summary
    from spx.rundir import RunDir

    rd = RunDir(tmp_path)
    with pytest.raises(SpxError, match=r"train_summary.json: not a valid TrainSummary record .*\$\.epochs"):
        write_train_summary(rd, wall_seconds=1.0, epochs="3", steps=10, params=100)
    assert not (tmp_path / "train_summary.json").exists()
    write_train_summary(rd, wall_seconds=1.0, epochs=3, steps=10, params=100, pitch_mean=200.0)  # open: own fields
    assert records.read(tmp_path / "train_summary.json", records.TrainSummary)["pitch_mean"] == 200.0


def test_hyps_rows_are_checked_per_task_and_errors_name_the_row(tmp_path):
    good = {"id": "u1", "ref": "a", "hyp": "a", "duration": 1.0, "decode_time": 0.1, "test_set": "test"}
    (tmp_path / "hyps.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "hyp": None}) + "\n")
    with pytest.raises(SpxError, match=r"hyps.jsonl: row 2: not a valid AsrHyp record"):
        records.read_run(tmp_path, "asr")
    cls = {"id": "u1", "ref_label": "yes", "label": "no", "scores": {"no": 0.6, "yes": 0.4}, "duration": 1.0,
           "decode_time": 0.01, "test_set": "test"}
    (tmp_path / "hyps.jsonl").write_text(json.dumps(cls) + "\n")
    assert records.read_run(tmp_path, "classification")["hyps"] == [cls]
    with pytest.raises(SpxError, match="AsrHyp"):
        records.read_run(tmp_path, "asr")


def test_status_states_are_the_known_ones(tmp_path):
    from spx.rundir import RunDir

    rd = RunDir(tmp_path)
    assert rd.set_status("running", step="train")["state"] == "running"
    with pytest.raises(SpxError, match="Status"):
        rd.set_status("exploded")
