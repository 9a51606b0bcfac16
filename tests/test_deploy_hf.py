"""`spx export` / `spx serve` of the raw-waveform families (issue 17), on the shared tiny runs (no new training): hf
ssl_ctc (tests/test_hf's `hf_ctc_run`) exported to ONNX fp32 and int8 through the real CLI and
parity-checked against the decode step's own forward, its ONNX export served by a real uvicorn process; hf
ssl_classifier (`hf_cls_run`) and SpeechBrain ssl_ctc (`sb_ssl_run`) exported and parity-checked; the numpy
WaveformFrontend against Transformers' feature extractor; the whisper families' exporters."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import export_once, read_jsonl
from shared_artifacts import shared_dir
import test_hf
import test_hf_classification
import test_speechbrain_pretrained
from test_deploy import Server

# session fixtures: the shared tiny models and trained runs (no new training)
hf_models = test_hf.hf_models
hf_ctc_run = test_hf.hf_ctc_run
hf_cls_run = test_hf_classification.hf_cls_run
tiny = test_speechbrain_pretrained.tiny
sb_ssl_run = test_speechbrain_pretrained.sb_ssl_run

PARITY_UTTERANCES = "12"  # the check's wiring on CI; `spx export` checks the whole test set by default


def _export(run_dir: Path, folder: Path, kind: str) -> Path:
    return export_once(run_dir, folder, kind, PARITY_UTTERANCES)


@pytest.fixture(scope="session")
def hf_exported(hf_ctc_run, tmp_path_factory):
    """hf_exported("onnx" | "onnx-int8") -> the export dir of the shared run (made once per test run)."""
    root = shared_dir(tmp_path_factory, "hf_exports")
    return lambda kind: _export(hf_ctc_run, root / f"ssl_ctc-{kind}", kind)


# ---------------------------------------------------------------- fast
def test_waveform_frontend_is_the_feature_extractor_and_load_frontend_reads_the_kind(tmp_path):
    from transformers import Wav2Vec2FeatureExtractor

    from spx.deploy.features import LogMelFrontend, WaveformFrontend, load_frontend

    rng = np.random.default_rng(0)
    wavs = [(0.1 * rng.standard_normal(n) + 0.02).astype(np.float32) for n in (16000, 12345, 7000)]
    for padding_value in (0.0, -1.5):
        fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=padding_value,
                                      do_normalize=True, return_attention_mask=True)
        ref = fe(wavs, sampling_rate=16000, padding=True, return_tensors="np", return_attention_mask=True)
        front = WaveformFrontend({"kind": "waveform", "sample_rate": 16000, "do_normalize": True, "epsilon": 1e-7,
                                  "padding_value": padding_value, "attention_mask": True})
        batch, lengths = front.batch(wavs)
        assert batch.dtype == np.float32 and lengths.tolist() == ref["attention_mask"].sum(-1).tolist()
        np.testing.assert_allclose(batch, ref["input_values"], rtol=0, atol=1e-6)
    raw = WaveformFrontend({"kind": "waveform", "sample_rate": 8000, "do_normalize": False, "epsilon": 1e-7,
                            "padding_value": 0.0, "attention_mask": False})
    assert np.array_equal(raw(wavs[1])[0], wavs[1]) and raw(wavs[1])[1] == 12345

    raw.save(tmp_path)
    assert isinstance(load_frontend(tmp_path), WaveformFrontend) and load_frontend(tmp_path).sample_rate == 8000
    LogMelFrontend({"sample_rate": 16000}, np.ones(4), np.ones((2, 3))).save(tmp_path)  # no "kind": log-mel
    assert isinstance(load_frontend(tmp_path), LogMelFrontend)
    (tmp_path / "frontend.json").write_text(json.dumps({"kind": "mfcc"}))
    with pytest.raises(ValueError, match="unknown frontend kind 'mfcc'"):
        load_frontend(tmp_path)


def test_whisper_families_name_their_exporters():
    """hf and SpeechBrain whisper export (tests/test_whisper_deploy.py exports and serves them)."""
    from spx.adapters import get_adapter
    from spx.spec import load_spec

    spec = load_spec(test_hf.WHISPER_RECIPE, [])
    assert get_adapter("hf").export_module(spec) == "spx.adapters.hf.steps.whisper_export"
    assert get_adapter("speechbrain").export_module(spec) == "spx.adapters.speechbrain.steps.whisper_export"


# ---------------------------------------------------------------- slow: the shared runs exported and served
@pytest.mark.slow
def test_hf_ssl_ctc_exports_pass_parity(hf_exported):
    from spx.adapters.common.child import load_audio
    from spx.deploy.engine import ExportEngine
    from spx.manifests import read_manifest

    # TorchScript: test_waveform_graphs_of_every_model_kind (each CLI export here is a child process importing torch
    # + Transformers + onnxruntime, which is most of its time)
    infos = {kind: json.loads((hf_exported(kind) / "export.json").read_text()) for kind in ("onnx", "onnx-int8")}
    for kind, info in infos.items():
        p = info["parity"]
        print(f"hf ssl_ctc {kind}: {p['summary']}; RTFx {info['speed']}")
        assert info["backend"] == "hf" and info["family"] == "ssl_ctc" and info["task"] == "asr", kind
        assert p["passed"] and p["utterances"] == int(PARITY_UTTERANCES) and not p["length_mismatch"], kind
        assert info["inputs"] == {"features": "waveform", "lengths": "lengths"} and info["speed"]["export_rtfx"] > 0
        # the tiny wav2vec2 has the group-norm feature encoder (wav2vec2-base layout): padding moves its outputs
        # (fp32: by ~7e-4 on these 12 utterances, under the parity tolerance; int8: by ~2e-2), measured by the export
        diff = info["padding_max_abs_logprob_diff"]
        assert diff > 0 and info["padding_changes_outputs"] == (diff > 2e-3), kind
    d = hf_exported("onnx")
    assert {p.name for p in d.iterdir()} == {"model.onnx", "export.json", "tokens.json", "frontend.json"}
    assert json.loads((d / "frontend.json").read_text())["kind"] == "waveform"
    assert json.loads((d / "tokens.json").read_text())["space"] == "|"
    p = infos["onnx"]["parity"]
    assert p["max_abs_logprob_diff"] <= 2e-3 and p["hypothesis_agreement"] == 1.0
    p8 = infos["onnx-int8"]
    assert p8["quantize"] == "int8" and p8["sizes"]["int8_model_bytes"] < p8["sizes"]["fp32_model_bytes"]
    assert p8["parity"]["wer_delta"] <= 0.10 and "fp32_export_rtfx" in p8["speed"]
    # the engine answers a batch of different lengths as each utterance alone (the parity check's reference): in one
    # padded call when padding moves the outputs by less than the tolerance, else one call per length
    info = infos["onnx"]
    utts = {u.id: u for u in read_manifest(Path(info["source_run"]) / "manifests" / "test.jsonl")}
    ids = list(info["parity"]["toolkit_hyps"])[:5]
    wavs = [load_audio(utts[i], 16000) for i in ids]
    assert len({len(w) for w in wavs}) == len(wavs)
    for kind in ("onnx", "onnx-int8"):
        engine = ExportEngine(hf_exported(kind), threads=1)
        alone = [engine.log_probs([w])[0] for w in wavs]
        batched = engine.log_probs(wavs)
        tolerance = 2e-3 if not infos[kind]["padding_changes_outputs"] else 0.0
        assert all(a.shape == b.shape and np.abs(a - b).max() <= tolerance for a, b in zip(batched, alone)), kind
    assert ExportEngine(d, threads=1).transcribe(wavs) == [info["parity"]["toolkit_hyps"][i] for i in ids]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "wavlm"])
def test_waveform_graphs_of_every_model_kind(kind, hf_models, tmp_path):
    """The exporter's graph (AutoModelForCTC from the waveform, with and without the attention mask) traced from each
    tiny pretrained kind with a new head, as ONNX and TorchScript: a padded batch of 3 lengths (the example had 2)
    gives what the model gives, so no shape of the example was frozen into the graph."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCTC

    from spx.adapters.common.export import trace_waveform_graph
    from spx.adapters.hf.steps.export import WaveformCtc

    torch.manual_seed(0)
    model = AutoModelForCTC.from_pretrained(hf_models / kind, vocab_size=20, ignore_mismatched_sizes=True).eval()
    lengths = np.array([23456, 17000, 9001])
    wavs = np.zeros((3, lengths.max()), dtype=np.float32)
    for i, n in enumerate(lengths):
        wavs[i, :n] = np.random.default_rng(i).standard_normal(n)
    outputs = {"log_probs": ["batch", "out_frames", "vocab"], "out_lengths": ["batch"]}
    for mask in (True, False):
        net = WaveformCtc(model, mask)
        with torch.no_grad():
            want, want_len = net(torch.from_numpy(wavs), torch.from_numpy(lengths))
        trace_waveform_graph(net, tmp_path / "g.onnx", "onnx", 17, False, outputs)
        session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
        got, got_len = session.run(None, {"waveform": wavs, "lengths": lengths})
        trace_waveform_graph(net, tmp_path / "g.ts", "torchscript", 17, False, outputs)
        with torch.no_grad():
            ts, ts_len = torch.jit.load(str(tmp_path / "g.ts"))(torch.from_numpy(wavs), torch.from_numpy(lengths))
        assert got_len.tolist() == ts_len.tolist() == want_len.tolist() == [293, 212, 112], (kind, mask)
        assert np.abs(got - want.numpy()).max() < 1e-4 and np.abs(ts.numpy() - want.numpy()).max() < 1e-4, (kind, mask)


