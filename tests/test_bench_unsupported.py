"""`spx bench` with a backend that does not have the recipe's family: the cell is `unsupported` with the adapter's
reason (results.json, results.csv, every report format, each task's section), never run and never counted as a
failure; a recipe that no backend of the bench runs is one clear error. Fast: the refusals are the real adapters'
(nemo has no ssl_ctc nor Tacotron2, hf no kws_classifier); the finished cells beside them are synthetic report
inputs (tests/bench_synthetic.py)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from bench_synthetic import CLS_LABELS, CLS_REFS, REFS, write_cell, write_cls_cell, write_tts_cell
from conftest import REPO, run_spx

SSL_CTC = REPO / "recipes" / "tiny" / "ssl_ctc_tiny.yaml"
WHISPER = REPO / "recipes" / "tiny" / "whisper_tiny.yaml"
TACOTRON2 = REPO / "recipes" / "tacotron2.yaml"
KWS = REPO / "recipes" / "kws.yaml"


def _fake_wav2vec2(folder: Path) -> Path:
    """A config.json alone: all that render and supports() read of a pretrained folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "wav2vec2", "num_hidden_layers": 2}))
    return folder


def _finished_hf_cell(out: Path, pretrained: Path) -> Path:
    """The hf ssl_ctc cell as a finished earlier bench left it (rendered for real; its outcome synthetic), so the
    bench skips it and only the unsupported cell is new."""
    from spx.runner import render_run
    from spx.spec import load_spec

    cell = out / "runs" / "ssl_ctc_tiny-hf"
    render_run(load_spec(SSL_CTC, [f"model.encoder.pretrained={pretrained}"]), "hf", cell)
    spec_yaml, steps = (cell / "spec.yaml").read_text(), (cell / "steps.json").read_text()
    write_cell(out, "ssl_ctc_tiny", "hf", REFS)  # finished: hyps, speed, curve, summary, metrics
    (cell / "spec.yaml").write_text(spec_yaml)
    (cell / "steps.json").write_text(steps)
    return cell


def _same_cells_as_header(md: str) -> None:
    """Each unsupported row of report.md has as many cells as its table's header."""
    lines = md.splitlines()
    rows = [i for i, line in enumerate(lines) if "| unsupported |" in line]
    assert rows
    for i in rows:
        header = next(h for h in lines[:i][::-1] if h.startswith("| Recipe"))
        assert lines[i].count("|") == header.count("|"), (lines[i], header)


