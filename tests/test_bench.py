"""`spx bench`: the report in every format (from synthetic report inputs, fast), and the whole bench over the
backends' trained cells (slow): finished cells skipped, report rendered in headless Chromium, failure isolation."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_synthetic import write_cell, write_demo_bench
from conftest import DEMO, RECIPE, REPO, cell_dir, run_spx

BACKENDS = ("nemo", "speechbrain", "espnet")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def check_report_files(out: Path) -> dict:
    for name in ("report.md", "report.html", "report.tex", "results.json", "results.csv"):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == "spx.bench.results/1"
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(res["rows"])  # one row per recipe x backend
    tex = (out / "report.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    html = (out / "report.html").read_text()
    # self-contained: no scripts, stylesheets or images fetched from anywhere
    for bad in ('src="http', "src='http", 'href="http', "<link ", "<script", "url(http"):
        assert bad not in html, bad
    return res


def screenshot(html: Path, png: Path) -> str:
    """Render report.html in headless Chromium: a screenshot and the DOM as Chromium parsed it."""
    profile = png.parent / "chromium-profile"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-extensions", f"--user-data-dir={profile}", "--window-size=1300,4000"]
    subprocess.run(base + [f"--screenshot={png}", html.as_uri()], capture_output=True, timeout=120, check=True)
    dom = subprocess.run(base + ["--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    return dom.stdout


def check_in_chromium(out: Path, name: str, figures: int) -> None:
    png = out / f"{name}.png"
    dom = screenshot(out / "report.html", png)
    for table in ("accuracy-table", "speed-table", "training-table", "repro-table"):
        assert f'id="{table}"' in dom, table
    assert dom.count("<svg") >= figures, "plots missing from the rendered page"
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[0] > 1000 and img.std() > 0.05, "screenshot is blank"
    print(f"report screenshot: {png}")
    if os.environ.get("SPX_TEST_ARTIFACTS"):  # CI can collect the screenshots from there
        keep = Path(os.environ["SPX_TEST_ARTIFACTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, keep / png.name)


# ---------------------------------------------------------------- fast: report from report inputs
def test_report_all_formats_from_cells(tmp_path):
    out = write_demo_bench(tmp_path / "b")
    write_cell(out, "broken", "espnet", [], state="failed", error="step 'train' failed (exit 1): RuntimeError: boom")
    proc = run_spx("bench", "--report-only", "--out", out)
    assert proc.returncode == 0, proc.stderr
    res = check_report_files(out)
    by = {(r["recipe"], r["backend"]): r for r in res["rows"]}
    assert by[("demo", "nemo")]["wer"] == 0.0
    sb = by[("demo", "speechbrain")]
    # whisper normalizer: "mister smith paid twenty dollars" == "Mr. Smith paid 20 dollars" -> no error there
    assert (sb["substitutions"], sb["deletions"], sb["insertions"]) == (3, 0, 2) and sb["words"] == 20
    assert sb["wer"] == pytest.approx(5 / 20) and sb["wer_ci"][0] <= 0.25 <= sb["wer_ci"][1]
    assert by[("demo", "espnet")]["speed"]["rtfx"] == pytest.approx(12.0 / 0.55)
    assert by[("demo", "nemo")]["s_per_epoch"] == pytest.approx(10.0) and by[("demo", "nemo")]["params"] == 812345
    fail = by[("broken", "espnet")]
    assert fail["state"] == "failed" and fail["log"].endswith("broken-espnet/train.log") and "boom" in fail["error"]
    assert len(res["comparisons"]) == 3 and all(0 < c["p_value"] <= 1 for c in res["comparisons"])
    assert res["disagreements"]["demo"][0]["utt"] == "test/utt0"
    raw = {u["utt"]: u for u in res["utterances"]["demo"]}["test/utt2"]["hyps"]["espnet"]
    assert raw["raw"] == "mr smith paid $20" and raw["norm"] == "mister smith paid $20"  # raw kept beside normalized
    md = (out / "report.md").read_text()
    for section in ("## Accuracy", "## Speed", "## Training cost", "## Pairwise WER differences", "## Failures",
                    "## Where backends disagree (demo)", "## Reproducibility", "whisper_normalizer.english"):
        assert section in md, section
    assert str(out / "runs" / "broken-espnet" / "train.log") in md
    assert "| 0.81M | 0.81M |" in md and "| 0.81M | 20.5k (4.1k adapters) |" in md  # params, trainable (LoRA)
    assert "failed" in proc.stderr and "broken-espnet" in proc.stderr  # the terminal table shows the failure
    check_in_chromium(out, "report-synthetic", figures=3)


def test_from_results_json_rerenders_without_cells(tmp_path):
    out = write_demo_bench(tmp_path / "b")
    assert run_spx("bench", "--report-only", "--out", out).returncode == 0
    shutil.copy(out / "results.json", tmp_path / "results.json")
    shutil.rmtree(out)
    proc = run_spx("bench", "--from", tmp_path / "results.json", "--out", tmp_path / "again")
    assert proc.returncode == 0, proc.stderr
    check_report_files(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "results.json").read_text()) == json.loads((tmp_path / "results.json").read_text())
    assert "## Where backends disagree" in (tmp_path / "again" / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--backends", "nemo,kaldi"], "unknown backend kaldi"),
    (["--report-only", "--out", "{tmp}/nothing"], "has no runs/ folder"),
    (["--from", "{tmp}/x.json"], "is not an spx bench results file"),
    (["{tmp}/missing.yaml"], "file not found"),
])
def test_bench_bad_input_is_one_clear_error(tmp_path, args, message):
    (tmp_path / "x.json").write_text('{"a": 1}')
    proc = run_spx("bench", *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_bench_cli_module_imports_click_only():
    code = ("import sys; import spx.cli.bench; "
            "print([m for m in ('torch','pydantic','matplotlib','numpy','jinja2','rich') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- slow: the whole bench on trained cells
def available_backends() -> list[str]:
    return [b for b in BACKENDS if (REPO / "spx" / "adapters" / b / "__init__.py").exists()]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_cell_trains(backend, trained_run):
    if backend not in available_backends():
        pytest.skip(f"spx/adapters/{backend}/ does not exist yet: no {backend} cell to bench")
    rd = trained_run(backend)
    metrics = json.loads((rd / "metrics.json").read_text())
    print(f"{backend}: WER {metrics['wer']:.3f} CER {metrics['cer']:.3f} RTFx {metrics.get('rtfx')}")
    # product target 0.15 (measured at 1 thread, the same in two runs: NeMo 0.150, SB 0.121, ESPnet 0.114, on 140
    # words); the bar leaves room for another CPU's numerics, which move a model this small by a few points
    assert metrics["wer"] < 0.2, f"{backend} WER on held-out voices: {metrics['wer']:.3f}"


@pytest.mark.slow
def test_whole_bench_skips_finished_cells_writes_report_and_isolates_failures(bench_dir, trained_run, tmp_path):
    backends = available_backends()
    if not backends:
        pytest.skip("no backend adapter exists yet (spx/adapters/<backend>/)")
    cells = {b: trained_run(b) for b in backends}
    stamps = {b: (rd / "hyps.jsonl").stat().st_mtime for b, rd in cells.items()}
    t0 = time.time()
    proc = run_spx("bench", "--out", bench_dir, "--backends", ",".join(backends))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for b, rd in cells.items():  # finished cells were skipped, not re-trained
        assert f"{rd.name}: finished earlier, skipped" in proc.stderr
        assert (rd / "hyps.jsonl").stat().st_mtime == stamps[b]
    print(f"bench over {len(backends)} finished cells: {time.time() - t0:.1f} s")
    res = check_report_files(bench_dir)
    rows = {r["backend"]: r for r in res["rows"] if r["recipe"] == RECIPE.stem}
    for b in backends:
        r = rows[b]
        assert r["state"] == "finished" and 0 <= r["wer"] <= 1 and r["wer_ci"][0] <= r["wer"] <= r["wer_ci"][1]
        assert r["speed"]["rtfx"] > 0 and r["speed"]["repeats"] >= 1 and r["scored_utterances"] == 40
        assert r["params"] and r["train_wall_s"]
    assert len(res["comparisons"]) == len(backends) * (len(backends) - 1) // 2
    check_in_chromium(bench_dir, "report-bench", figures=2 + (len(backends) > 0))

    # failure isolation: a recipe whose training audio is not audio fails on one backend; nothing else is lost
    bad_audio = tmp_path / "broken.flac"
    bad_audio.write_bytes(b"this is not a FLAC file" * 100)
    lines = (DEMO / "train.jsonl").read_text().splitlines()
    rows_ = [json.loads(line) for line in lines[1:9]]
    for row in rows_:
        row["audio"] = str(bad_audio)
    (tmp_path / "train.jsonl").write_text("\n".join([lines[0]] + [json.dumps(r) for r in rows_]) + "\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text(RECIPE.read_text().replace("../spx/demo/corpus/train.jsonl", str(tmp_path / "train.jsonl"))
                      .replace("../spx/demo/corpus/", str(DEMO) + "/"))
    proc = run_spx("bench", broken, "--out", bench_dir, "--backends", backends[0], "-o", "training.epochs=1")
    assert proc.returncode == 1, proc.stderr[-3000:]  # exit 1 says a cell failed; the report is still written
    assert f"broken-{backends[0]}" in proc.stderr and "1 cell(s) failed" in proc.stderr and "Traceback" not in proc.stderr
    res = check_report_files(bench_dir)
    fail = next(r for r in res["rows"] if r["recipe"] == "broken")
    assert fail["state"] == "failed" and fail["error"] and Path(fail["log"]).exists(), fail
    kept = {r["backend"] for r in res["rows"] if r["recipe"] == RECIPE.stem and r.get("wer") is not None}
    assert kept == set(backends)  # the others' results stay
    md = (bench_dir / "report.md").read_text()
    assert "## Failures" in md and fail["log"] in md
    assert cell_dir(bench_dir, RECIPE.stem, backends[0]).joinpath("metrics.json").exists()
