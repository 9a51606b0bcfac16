"""`spx export` / `spx serve` beyond ASR (issue 17): the shared trained kws_classifier runs (tests/test_classification's
`trained_kws`, no new training) exported to ONNX through each backend's EXPORT module and parity-checked (logits and
top-1 labels), one export served by a real uvicorn process and called with a real HTTP client on POST /v1/classify;
the shared trained Tacotron2 run (conftest's `trained_tts`) served on POST /v1/synthesize."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import soundfile as sf

from conftest import REPO, export_once, read_jsonl, run_spx
from shared_artifacts import shared_dir
from spx.demo.kws_corpus import CLASSES
import test_deploy
from test_deploy import Server, assert_served_synthesizes

exported = test_deploy.exported  # the shared ASR exports of tests/test_deploy.py

BACKENDS = ("nemo", "speechbrain", "espnet")
PARITY_UTTERANCES = "12"  # the check's wiring on CI; `spx export` checks the whole test set by default


@pytest.fixture(scope="session")
def cls_exported(trained_kws, tmp_path_factory):
    """cls_exported(backend, "onnx" | "onnx-int8") -> the export dir of the shared KWS run (made once per test run)."""
    root = shared_dir(tmp_path_factory, "cls_exports")

    return lambda backend, kind: export_once(trained_kws(backend), root / f"{backend}-{kind}", kind, PARITY_UTTERANCES)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_export_passes_parity(backend, cls_exported):
    d = cls_exported(backend, "onnx")
    info = json.loads((d / "export.json").read_text())
    assert info["backend"] == backend and info["task"] == "classification" and info["family"] == "kws_classifier"
    assert {p.name for p in d.iterdir()} == {"model.onnx", "export.json", "frontend.json", "frontend.npz"}
    assert sorted(info["classes"]) == sorted(CLASSES) and info["top_k"] == 3
    p = info["parity"]
    assert p["passed"] and p["utterances"] == int(PARITY_UTTERANCES), p["summary"]
    assert p["max_abs_logit_diff"] <= 2e-3 and p["label_agreement"] == 1.0
    assert p["exported_accuracy"] == p["toolkit_accuracy"] >= 0.5  # 12 clips of held-out voices; chance is 8 %
    assert info["speed"]["export_rtfx"] > 0 and info["sizes"]["artefact_bytes"] > 0
    # the engine a server uses answers as the parity check's toolkit did, clip by clip and batched
    from spx.adapters.common.child import load_audio
    from spx.deploy.engine import load_engine
    from spx.manifests import read_manifest

    utts = {u.id: u for u in read_manifest(Path(info["source_run"]) / "manifests" / "test.jsonl")}
    ids = list(p["toolkit_labels"])[:6]
    wavs = [load_audio(utts[i], 16000) for i in ids]
    engine = load_engine(d, threads=1)
    assert [label for label, _ in engine.classify(wavs)] == [p["toolkit_labels"][i] for i in ids]


@pytest.mark.slow
def test_classifier_int8_export(cls_exported):
    """onnxruntime dynamic int8 on the SpeechBrain classifier: it may move labels, within the int8 rule."""
    info = json.loads((cls_exported("speechbrain", "onnx-int8") / "export.json").read_text())
    assert info["quantize"] == "int8" and info["parity"]["passed"]
    assert info["parity"]["accuracy_delta"] >= -0.10 and "fp32_export_rtfx" in info["speed"]
    assert {"fp32_model_bytes", "int8_model_bytes"} <= set(info["sizes"])


@pytest.mark.slow
def test_asr_int8_static_export(exported):
    """--quantize int8-static (onnxruntime static quantization of Conv and MatMul, calibrated on valid-set features)
    on the SpeechBrain conformer: smaller than fp32, within the int8 parity rule, served by the same engine."""
    from spx.deploy.engine import ExportEngine

    d = exported("speechbrain", "onnx-int8-static")
    info = json.loads((d / "export.json").read_text())
    assert info["quantize"] == "int8-static" and info["parity"]["passed"] and info["parity"]["wer_delta"] <= 0.10
    assert info["sizes"]["int8_model_bytes"] < info["sizes"]["fp32_model_bytes"]
    ops = {n.op_type for n in __import__("onnx").load(str(d / "model.onnx")).graph.node}
    assert {"QLinearConv", "QLinearMatMul"} <= ops  # convolutions quantized too, unlike the dynamic int8
    wav, _ = sf.read(REPO / "spx" / "demo" / "corpus" / "audio" / "test_0000.flac", dtype="float32")
    assert ExportEngine(d).transcribe([wav])[0].strip()


def test_int8_static_is_onnx_only(tmp_path):
    proc = run_spx("export", tmp_path, "--format", "torchscript", "--quantize", "int8-static")
    assert proc.returncode == 2 and "int8-static is for ONNX exports" in proc.stdout + proc.stderr


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text[:2000]}")


@pytest.mark.slow
def test_served_classifier_export(cls_exported, trained_kws, tmp_path):
    """The ESPnet classifier's ONNX export over HTTP: the run's own labels (ESPnet classifies clip by clip, so
    hyps.jsonl is batch 1) one request at a time and 8 at once (batched), a bad input, /metrics."""
    import httpx

    rd = trained_kws("espnet")
    rows = read_jsonl(rd / "hyps.jsonl")[:8]
    audio = {r["id"]: r["audio"] for r in read_jsonl(rd / "manifests" / "test.jsonl")[1:]}
    server = Server(cls_exported("espnet", "onnx"), tmp_path / "server.log", "--max-wait-ms", "50", "--threads", "1")
    try:
        server.wait_ready()
        url = server.url + "/v1/classify"
        with httpx.Client(timeout=60) as client:
            for r in rows:
                got = client.post(url, files={"file": ("clip.flac", Path(audio[r["id"]]).read_bytes())})
                assert got.status_code == 200, got.text
                body = got.json()
                assert body["label"] == r["label"], (r["id"], body, r)
                assert list(body["scores"]) == list(r["scores"])  # the same top-3, best first
                assert body["duration"] == pytest.approx(r["duration"], abs=1e-3) and body["timing"]["model_ms"] > 0
            bad = client.post(url, content=b"not audio at all" * 20, headers={"content-type": "audio/wav"})
            assert bad.status_code == 422 and bad.json()["error"] == "not_audio" and bad.json()["request_id"]
            assert client.post(server.url + "/v1/transcribe", content=b"x").status_code == 404  # one task endpoint

        def one(r):
            with httpx.Client(timeout=120) as c:
                return c.post(url, content=Path(audio[r["id"]]).read_bytes(), headers={"content-type": "audio/flac"})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, rows))
        assert [a.json()["label"] for a in answers] == [r["label"] for r in rows]
        assert max(a.json()["timing"]["batch_size"] for a in answers) > 1  # concurrent requests were batched
        metrics = httpx.get(server.url + "/metrics").text
        assert _metric(metrics, 'spx_requests_total{endpoint="classify",status="200"}') == 16
        assert _metric(metrics, 'spx_errors_total{kind="not_audio"}') == 1
        assert server.proc.poll() is None
    finally:
        server.stop()


@pytest.mark.slow
def test_served_tts_run_synthesizes(trained_tts, tmp_path):
    """The shared Tacotron2 run (ESPnet) served through its family's load_synthesizer: one test sentence -> a WAV at
    the spec's rate, not silent, about as long as the run's own synthesis of it; bad texts are 4xx JSON."""
    rd = trained_tts("espnet").path
    assert_served_synthesizes(rd, rd, tmp_path / "server.log", same_length=False)


# ---------------------------------------------------------------- spx bench --variants
def test_bench_variants_are_checked_before_anything_runs(tmp_path):
    bad = run_spx("bench", REPO / "recipes" / "kws.yaml", "--variants", "torch,onnx-fp16", "--out", tmp_path)
    assert bad.returncode == 2 and "unknown variant onnx-fp16" in bad.stdout + bad.stderr
    tts = run_spx("bench", REPO / "recipes" / "vits.yaml", "--variants", "torch,onnx", "--out", tmp_path)
    assert tts.returncode == 2 and "has no exporter for tts family vits" in tts.stdout + tts.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_bench_variants_table(trained_kws, kws_corpus, tmp_path):
    """The shared SpeechBrain KWS run as a finished bench cell (copied: the bench skips it), benched with
    --variants torch,onnx: both decode the test set, the fp32 export's accuracy is the toolkit's, one table."""
    import shutil

    out = tmp_path / "bench"
    cell = out / "runs" / "kws-speechbrain"
    shutil.copytree(trained_kws("speechbrain"), cell, ignore=shutil.ignore_patterns("export"))
    proc = run_spx("bench", REPO / "recipes" / "kws.yaml", "--backends", "speechbrain", "--out", out,
                   "--variants", "torch,onnx", *[a for s in ("train", "valid", "test")
                                                 for a in ("-o", f"data.{s}={kws_corpus / f'{s}.jsonl'}")], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "finished earlier, skipped" in proc.stderr  # the cell was not trained again
    v = json.loads((cell / "variants.json").read_text())
    assert v["metric"] == "accuracy" and list(v["variants"]) == ["torch", "onnx"]
    torch_v, onnx_v = v["variants"]["torch"], v["variants"]["onnx"]
    assert torch_v["accuracy"] == pytest.approx(json.loads((cell / "metrics.json").read_text())["accuracy"], abs=0.03)
    # torch decodes in padded batches of 16, whose padding moves a few labels; the engine batches equal lengths only
    assert onnx_v["accuracy"] == pytest.approx(torch_v["accuracy"], abs=0.06)
    assert onnx_v["rtfx"] > 0 and torch_v["rtfx"] > 0 and onnx_v["model_bytes"] > 0 and torch_v["model_bytes"] > 0
    assert (cell / "export" / "onnx" / "export.json").is_file()
    report = (out / "report.md").read_text()
    table = report.split("## Deployment variants", 1)[1].split("\n## ", 1)[0]
    assert "| kws | speechbrain | torch | accuracy |" in table and "| kws | speechbrain | onnx | accuracy |" in table
    assert 'id="variants-table"' in (out / "report.html").read_text()
