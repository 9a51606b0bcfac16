"""`spx export` / `spx serve` of ESPnet ssl_ctc (issue 17; spx/adapters/espnet/steps/ssl_export.py) on the shared LoRA
run of tests/test_espnet_pretrained.py (`espnet_lora_run`: the tiny HuBERT through ESPnet's s3prl frontend with a
weighted sum of layers and LoRA adapters; no new training): ONNX fp32 and int8 through the real CLI, parity-checked
against ESPnet's own model.encode on the waveform (the real s3prl path) and spx's decode step's greedy text; the fp32
export served by a real uvicorn process."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import export_once, read_jsonl
from shared_artifacts import shared_dir
import test_espnet_pretrained
from test_deploy import Server

# session fixtures: the tiny pretrained models and the shared ESPnet ssl_ctc LoRA run (trained once per test run)
hf_models = test_espnet_pretrained.hf_models
espnet_lora_run = test_espnet_pretrained.espnet_lora_run

PARITY_UTTERANCES = "12"  # the check's wiring on CI; `spx export` checks the whole test set by default


@pytest.fixture(scope="session")
def espnet_ssl_exported(espnet_lora_run, tmp_path_factory):
    """espnet_ssl_exported("onnx" | "onnx-int8") -> the export dir of the shared run (made once per test run)."""
    root = shared_dir(tmp_path_factory, "espnet_ssl_exports")
    return lambda kind: export_once(espnet_lora_run, root / kind, kind, PARITY_UTTERANCES)


# ---------------------------------------------------------------- fast
def test_espnet_ssl_ctc_names_its_exporter(tmp_path):
    from spx.adapters import get_adapter
    from spx.spec import load_spec

    spec = load_spec(test_espnet_pretrained.CTC_RECIPE, [])
    assert get_adapter("espnet").export_module(spec) == "spx.adapters.espnet.steps.ssl_export"


# ---------------------------------------------------------------- slow: the shared run exported and served
@pytest.mark.slow
def test_espnet_ssl_ctc_exports_pass_parity(espnet_ssl_exported):
    from spx.adapters.common.child import load_audio
    from spx.deploy.engine import ExportEngine
    from spx.manifests import read_manifest

    infos = {kind: json.loads((espnet_ssl_exported(kind) / "export.json").read_text())
             for kind in ("onnx", "onnx-int8")}
    for kind, info in infos.items():
        p = info["parity"]
        print(f"espnet ssl_ctc {kind}: {p['summary']}; padding diff {info['padding_max_abs_logprob_diff']:.2e}; "
              f"speed {info['speed']}")
        assert info["backend"] == "espnet" and info["family"] == "ssl_ctc" and info["task"] == "asr", kind
        assert p["passed"] and p["utterances"] == int(PARITY_UTTERANCES) and not p["length_mismatch"], kind
        assert info["inputs"] == {"features": "waveform", "lengths": "lengths"} and info["speed"]["export_rtfx"] > 0
        assert "HubertModel" in info["route"]
        # s3prl gives every utterance of a padded batch ceil(max samples / 320) frames of the Transformers model over
        # the padding (its last valid frame is one of them), and the group-norm feature encoder sees the padding: in
        # ESPnet too a padded batch moves the outputs (by ~2 here), so the engine batches equal lengths only
        assert info["padding_changes_outputs"] and info["padding_max_abs_logprob_diff"] > 2e-3, kind
    d = espnet_ssl_exported("onnx")
    assert {f.name for f in d.iterdir()} == {"model.onnx", "export.json", "tokens.json", "frontend.json"}
    front = json.loads((d / "frontend.json").read_text())
    assert front["kind"] == "waveform" and front["do_normalize"] is True and front["attention_mask"] is True
    tokens = json.loads((d / "tokens.json").read_text())
    assert tokens["space"] == "<space>" and tokens["tokens"][tokens["blank"]] == "<blank>"
    p = infos["onnx"]["parity"]
    assert p["max_abs_logprob_diff"] <= 2e-3 and p["hypothesis_agreement"] == 1.0
    p8 = infos["onnx-int8"]
    assert p8["quantize"] == "int8" and p8["sizes"]["int8_model_bytes"] < p8["sizes"]["fp32_model_bytes"]
    assert p8["parity"]["wer_delta"] <= 0.10 and "fp32_export_rtfx" in p8["speed"]
    # the engine answers a batch of different lengths as each utterance alone (the parity check's reference)
    info = infos["onnx"]
    utts = {u.id: u for u in read_manifest(Path(info["source_run"]) / "manifests" / "test.jsonl")}
    ids = list(p["toolkit_hyps"])[:4]
    wavs = [load_audio(utts[i], 16000) for i in ids]
    assert len({len(w) for w in wavs}) == len(wavs)
    engine = ExportEngine(d, threads=1)
    alone = [engine.log_probs([w])[0] for w in wavs]
    assert all(a.shape == b.shape and np.abs(a - b).max() == 0.0 for a, b in zip(engine.log_probs(wavs), alone))
    assert engine.transcribe(wavs) == [p["toolkit_hyps"][i] for i in ids]


@pytest.mark.slow
def test_served_espnet_ssl_export_transcribes_like_the_run(espnet_ssl_exported, espnet_lora_run, tmp_path):
    """One test utterance over HTTP: the served ONNX export's text is ESPnet's own model's (batch 1)."""
    import httpx

    d = espnet_ssl_exported("onnx")
    toolkit = json.loads((d / "export.json").read_text())["parity"]["toolkit_hyps"]
    row = next(r for r in read_jsonl(espnet_lora_run / "hyps.jsonl") if r["id"] in toolkit)
    audio = {r["id"]: r["audio"] for r in read_jsonl(espnet_lora_run / "manifests" / "test.jsonl")[1:]}
    server = Server(d, tmp_path / "server.log", "--max-wait-ms", "0", "--threads", "1")
    try:
        server.wait_ready()
        with httpx.Client(timeout=60) as client:
            r = client.post(server.url + "/v1/transcribe",
                            files={"file": ("a.flac", Path(audio[row["id"]]).read_bytes())})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["text"] == toolkit[row["id"]] and body["duration"] == pytest.approx(row["duration"], abs=0.01)
        assert httpx.get(server.url + "/readyz").json()["model"]["backend"] == "espnet"
    finally:
        server.stop()