@pytest.mark.slow
def test_served_hf_export_transcribes_like_the_run(hf_exported, hf_ctc_run, tmp_path):
    """One test utterance over HTTP: the served ONNX export's text is the run's model's own (the export's parity
    reference, batch 1)."""
    import httpx

    d = hf_exported("onnx")
    toolkit = json.loads((d / "export.json").read_text())["parity"]["toolkit_hyps"]
    row = next(r for r in read_jsonl(hf_ctc_run / "hyps.jsonl") if r["id"] in toolkit)
    audio = {r["id"]: r["audio"] for r in read_jsonl(hf_ctc_run / "manifests" / "test.jsonl")[1:]}
    server = Server(d, tmp_path / "server.log", "--max-wait-ms", "0", "--threads", "1")
    try:
        server.wait_ready()
        with httpx.Client(timeout=60) as client:
            r = client.post(server.url + "/v1/transcribe", files={"file": ("a.flac", Path(audio[row["id"]]).read_bytes())})
        assert r.status_code == 200, r.text
        body = r.json()
        # the run's decode path on this utterance alone (hyps.jsonl is decoded in padded batches of 8, which move
        # this model's outputs: see padding_changes_outputs)
        assert body["text"] == toolkit[row["id"]] and body["duration"] == pytest.approx(row["duration"], abs=0.01)
        assert httpx.get(server.url + "/readyz").json()["model"]["backend"] == "hf"
    finally:
        server.stop()


