"""`spx bench` report for TTS cells (from synthetic report inputs, fast): the TTS table in every format, paired
bootstrap differences of the MOS proxies, MOS distributions, the audio gallery (played back in headless
Chromium), re-rendering from results.json, failures, and a mixed ASR + TTS matrix."""
from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench_synthetic import REFS, TTS_SR, TTS_TEXTS, write_cell, write_tts_cell
from conftest import run_spx
from spx.bench import scoring
from test_bench import CHROMIUM, check_report_files, screenshot

# espnet is clearly better on DNSMOS OVRL (higher on every sentence) and MCD (lower); DistillMOS is a tie.
ESPNET = {"dnsmos_ovrl": [3.2, 3.4, 3.0, 3.3, 3.1, 3.5, 3.2], "distillmos": [3.0, 3.1, 2.9, 3.05, 2.95, 3.0, 3.0],
          "mcd": [6.0, 6.5, 5.5, 6.2, 5.8, 6.1, 5.9], "f0_rmse": [20.0, 25.0, 22.0, None, 21.0, 24.0, 23.0]}
SPEECHBRAIN = {"dnsmos_ovrl": [2.5, 2.9, 2.4, 2.6, 2.2, 2.8, 2.7], "distillmos": [3.1, 3.0, 3.0, 2.9, 3.05, 2.95, 3.0],
               "mcd": [8.1, 7.5, 8.6, 7.9, 8.3, 8.0, 7.6], "f0_rmse": [30.0, 31.0, 29.0, None, 33.0, 28.0, 30.0]}
ESPNET_WORD_ERRORS = [0, 0, 1, 0, 0, 0, 0]
SPEECHBRAIN_WORD_ERRORS = [1, 1, 1, 0, 2, 1, 0]
ESPNET_HZ, SPEECHBRAIN_HZ = 220.0, 330.0  # each backend's clips are a tone at its own pitch: the gallery test hears which is which


def mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals)


def write_tts_bench(out: Path) -> Path:
    write_tts_cell(out, "tacotron2", "espnet", ESPNET, ESPNET_WORD_ERRORS, tone_hz=ESPNET_HZ, synth_time=0.2)
    write_tts_cell(out, "tacotron2", "speechbrain", SPEECHBRAIN, SPEECHBRAIN_WORD_ERRORS, tone_hz=SPEECHBRAIN_HZ,
                   synth_time=0.1)
    return out


def md_section(md: str, title: str) -> str:
    start = md.index(f"## {title}")
    end = md.find("\n## ", start + 3)
    return md[start:end if end > 0 else None]


