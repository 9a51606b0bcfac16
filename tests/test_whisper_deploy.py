"""`spx export` / `spx serve` of the whisper families (encoder-decoder ASR, issue 17) on the shared tiny runs (no new
training: tests/test_hf's `hf_whisper_run`, tests/test_speechbrain_whisper's `sb_whisper_run`): ONNX fp32 on both
backends and int8 on SpeechBrain, parity-checked against each toolkit's own decode (beam 2) through the real CLI;
one export served by a real uvicorn process. Fast: the numpy Whisper log-mel against Transformers' feature
extractor, the seq2seq parity rules."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import export_once
from shared_artifacts import shared_dir
from test_deploy import Server, _audio_of, _test_rows
import test_hf
import test_speechbrain_whisper

# session fixtures: the shared tiny models and trained runs (no new training)
hf_models = test_hf.hf_models
hf_whisper_run = test_hf.hf_whisper_run
tiny = test_speechbrain_whisper.tiny
sb_whisper_run = test_speechbrain_whisper.sb_whisper_run

PARITY_UTTERANCES = "4"  # the check's wiring on CI; `spx export` checks the whole test set by default


# ---------------------------------------------------------------- fast
def test_numpy_whisper_log_mel_matches_transformers_feature_extractor(tmp_path):
    from transformers import WhisperFeatureExtractor

    from spx.adapters.common.seq2seq_export import whisper_frontend
    from spx.deploy.features import WhisperLogMelFrontend, load_frontend

    fe = WhisperFeatureExtractor(feature_size=80)
    whisper_frontend(fe).save(tmp_path)
    ours = load_frontend(tmp_path)
    assert isinstance(ours, WhisperLogMelFrontend) and ours.sample_rate == 16000
    rng = np.random.RandomState(0)
    # short, exactly 30 s, longer (trimmed), near-silent
    for n, scale in ((16000 * 3 + 123, 0.1), (480000, 0.1), (500000, 0.1), (800, 1e-4)):
        wav = (rng.randn(n) * scale).astype(np.float32)
        want = fe([wav], sampling_rate=16000, return_tensors="np").input_features[0]
        got, valid = ours(wav)
        assert got.shape == want.shape == (80, 3000) and got.dtype == np.float32
        assert float(np.abs(got - want).max()) < 1e-4, n  # measured: 2e-7 .. 1e-5 (float32 rounding)
        assert valid == min(n, 480000) // 160


def test_seq2seq_parity_rules():
    from spx.deploy.parity import SEQ2SEQ_LOGIT_TOLERANCE, check_seq2seq_parity

    logits = np.linspace(-5, 5, 50, dtype=np.float32)
    toolkit = [(logits, "go on blue"), (logits, "up down four")]
    same = check_seq2seq_parity(["a", "b"], ["go on blue", "up down four"], toolkit,
                                [(logits + 1e-5, "go on blue"), (logits, "up down four")], quantized=False)
    assert same["passed"] and same["max_abs_logit_diff"] == pytest.approx(1e-5, rel=0.1)
    moved = check_seq2seq_parity(["a", "b"], ["go on blue", "up down four"], toolkit,
                                 [(logits + 2 * SEQ2SEQ_LOGIT_TOLERANCE, "go on blue"), (logits, "up down four")],
                                 quantized=False)
    assert not moved["passed"]
    other = [(logits, "go on blue"), (logits, "up down for")]
    assert not check_seq2seq_parity(["a", "b"], ["go on blue", "up down four"], toolkit, other, False)["passed"]
    # int8: the logits may move; the WER may rise by at most INT8_MAX_WER_LOSS (one word of six is 0.17: fails)
    assert check_seq2seq_parity(["a", "b"], ["go on blue", "up down four"], toolkit,
                                [(logits + 1.0, h) for _, h in toolkit], True)["passed"]
    int8 = check_seq2seq_parity(["a", "b"], ["go on blue", "up down four"], toolkit, other, True)
    assert not int8["passed"] and int8["wer_delta"] == pytest.approx(1 / 6)


# ---------------------------------------------------------------- slow: the shared runs exported and served
@pytest.fixture(scope="session")
def whisper_exported(hf_whisper_run, sb_whisper_run, tmp_path_factory):
    """whisper_exported("hf" | "speechbrain", "onnx" | "onnx-int8") -> the export dir (made once per test run)."""
    root = shared_dir(tmp_path_factory, "whisper_exports")
    runs = {"hf": hf_whisper_run, "speechbrain": sb_whisper_run}

    return lambda backend, kind: export_once(runs[backend], root / f"{backend}-{kind}", kind, PARITY_UTTERANCES)


def _info(export_dir: Path) -> dict:
    return json.loads((export_dir / "export.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["hf", "speechbrain"])
def test_whisper_onnx_fp32_matches_the_toolkit_decode(backend, whisper_exported):
    from spx.adapters.common.child import load_audio
    from spx.deploy.engine import load_engine
    from spx.deploy.parity import SEQ2SEQ_LOGIT_TOLERANCE
    from spx.deploy.seq2seq import Seq2SeqEngine
    from spx.manifests import read_manifest

    out = whisper_exported(backend, "onnx")
    info = _info(out)
    p = info["parity"]
    print(f"{backend} whisper onnx: {p['summary']}; RTFx {info['speed']['export_rtfx']:.1f} (torch "
          f"{info['speed']['torch_rtfx']:.1f})")
    assert p["passed"] and p["utterances"] == int(PARITY_UTTERANCES) and p["hypothesis_agreement"] == 1.0
    assert p["max_abs_logit_diff"] <= SEQ2SEQ_LOGIT_TOLERANCE and p["feature_max_abs_diff"] < 1e-3
    assert {"encoder.onnx", "decoder.onnx", "frontend.json", "frontend.npz", "tokenizer"} <= {
        q.name for q in out.iterdir()}
    search = info["search"]
    assert search["num_beams"] == 2 and search["max_new_tokens"] == 24  # the run's decoding: beam 2, 24 tokens
    assert search["style"] == {"hf": "transformers", "speechbrain": "speechbrain"}[backend]
    assert len(search["prompt"]) == 4  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
    engine = load_engine(out, threads=1)
    assert isinstance(engine, Seq2SeqEngine) and engine.sample_rate == 16000
    utts = {u.id: u for u in read_manifest(Path(info["source_run"]) / "manifests" / "test.jsonl")}
    some = list(p["toolkit_hyps"].items())[:2]
    assert engine.transcribe([load_audio(utts[uid], 16000) for uid, _ in some]) == [h for _, h in some]


@pytest.mark.slow
def test_whisper_int8_export_within_the_wer_rule(whisper_exported):
    from spx.deploy.parity import INT8_MAX_WER_LOSS

    info = _info(whisper_exported("speechbrain", "onnx-int8"))
    p, z = info["parity"], info["sizes"]
    print(f"speechbrain whisper onnx-int8: {p['summary']}; {z['int8_model_bytes']} of {z['fp32_model_bytes']} bytes")
    assert p["passed"] and info["quantize"] == "int8" and p["wer_delta"] <= INT8_MAX_WER_LOSS
    assert z["int8_model_bytes"] < z["fp32_model_bytes"]
    assert not (whisper_exported("speechbrain", "onnx-int8") / "fp32").exists()  # the fp32 graphs are not kept


@pytest.mark.slow
def test_served_whisper_export_transcribes_like_the_toolkit(whisper_exported, sb_whisper_run, tmp_path):
    import httpx

    out = whisper_exported("speechbrain", "onnx")
    toolkit = _info(out)["parity"]["toolkit_hyps"]
    audio = _audio_of(sb_whisper_run)
    rows = [r for r in _test_rows(sb_whisper_run) if r["id"] in toolkit][:4]
    server = Server(out, tmp_path / "server.log", "--max-wait-ms", "0", "--threads", "1")
    try:
        server.wait_ready()
        with httpx.Client(timeout=120) as client:
            for row in rows:
                r = client.post(server.url + "/v1/transcribe",
                                files={"file": ("a.flac", Path(audio[row["id"]]).read_bytes())})
                assert r.status_code == 200, r.text
                assert r.json()["text"] == toolkit[row["id"]], row["id"]
                assert r.json()["duration"] == pytest.approx(row["duration"], abs=0.01)
            bad = client.post(server.url + "/v1/transcribe", files={"file": ("a.flac", b"not audio")})
            assert 400 <= bad.status_code < 500
        assert server.proc.poll() is None
    finally:
        server.stop()


def _perturbed(model, eos: int) -> None:
    """Weights of a tiny random Whisper redrawn wide (std 0.3: the untrained model repeats one token) and the eos
    embedding (tied to the output layer) set 1% above token 200's, so the decodes end at different lengths, beams
    finish at different steps, and some run to the length limit: every branch of both searches is taken."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
        emb = model.decoder.embed_tokens.weight
        emb[eos] = emb[200] * 1.01