@pytest.mark.slow
def test_hf_ssl_classifier_exports_pass_parity(hf_cls_run, tmp_path_factory):
    from spx.adapters.common.child import load_audio
    from spx.deploy.engine import load_engine
    from spx.manifests import read_manifest

    fp32 = _export(hf_cls_run, shared_dir(tmp_path_factory, "hf_exports") / "ssl_classifier-onnx", "onnx")
    info = json.loads((fp32 / "export.json").read_text())
    p = info["parity"]
    print(f"hf ssl_classifier onnx: {p['summary']}; speed {info['speed']}")
    assert info["backend"] == "hf" and info["task"] == "classification" and info["family"] == "ssl_classifier"
    assert {f.name for f in fp32.iterdir()} == {"model.onnx", "export.json", "frontend.json"}
    assert p["passed"] and p["utterances"] == int(PARITY_UTTERANCES), p["summary"]
    assert p["max_abs_logit_diff"] <= 2e-3 and p["label_agreement"] == 1.0
    # labels, not constants (the run's accuracy bar is test_hf_classification's; 0.42 and 0.67 here on two runs)
    assert p["exported_accuracy"] == p["toolkit_accuracy"] > 0.0
    # the engine a server uses answers as the parity check's toolkit did, clip by clip and batched
    utts = {u.id: u for u in read_manifest(Path(info["source_run"]) / "manifests" / "test.jsonl")}
    ids = list(p["toolkit_labels"])[:6]
    wavs = [load_audio(utts[i], 16000) for i in ids]
    assert [label for label, _ in load_engine(fp32, threads=1).classify(wavs)] == [p["toolkit_labels"][i] for i in ids]


