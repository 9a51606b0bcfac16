"""Classification scoring and its bench report, from synthetic report inputs (fast): accuracy, macro-F1, per-class
precision/recall and confusion counts checked against scikit-learn, paired bootstrap CIs on accuracy differences,
the classification section in every report format (confusion matrices rendered in headless Chromium), and a bench
mixing ASR and classification recipes whose ASR tables stay what an ASR-only bench prints."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from bench_synthetic import CLS_LABELS, CLS_REFS, REFS, write_cell, write_cls_cell
from conftest import run_spx
from spx.bench import classification, scoring
from spx.registry import TASKS
from test_bench import check_report_files, screenshot
from test_bench_tts_report import md_section, md_table

# nemo misses two clips; speechbrain misses those two and ten more, one with a label outside the test set
# ("maybe") and one with no prediction at all
NEMO = list(CLS_REFS)
NEMO[3], NEMO[7] = "go", "yes"
SPEECHBRAIN = list(NEMO)
for i, wrong in zip((0, 1, 2, 5, 6, 10, 11, 15, 20, 25), ("go", "no", "up", "yes", "up", "no", "down", "go", "maybe", "")):
    SPEECHBRAIN[i] = wrong


def rows_of(refs: list[str], preds: list[str]) -> list[dict]:
    return [{"id": f"c{i}", "ref_label": r, "label": p, "scores": {p: 0.9}, "duration": 1.0, "decode_time": 0.01, "test_set": "t"}
            for i, (r, p) in enumerate(zip(refs, preds))]


# ---------------------------------------------------------------- the scorer
def test_scores_match_scikit_learn():
    metrics_ = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d"]
    refs = [labels[i] for i in rng.integers(0, 4, 300)]
    preds = [labels[i] if rng.random() < 0.9 else "zzz" for i in rng.integers(0, 4, 300)]  # some unknown labels
    preds = [r if rng.random() < 0.5 else p for r, p in zip(refs, preds)]
    m = classification.score_classification(rows_of(refs, preds), None)
    assert m["accuracy"] == pytest.approx(metrics_.accuracy_score(refs, preds))
    p, r, f, s = metrics_.precision_recall_fscore_support(refs, preds, labels=labels, zero_division=0)
    for i, lab in enumerate(labels):
        assert m["per_class"][lab] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert m["macro_f1"] == pytest.approx(metrics_.f1_score(refs, preds, labels=labels, average="macro", zero_division=0))
    other = [x if x in labels else classification.OTHER for x in preds]
    expected = metrics_.confusion_matrix(refs, other, labels=labels + [classification.OTHER])[:len(labels)]
    assert m["confusion"]["labels"] == labels + [classification.OTHER]
    assert m["confusion"]["matrix"] == expected.tolist()
    assert m["unknown_predictions"] == other.count(classification.OTHER) > 0
    assert m["errors"] == sum(a != b for a, b in zip(refs, preds)) and m["utterances"] == m["scored_utterances"] == 300


def test_scorer_is_registered_and_leaves_out_rows_without_a_reference_label():
    assert TASKS["classification"].score() is classification.score_classification
    rows = rows_of(["yes", "no", "yes"], ["yes", "yes", "no"])
    rows[2]["ref_label"] = None  # ClsHyp allows it (an unlabelled test row): nothing to score it against
    m = TASKS["classification"].score()(rows, None)
    assert (m["accuracy"], m["confusion"]) == (0.5, {"labels": ["no", "yes"], "matrix": [[0, 1], [0, 1]]})
    assert (m["utterances"], m["scored_utterances"]) == (3, 2)
    assert m["per_class"]["no"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert classification.score_classification(rows[2:], None)["accuracy"] is None


def test_a_classification_run_is_scored_into_a_valid_metrics_record():
    from types import SimpleNamespace

    from spx import records

    spec = SimpleNamespace(task="classification", eval=SimpleNamespace(normalizer="none"))
    speed = {"device": "cpu", "dtype": "float32", "batch_size": 8, "threads": 1, "warmup_batches": 1, "repeats": 2,
             "audio_seconds": 40.0, "decode_seconds": [0.5, 0.4], "clock": "forward"}
    rows = rows_of(CLS_REFS, NEMO)
    for h in rows:
        records.check(h, records.ClsHyp, "hyps.jsonl")  # what the model families write
    metrics = scoring.score_run({"backend": "nemo", "hyps": rows, "speed": speed}, spec)
    records.check(metrics, records.Metrics, "metrics.json")  # what finalize_run writes
    assert (metrics["task"], metrics["accuracy"], metrics["rtfx"]) == ("classification", 0.95, pytest.approx(40 / 0.45))
    assert metrics["confusion"]["labels"] == CLS_LABELS and json.loads(json.dumps(metrics)) == metrics


def test_paired_accuracy_bootstrap():
    a = classification.correct_vector(rows_of(CLS_REFS, NEMO))
    b = classification.correct_vector(rows_of(CLS_REFS, SPEECHBRAIN))
    assert (a.mean(), b.mean()) == (38 / 40, 28 / 40)
    draws = classification.bootstrap_accuracy(np.stack([a, b]), 2000, seed=3)
    # the same resamples as the WER bootstrap: errors = 1 - correct, one "word" per row
    rates = scoring.bootstrap_rates(np.stack([1 - a, 1 - b]).astype(int), np.ones(40, dtype=int), 2000, seed=3)
    np.testing.assert_allclose(draws, 1 - rates)
    comp = scoring.paired_difference(a.mean(), b.mean(), draws[0], draws[1])
    assert comp["diff"] == pytest.approx(0.25) and 0 < comp["ci"][0] < 0.25 < comp["ci"][1] and comp["p_value"] < 0.01
    same = scoring.paired_difference(a.mean(), a.mean(), draws[0], draws[0])
    assert same["diff"] == 0 and same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0


# ---------------------------------------------------------------- the report
def write_mixed_bench(out: Path, with_asr: bool = True, with_cls: bool = True) -> Path:
    if with_asr:
        write_cell(out, "demo", "nemo", REFS)
        write_cell(out, "demo", "speechbrain", ["the cat sat on a mat", "hello word", "mister smith paid twenty dollars",
                                                 "a quick brown fox", "speech is fun", "one two three for five"])
    if with_cls:
        write_cls_cell(out, "kws", "nemo", NEMO, wall_seconds=90.0)
        write_cls_cell(out, "kws", "speechbrain", SPEECHBRAIN, decode_seconds=(0.2, 0.25, 0.22))
        write_cls_cell(out, "kws", "espnet", [], state="failed")
    return out


def test_classification_report_in_every_format(tmp_path):
    out = write_mixed_bench(tmp_path / "b", with_asr=False)
    proc = run_spx("bench", "--report-only", "--out", out)
    assert proc.returncode == 0, proc.stderr
    res = check_report_files(out)
    by = {(r["recipe"], r["backend"]): r for r in res["rows"]}
    nemo, sb = by[("kws", "nemo")], by[("kws", "speechbrain")]
    assert (nemo["accuracy"], sb["accuracy"]) == (0.95, 0.7) and sb["unknown_predictions"] == 2
    assert nemo["accuracy_ci"][0] <= 0.95 <= nemo["accuracy_ci"][1] and sb["accuracy_ci"][1] < 0.9
    assert sb["confusion"]["labels"] == CLS_LABELS + [classification.OTHER]
    assert nemo["speed"]["rtfx"] == pytest.approx(40 / 0.45) and nemo["train_wall_s"] == 90.0
    assert by[("kws", "espnet")]["state"] == "failed" and "loss is nan" in by[("kws", "espnet")]["error"]
    [comp] = res["classification_comparisons"]
    assert (comp["a"], comp["b"], comp["better"], comp["utterances"]) == ("nemo", "speechbrain", "nemo", 40)
    assert comp["diff"] == pytest.approx(0.25) and comp["ci"][0] > 0

    md = (out / "report.md").read_text()
    assert "## Accuracy" not in md and "## Pairwise WER" not in md  # no empty ASR tables
    table = md_table(md_section(md, "Classification"))
    assert table[0][:5] == ["Recipe", "Backend", "Accuracy %", "95% CI", "Macro-F1 %"]
    assert [row[:3] for row in table[1:3]] == [["kws", "nemo", "95.0"], ["kws", "speechbrain", "70.0"]]
    assert "### Pairwise accuracy differences" in md and "| kws | nemo | speechbrain | 95.0 | 70.0 | +25.0 |" in md
    per_class = md[md.index("### Per-class precision / recall / F1 (kws)"):]
    assert "| up | 8 | 100.0 | 87.5 | 93.3 | 77.8 | 87.5 | 82.4 |" in per_class  # speechbrain: 7 of its 9 "up" right
    tex = (out / "report.tex").read_text()
    assert "tab:spx-bench-cls" in tex and "tab:spx-bench-cls-pairs" in tex and "tab:spx-bench}" not in tex
    with (out / "results.csv").open() as fh:
        csv_rows = {(r["recipe"], r["backend"]): r for r in csv.DictReader(fh)}
    assert float(csv_rows[("kws", "speechbrain")]["accuracy"]) == 0.7 and csv_rows[("kws", "nemo")]["accuracy_ci_low"]
    with (out / "comparisons.csv").open() as fh:
        [pair] = list(csv.DictReader(fh))
    assert (pair["metric"], pair["better"], float(pair["value_a"])) == ("accuracy", "nemo", 0.95)
    assert "classification results" in proc.stderr and "95.0" in proc.stderr  # the terminal table

    html = (out / "report.html").read_text()
    for anchor in ('id="classification-table"', 'id="classification-comparison-table"', 'id="per-class-table-kws"'):
        assert anchor in html, anchor
    dom = screenshot(out / "report.html", out / "report-cls.png")
    for backend in ("nemo", "speechbrain"):  # one confusion matrix per finished backend, drawn
        figure = re.search(rf'<div class="figure fig-confusion" id="fig-confusion-kws-{backend}">\s*<svg(.*?)</svg>', dom, re.S)
        assert figure and "predicted label" in figure.group(1) and "reference label" in figure.group(1), backend
    assert "fig-confusion-kws-espnet" not in dom and 'id="accuracy-table"' not in dom
    assert re.search(r'<div class="figure" id="fig-accuracy-speed">\s*<svg', dom)
    import matplotlib.image

    img = matplotlib.image.imread(out / "report-cls.png")
    assert img.shape[0] > 1000 and img.std() > 0.05, "screenshot is blank"

    # re-rendered from results.json alone: the same report
    proc = run_spx("bench", "--from", out / "results.json", "--out", tmp_path / "again")
    assert proc.returncode == 0, proc.stderr
    for name in ("report.md", "report.tex", "results.csv", "comparisons.csv"):
        assert (tmp_path / "again" / name).read_text() == (out / name).read_text(), name


def test_mixed_asr_and_classification_bench(tmp_path):
    asr_only = write_mixed_bench(tmp_path / "asr", with_cls=False)
    mixed = write_mixed_bench(tmp_path / "mixed")
    for out in (asr_only, mixed):
        proc = run_spx("bench", "--report-only", "--out", out)
        assert proc.returncode == 0, proc.stderr
    md_asr, md_mixed = ((out / "report.md").read_text() for out in (asr_only, mixed))
    for section in ("Accuracy", "Pairwise WER differences (paired bootstrap)", "Where backends disagree (demo)"):
        assert md_section(md_mixed, section) == md_section(md_asr, section), section  # ASR tables as before
    assert "## Classification" in md_mixed and "## Classification" not in md_asr
    speed = md_table(md_section(md_mixed, "Speed"))
    assert {(r[0], r[1]) for r in speed[1:]} == {("demo", "nemo"), ("demo", "speechbrain"), ("kws", "nemo"),
                                                 ("kws", "speechbrain")}
    tex_asr, tex_mixed = ((out / "report.tex").read_text() for out in (asr_only, mixed))
    assert tex_mixed.startswith(tex_asr) and "tab:spx-bench-cls" in tex_mixed
    res = json.loads((mixed / "results.json").read_text())
    assert len(res["comparisons"]) == 1 and len(res["classification_comparisons"]) == 1
    html = (mixed / "report.html").read_text()
    assert 'id="accuracy-table"' in html and 'id="classification-table"' in html and html.count('class="figure fig-confusion"') == 2