WAVS = [(np.random.RandomState(0).randn(16000 + 3000 * i) * 0.05).astype(np.float32) for i in range(5)]


@pytest.mark.slow
def test_numpy_search_gives_generate_token_ids(hf_models, tmp_path):
    """Seq2SeqEngine's transformers-style search against WhisperForConditionalGeneration.generate (greedy and beam
    2) on the tiny Whisper perturbed by _perturbed: the same token ids for every waveform."""
    import types

    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from spx.adapters.common.seq2seq_export import whisper_frontend, write_artefact
    from spx.adapters.hf.steps.whisper_export import search_settings
    from spx.deploy.seq2seq import Seq2SeqEngine

    src = hf_models / "whisper"
    model = WhisperForConditionalGeneration.from_pretrained(src).eval()
    processor = WhisperProcessor.from_pretrained(src)
    _perturbed(model.model, model.generation_config.eos_token_id)
    lengths = set()
    engine = None
    for beams in (1, 2):
        spec = types.SimpleNamespace(model=types.SimpleNamespace(language="en", task="transcribe", max_new_tokens=12),
                                     decoding=types.SimpleNamespace(strategy="beam" if beams > 1 else "greedy",
                                                                    beam_size=beams))
        settings = search_settings(model, processor.tokenizer, spec)
        if engine is None:  # one artefact; the search settings are all that differ
            write_artefact(tmp_path, model.model, model.proj_out.weight, whisper_frontend(processor.feature_extractor),
                           processor.tokenizer, settings)
            engine = Seq2SeqEngine(tmp_path, threads=1)
        engine.search_settings = settings
        prompt, eos = settings["prompt"], settings["eos"]
        for wav in WAVS:
            feats = processor.feature_extractor([wav], sampling_rate=16000, return_tensors="pt").input_features
            with torch.inference_mode():
                seq = model.generate(feats, language="en", task="transcribe", num_beams=beams, max_new_tokens=12,
                                     return_timestamps=False)[0].tolist()
            want = [t for t in seq[len(prompt):] if t != eos] if seq[: len(prompt)] == prompt else \
                [t for t in seq if t not in prompt and t != eos]
            assert engine.search(engine.encode(wav)) == want, (beams, seq)
            lengths.add(len(want))
    assert len(lengths) >= 3 and min(lengths) < 12  # varied lengths, some ended by eos before the limit