@pytest.mark.slow
def test_speechbrain_ssl_ctc_export_passes_parity(sb_ssl_run, tmp_path_factory):
    """SpeechBrain's integration normalises each padded row and masks the padding inside the graph: the export's
    frontend only pads, and its padded batches are the toolkit's padded batches."""
    d = _export(sb_ssl_run, shared_dir(tmp_path_factory, "hf_exports") / "sb_ssl_ctc-onnx", "onnx")
    info = json.loads((d / "export.json").read_text())
    p = info["parity"]
    print(f"speechbrain ssl_ctc onnx: {p['summary']}; speed {info['speed']}")
    assert info["backend"] == "speechbrain" and info["family"] == "ssl_ctc" and p["passed"]
    assert p["max_abs_logprob_diff"] <= 2e-3 and p["hypothesis_agreement"] == 1.0
    assert p["utterances"] == int(PARITY_UTTERANCES) and not p["length_mismatch"]
    front = json.loads((d / "frontend.json").read_text())
    assert front["kind"] == "waveform" and front["do_normalize"] is False and front["attention_mask"] is True


def test_int8_static_of_a_waveform_graph_leaves_its_convolutions_fp32(tmp_path):
    """A raw-waveform graph's feature-encoder convolutions see audio samples: per-tensor uint8 ranges there moved the
    tiny HuBERT's log-probs by 6.6 (no hypothesis kept), so its int8-static quantizes the MatMuls only (0.35)."""
    import onnx
    import torch

    from spx.adapters.common.export import STATIC_OP_TYPES, WAVEFORM_STATIC_OP_TYPES, quantize_onnx

    class ConvThenLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(1, 8, 10, stride=5)
            self.proj = torch.nn.Linear(8, 4)

        def forward(self, waveform):
            return self.proj(self.conv(waveform[:, None]).transpose(1, 2))

    src = tmp_path / "model.onnx"
    torch.onnx.export(ConvThenLinear().eval(), (torch.randn(1, 400),), str(src), input_names=["waveform"],
                      dynamic_axes={"waveform": {0: "batch", 1: "samples"}}, dynamo=False)
    feeds = [{"waveform": np.random.default_rng(i).standard_normal((1, 400)).astype(np.float32)} for i in range(4)]
    quantize_onnx(src, tmp_path / "int8.onnx", feeds, WAVEFORM_STATIC_OP_TYPES)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert "Conv" in ops and "QLinearConv" not in ops and "QLinearMatMul" in ops, ops
    assert "Conv" in STATIC_OP_TYPES  # a log-mel graph's convolutions are quantized (test_deploy_tasks.py)