def md_table(section: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|") and not line.startswith("|---")]


def gallery_clips(html: str) -> dict[str, list[str]]:
    """{backend or "reference": [data URIs]} of the <audio> players in report.html."""
    clips: dict[str, list[str]] = {}
    for attrs in re.findall(r"<audio ([^>]*)>", html):
        who = re.search(r'data-(?:backend|role)="([^"]+)"', attrs).group(1)
        clips.setdefault(who, []).append(re.search(r'src="([^"]*)"', attrs).group(1))
    return clips


def dominant_hz(uri: str) -> float:
    assert uri.startswith("data:audio/flac;base64,"), uri[:40]
    wav, sr = sf.read(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert sr == TTS_SR and len(wav) == int(0.4 * TTS_SR)
    return float(np.argmax(np.abs(np.fft.rfft(wav))) * sr / len(wav))


# ---------------------------------------------------------------- the shared bootstrap, for scores
def test_bootstrap_means_uses_the_same_draws_as_bootstrap_rates():
    rng = np.random.default_rng(3)
    values = rng.normal(3.0, 0.5, size=(2, 40))
    idx = np.random.default_rng(11).integers(0, 40, size=(200, 40), dtype=np.int32)
    np.testing.assert_allclose(scoring.bootstrap_means(values, 200, seed=11), values[:, idx].mean(-1))
    with pytest.raises(ValueError, match="finite"):
        scoring.bootstrap_means(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="no utterances"):
        scoring.bootstrap_means(np.zeros((1, 0)))


def test_bootstrap_mean_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits, trials = 0, 200
    for t in range(trials):
        scores = rng.normal(3.0, 0.6, 120)
        lo, hi = scoring.percentile_ci(scoring.bootstrap_means(scores[None], 400, seed=t)[0])
        hits += lo <= 3.0 <= hi
    assert 0.88 <= hits / trials <= 0.99, hits / trials


# ---------------------------------------------------------------- the report
def test_tts_report_in_every_format_with_an_asr_cell_and_failures(tmp_path):
    out = write_tts_bench(tmp_path / "b")
    write_cell(out, "demo", "nemo", REFS)  # a mixed matrix: one ASR cell
    write_tts_cell(out, "broken_tts", "espnet", state="failed")
    unscored = write_tts_cell(out, "unscored_tts", "espnet", ESPNET)
    (unscored / "metrics.json").unlink()
    proc = run_spx("bench", "--report-only", "--out", out)
    assert proc.returncode == 0, proc.stderr
    res = check_report_files(out)
    by = {(r["recipe"], r["backend"]): r for r in res["rows"]}
    # the terminal summary has a TTS table beside the ASR one; failures are listed with their logs
    assert "spx bench TTS results" in proc.stderr and "spx bench results" in proc.stderr
    assert "broken_tts-espnet failed" in proc.stderr

    # rows: the means of the per-utterance scores, CIs around them, the vocoder, judge WER, training cost
    for backend, scores, errors in (("espnet", ESPNET, ESPNET_WORD_ERRORS),
                                    ("speechbrain", SPEECHBRAIN, SPEECHBRAIN_WORD_ERRORS)):
        r = by[("tacotron2", backend)]
        assert r["task"] == "tts" and r["vocoder"] == "griffin-lim (32 iters)" and r.get("wer") is None
        for key, values in scores.items():
            m = r["tts"][key]
            assert m["value"] == pytest.approx(mean(values)) and m["ci"][0] <= m["value"] <= m["ci"][1], key
            assert m["utterances"] == sum(v is not None for v in values)
        words = sum(len(t.split()) for t in TTS_TEXTS)
        assert r["tts"]["wer"]["value"] == pytest.approx(sum(errors) / words)
        assert r["judge"]["model"].startswith("whisper tiny.en") and r["train_wall_s"] == 120.0 and r["params"] == 512345
    assert by[("tacotron2", "espnet")]["synthesis_rtf"] == pytest.approx(0.2 / 0.4)
    assert by[("demo", "nemo")]["wer"] == 0.0 and "tts" not in by[("demo", "nemo")]  # the ASR cell is scored as before

    # pairwise: espnet - speechbrain
    comp = {c["metric"]: c for c in res["tts_comparisons"] if c["recipe"] == "tacotron2"}
    assert (comp["dnsmos_ovrl"]["a"], comp["dnsmos_ovrl"]["b"]) == ("espnet", "speechbrain")
    ovrl = comp["dnsmos_ovrl"]
    assert ovrl["diff"] == pytest.approx(mean(ESPNET["dnsmos_ovrl"]) - mean(SPEECHBRAIN["dnsmos_ovrl"]))
    assert 0 < ovrl["ci"][0] <= ovrl["diff"] <= ovrl["ci"][1] and ovrl["p_value"] < 0.01 and ovrl["better"] == "espnet"
    assert comp["mcd"]["diff"] == pytest.approx(-2.0) and comp["mcd"]["ci"][1] < 0 and comp["mcd"]["better"] == "espnet"
    tie = comp["distillmos"]
    assert tie["ci"][0] < 0 < tie["ci"][1] and tie["better"] is None and tie["p_value"] > 0.5
    assert comp["wer"]["diff"] < 0 and comp["dnsmos_ovrl"]["utterances"] == len(TTS_TEXTS)
    assert res["comparisons"] == []  # one ASR backend: no WER pairs, and no TTS cell among them

    # distributions (every sentence) and the gallery (the first 5 both synthesized)
    assert res["tts_distributions"]["tacotron2"]["speechbrain"]["dnsmos_ovrl"] == SPEECHBRAIN["dnsmos_ovrl"]
    gallery = res["tts_gallery"]["tacotron2"]
    assert [g["utt"] for g in gallery] == [f"test/utt{i}" for i in range(5)]
    assert gallery[0]["text"] == TTS_TEXTS[0] and Path(gallery[0]["ref_audio"]).exists()

    # report.md: the TTS table, the pairs, failures with their log; no TTS cell in the ASR tables
    md = (out / "report.md").read_text()
    tts_table = {(row[0], row[1]): row for row in md_table(md_section(md, "TTS quality"))[1:]}
    header = md_table(md_section(md, "TTS quality"))[0]
    esp = dict(zip(header, tts_table[("tacotron2", "espnet")]))
    assert esp["Vocoder"] == "griffin-lim (32 iters)" and esp["DNSMOS OVRL"].startswith("3.24 [")
    assert esp["MCD dB"].startswith("6.00 [") and esp["judge WER %"].startswith("4.0 [") and esp["Utts"] == "7"
    assert dict(zip(header, tts_table[("tacotron2", "speechbrain")]))["DNSMOS OVRL"].startswith("2.59 [")
    assert "whisper tiny.en" in md_section(md, "TTS quality") and "tacotron2-espnet: utmos: no UTMOS weights configured." in md
    pairs = md_table(md_section(md, "Pairwise TTS differences"))
    ovrl_row = next(row for row in pairs if row[1] == "DNSMOS OVRL")
    assert ovrl_row[6] == "+0.66" and ovrl_row[9] == "espnet"
    accuracy = md_section(md, "Accuracy")
    assert "tacotron2" not in accuracy and "| demo | nemo | 0.0 |" in accuracy
    failures = md_section(md, "Failures")
    assert "tacotron2" not in failures and "demo" not in failures
    assert "attention did not align" in failures and str(out / "runs" / "broken_tts-espnet" / "logs" / "tts_train.log") in failures
    assert "unscored_tts" in failures and "wrote no metrics.json" in failures

    # report.tex and the CSVs
    tex = (out / "report.tex").read_text()
    assert "tab:spx-bench" in tex and "tab:spx-bench-tts" in tex and "tab:spx-bench-tts-pairs" in tex
    assert re.search(r"tacotron2 & espnet & griffin-lim \(32 iters\) & 3\.24 \[", tex)
    with (out / "results.csv").open() as fh:
        rows = {(r["recipe"], r["backend"]): r for r in csv.DictReader(fh)}
    assert float(rows[("tacotron2", "espnet")]["dnsmos_ovrl"]) == pytest.approx(mean(ESPNET["dnsmos_ovrl"]))
    assert rows[("tacotron2", "espnet")]["vocoder"] == "griffin-lim (32 iters)" and rows[("tacotron2", "espnet")]["wer"] == ""
    assert rows[("demo", "nemo")]["wer"] == "0.0" and rows[("demo", "nemo")]["dnsmos_ovrl"] == ""
    assert "attention did not align" in rows[("broken_tts", "espnet")]["error"]
    with (out / "comparisons.csv").open() as fh:
        pairs_csv = {r["metric"]: r for r in csv.DictReader(fh)}
    assert pairs_csv["dnsmos_ovrl"]["better"] == "espnet" and float(pairs_csv["dnsmos_ovrl"]["ci_low"]) > 0

    # report.html: tables, the distribution plot, and the gallery with every clip embedded
    html = (out / "report.html").read_text()
    for anchor in ('id="tts-table"', 'id="tts-comparison-table"', 'id="fig-mos-tacotron2"', 'id="tts-gallery-tacotron2"'):
        assert anchor in html, anchor
    clips = gallery_clips(html)
    assert {k: len(v) for k, v in clips.items()} == {"reference": 5, "espnet": 5, "speechbrain": 5}
    assert dominant_hz(clips["espnet"][0]) == pytest.approx(ESPNET_HZ, abs=3)  # the right clip under each backend
    assert dominant_hz(clips["speechbrain"][1]) == pytest.approx(SPEECHBRAIN_HZ + 5, abs=3)
    assert len(html) < 1_000_000

    # headless Chromium parses the page and decodes every embedded clip
    dom = screenshot(out / "report.html", out / "report-tts.png")
    assert dom.count("<audio") == 15 and 'id="tts-table"' in dom and 'id="accuracy-table"' in dom
    assert dom.count("<svg") >= 3  # MOS distributions, training curves, Pareto
    assert clip_durations(sum(clips.values(), []), tmp_path) == [0.4] * 15


def clip_durations(uris: list[str], tmp: Path) -> list[float]:
    """Durations Chromium decodes for the data: URIs (a probe page, not report.html: the report has no scripts)."""
    probe = tmp / "probe.html"
    probe.write_text(
        "<html><body><pre id=o></pre><script>const s=" + json.dumps(uris) + ";const out=[];let n=0;"
        "const done=()=>{if(++n==s.length)document.getElementById('o').textContent=out.join(',')};"
        "s.forEach((u,i)=>{const a=new Audio();a.preload='metadata';a.onloadedmetadata=()=>{out[i]=a.duration.toFixed(2);done()};"
        "a.onerror=()=>{out[i]='error';done()};a.src=u;});</script></body></html>")
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-extensions", f"--user-data-dir={tmp / 'probe-profile'}", "--virtual-time-budget=10000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    text = re.search(r'<pre id="o">([^<]*)</pre>', dom).group(1)
    return [float(x) if x != "error" else -1.0 for x in text.split(",")]


def test_tts_report_rerenders_from_results_json_and_without_the_audio(tmp_path):
    out = write_tts_bench(tmp_path / "b")
    assert run_spx("bench", "--report-only", "--out", out).returncode == 0
    proc = run_spx("bench", "--from", out / "results.json", "--out", tmp_path / "other")
    assert proc.returncode == 0, proc.stderr
    other = tmp_path / "other"
    check_report_files(other)
    assert json.loads((other / "results.json").read_text()) == json.loads((out / "results.json").read_text())
    for name in ("report.md", "report.tex", "results.csv", "comparisons.csv"):
        assert (other / name).read_text() == (out / name).read_text(), name
    html = (other / "report.html").read_text()
    assert {k: len(v) for k, v in gallery_clips(html).items()} == {"reference": 5, "espnet": 5, "speechbrain": 5}
    assert 'id="fig-mos-tacotron2"' in html

    # elsewhere, without the run dirs: every table stays, each clip says it is missing
    shutil.copy(out / "results.json", tmp_path / "results.json")
    shutil.rmtree(out)
    proc = run_spx("bench", "--from", tmp_path / "results.json", "--out", tmp_path / "elsewhere")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    html = (tmp_path / "elsewhere" / "report.html").read_text()
    assert "<audio" not in html and html.count("missing: ") == 15 and 'id="tts-table"' in html
    assert (tmp_path / "elsewhere" / "report.md").read_text() == (other / "report.md").read_text()


def test_tts_only_bench_has_no_empty_asr_tables(tmp_path):
    out = write_tts_bench(tmp_path / "b")
    proc = run_spx("bench", "--report-only", "--out", out)
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    assert "## TTS quality" in md and "## Accuracy" not in md and "## Pairwise WER" not in md
    tex = (out / "report.tex").read_text()
    assert "tab:spx-bench-tts" in tex and "WER (\\%) & 95\\% CI & CER" not in tex
    html = (out / "report.html").read_text()
    assert 'id="accuracy-table"' not in html and 'id="tts-table"' in html