@pytest.mark.slow
def test_numpy_search_gives_speechbrain_searchers_token_ids(tiny, tmp_path):
    """Seq2SeqEngine's speechbrain-style search against S2SWhisperGreedySearcher and S2SWhisperBeamSearcher (beam
    2) over SpeechBrain's Whisper integration of the perturbed tiny Whisper: the same token ids."""
    import torch
    from speechbrain.decoders.seq2seq import S2SWhisperBeamSearcher, S2SWhisperGreedySearcher
    from speechbrain.integrations.huggingface.whisper import Whisper

    from spx.adapters.common.seq2seq_export import whisper_frontend, write_artefact
    from spx.adapters.speechbrain.steps.whisper_export import search_settings
    from spx.deploy.seq2seq import Seq2SeqEngine

    whisper = Whisper(source=str(tiny / "whisper"), save_path=str(tmp_path / "cache"), encoder_only=False,
                      freeze=True, language="en", task="transcribe")
    whisper.tokenizer.set_prefix_tokens(language="en", task="transcribe", predict_timestamps=False)
    _perturbed(whisper.model, whisper.eos)
    whisper.eval()
    lengths = set()
    engine = None
    for beams in (1, 2):
        ratio = 12 / 1500
        search = S2SWhisperGreedySearcher(model=whisper, min_decode_ratio=0.0, max_decode_ratio=ratio) if beams == 1 \
            else S2SWhisperBeamSearcher(module=[whisper], min_decode_ratio=0.0, max_decode_ratio=ratio, beam_size=beams)
        search.set_task("transcribe")
        settings = search_settings(whisper, search, 1500)
        if engine is None:  # one artefact; the search settings are all that differ
            write_artefact(tmp_path / "export", whisper.model, whisper.model.decoder.embed_tokens.weight,
                           whisper_frontend(whisper.feature_extractor), whisper.tokenizer, settings)
            engine = Seq2SeqEngine(tmp_path / "export", threads=1)
        engine.search_settings = settings
        for wav in WAVS:
            with torch.no_grad():
                enc = whisper.forward_encoder(whisper._get_mel(torch.from_numpy(wav)[None]))
                want = [int(t) for t in search(enc, torch.ones(1))[0][0]]
            assert engine.search(engine.encode(wav)) == want, (beams, want)
            lengths.add(len(want))
    assert len(lengths) >= 3