def test_bench_marks_a_refused_backend_unsupported_not_failed(tmp_path):
    pre = _fake_wav2vec2(tmp_path / "w2v")
    out = tmp_path / "bench"
    _finished_hf_cell(out, pre)
    proc = run_spx("bench", SSL_CTC, "--backends", "hf,nemo", "--out", out, "-o", f"model.encoder.pretrained={pre}")
    assert proc.returncode == 0, proc.stderr  # an unsupported cell is no failure
    assert "ssl_ctc_tiny-hf: finished earlier, skipped" in proc.stderr
    assert "ssl_ctc_tiny-nemo unsupported" in proc.stderr and "failed" not in proc.stderr
    status = json.loads((out / "runs" / "ssl_ctc_tiny-nemo" / "status.json").read_text())
    assert status["state"] == "unsupported" and "no 'ssl_ctc' model for task 'asr'" in status["reason"]
    assert not (out / "runs" / "ssl_ctc_tiny-nemo" / "steps.json").exists()  # nothing was rendered or run
    res = json.loads((out / "results.json").read_text())
    by = {r["backend"]: r for r in res["rows"]}
    nemo = by["nemo"]
    assert nemo["state"] == "unsupported" and "error" not in nemo and nemo["task"] == "asr"
    assert "NeMo loads no Hugging Face or fairseq models" in nemo["unsupported"]  # the adapter's own reason
    assert by["hf"]["wer"] == 0.0 and res["comparisons"] == []  # nothing to pair the hf cell with
    md = (out / "report.md").read_text()
    assert "| ssl_ctc_tiny | nemo | unsupported |" in md and "## Failures" not in md
    _same_cells_as_header(md)
    assert "ssl_ctc_tiny-nemo: unsupported, not run (not a failure): model.family: spx's 'nemo' backend" in md
    speed = md.split("## Speed")[1].split("## Training cost")[0]
    assert "| nemo |" not in speed and "| hf |" in speed  # the speed and cost tables hold the cells that ran
    html = (out / "report.html").read_text()
    assert 'class="unsupported"' in html and "unsupported, not run (not a failure)" in html
    assert 'id="failures"' not in html
    tex = (out / "report.tex").read_text()
    assert r"ssl\_ctc\_tiny & nemo & \multicolumn{5}{l}{unsupported} \\" in tex
    assert "Unsupported, not run: nemo on ssl\\_ctc\\_tiny: model.family: spx's 'nemo' backend" in tex
    rows = {r["backend"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["nemo"]["state"] == "unsupported" and "no 'ssl_ctc' model" in rows["nemo"]["unsupported"]
    assert rows["nemo"]["error"] == "" and rows["hf"]["unsupported"] == ""
    # the report alone (--report-only) shows the same cell the same way
    again = run_spx("bench", "--report-only", "--out", out)
    assert again.returncode == 0 and json.loads((out / "results.json").read_text())["rows"] == res["rows"]


def test_dry_run_names_the_unsupported_cell_and_renders_only_the_others(tmp_path):
    pre = _fake_wav2vec2(tmp_path / "w2v")
    out = tmp_path / "bench"
    proc = run_spx("bench", SSL_CTC, "--backends", "hf,nemo", "--out", out, "--dry-run", "-o",
                   f"model.encoder.pretrained={pre}")
    assert proc.returncode == 0, proc.stderr
    assert "ssl_ctc_tiny-nemo: unsupported, would not run: model.family:" in " ".join(proc.stderr.split())
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["ssl_ctc_tiny-hf"]


def test_a_recipe_no_backend_runs_is_one_clear_error(tmp_path):
    out = tmp_path / "bench"  # nemo has no whisper; espnet's refuses (espnet#5792)
    proc = run_spx("bench", WHISPER, "--backends", "nemo,espnet", "--out", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "no backend of the bench runs it: nemo: model.family:" in proc.stderr and "espnet:" in proc.stderr
    assert "espnet#5792" in proc.stderr
    assert not (out / "runs").exists()  # refused before anything was written


def test_unsupported_tts_and_classification_cells_in_their_sections(tmp_path):
    """The TTS and classification sections of every format list their unsupported cells, with the real adapters'
    reasons: nemo has no Tacotron2, hf no kws_classifier."""
    from spx.bench.runner import record_unsupported, refusal, write_bench_report
    from spx.spec import load_spec

    out = tmp_path / "bench"
    write_tts_cell(out, "tacotron2", "espnet")
    write_cls_cell(out, "kws", "nemo", list(CLS_REFS))
    write_cls_cell(out, "kws", "speechbrain", [CLS_LABELS[0]] * len(CLS_REFS))
    for recipe, backend in ((TACOTRON2, "nemo"), (KWS, "hf")):
        spec = load_spec(recipe)
        why = refusal(spec, backend)
        assert why and f"spx's {backend!r} backend has no" in why
        record_unsupported(out / "runs" / f"{recipe.stem}-{backend}", backend, recipe, spec, why)
    res = write_bench_report(out, 0, ["spx bench"])
    by = {(r["recipe"], r["backend"]): r for r in res["rows"]}
    assert by[("tacotron2", "nemo")]["state"] == "unsupported" and by[("tacotron2", "nemo")]["task"] == "tts"
    assert by[("kws", "hf")]["state"] == "unsupported" and by[("kws", "hf")]["task"] == "classification"
    assert len(res["classification_comparisons"]) == 1  # nemo vs speechbrain: the unsupported cell is not paired
    md = (out / "report.md").read_text()
    tts_md = md.split("## TTS quality")[1].split("## Classification")[0]
    assert "| tacotron2 | nemo | unsupported |" in tts_md and "tacotron2-nemo: unsupported, not run" in tts_md
    cls_md = md.split("## Classification")[1].split("## Speed")[0]
    assert "| kws | hf | unsupported |" in cls_md and "kws-hf: unsupported, not run" in cls_md
    assert "## Accuracy" not in md and "## Failures" not in md
    _same_cells_as_header(md)
    html = (out / "report.html").read_text()
    tts_html = html.split('id="tts-table"')[1].split("</table>")[0]
    cls_html = html.split('id="classification-table"')[1].split("</table>")[0]
    assert "tacotron2</td><td class=\"l\">nemo" in tts_html and "unsupported, not run" in tts_html
    assert "kws</td><td class=\"l\">hf" in cls_html and "unsupported, not run" in cls_html
    tex = (out / "report.tex").read_text()
    assert "tacotron2 & nemo & \\multicolumn{" in tex and "kws & hf & \\multicolumn{5}{l}{unsupported}" in tex
    assert "Unsupported, not run: hf on kws:" in tex and "Unsupported, not run: nemo on tacotron2:" in tex
