"""TTS jobs (Tacotron2) on ESPnet and SpeechBrain: rendering (fast) and real train -> synthesize -> score (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from conftest import TACOTRON2_TRAIN_OVERRIDES as TRAIN_OVERRIDES
from conftest import read_jsonl, render_tts_run, synthesized_test_set, tts_spec
from spx.errors import SpxError
from spx.launchers.execute import execute
from spx.rundir import RunDir
from spx.spec import load_spec

# the session fixtures tts_corpus, tts_multi_corpus and trained_tts (the Tacotron2 trained once per session, also the
# ESPnet FastSpeech2 tests' duration teacher) live in conftest.py
BACKENDS = ("espnet", "speechbrain")


# ------------------------------------------------------------------ fast: rendering
def test_espnet_config_carries_the_architecture_numbers(tts_multi_corpus, tmp_path):
    spec = tts_spec(tts_multi_corpus)
    rd = render_tts_run(spec, "espnet", tmp_path / "run")
    cfg = yaml.safe_load((rd / "native/conf/train_tts.yaml").read_text())
    m, c = spec.model, cfg["tts_conf"]
    assert cfg["tts"] == "tacotron2" and cfg["token_type"] == "char" and cfg["g2p"] is None and cfg["cleaner"] is None
    assert (c["embed_dim"], c["econv_layers"], c["econv_chans"], c["eunits"], c["adim"], c["dunits"], c["prenet_units"],
            c["postnet_layers"], c["postnet_chans"], c["reduction_factor"]) == (
        m.embedding_dim, m.encoder_layers, m.encoder_dim, m.encoder_dim, m.attention_dim, m.decoder_rnn_dim,
        m.prenet_dim, m.postnet_layers, m.postnet_dim, m.reduction_factor)
    assert "spks" not in c
    fe = cfg["feats_extract_conf"]
    assert cfg["feats_extract"] == "fbank" and fe["fs"] == 16000 and fe["n_mels"] == 80
    assert fe["hop_length"] == 256 and fe["win_length"] == 1024 and fe["n_fft"] == 1024
    assert "normalize" not in cfg  # global_mvn only on the training command, not in the stats step
    cmds = json.loads((rd / "native/tts_commands.json").read_text())["commands"]
    assert cmds["tts_train"][cmds["tts_train"].index("--normalize") + 1] == "global_mvn"
    assert cmds["collect_stats"][cmds["collect_stats"].index("--normalize") + 1] == "none"
    assert "--resume" in cmds["tts_train"] and "--init_param" not in cmds["tts_train"]
    assert [s["name"] for s in json.loads((rd / "steps.json").read_text())] == ["tts_train", "tts_synth"]  # tts_train prepares first
    tokens = (rd / "native/tts_tokens.txt").read_text().split()
    assert tokens[0] == "<blank>" and tokens[-1] == "<sos/eos>" and "<space>" in tokens and "a" in tokens


def test_speechbrain_hparams_build_the_spec_architecture(tts_multi_corpus, tmp_path):
    from hyperpyyaml import load_hyperpyyaml

    spec = tts_spec(tts_multi_corpus)
    rd = render_tts_run(spec, "speechbrain", tmp_path / "run")
    with open(rd / "native/tts_hparams.yaml") as fh:
        hp = load_hyperpyyaml(fh)
    model, m = hp["model"], spec.model
    assert type(model).__module__ == "speechbrain.lobes.models.Tacotron2"
    assert model.embedding.embedding_dim == m.embedding_dim
    assert len(model.encoder.convolutions) == m.encoder_layers
    assert model.encoder.lstm.hidden_size * 2 == m.encoder_dim
    assert model.decoder.attention_layer.query_layer.linear_layer.out_features == m.attention_dim
    assert model.decoder.decoder_rnn.hidden_size == m.decoder_rnn_dim
    assert model.decoder.prenet.layers[0].linear_layer.out_features == m.prenet_dim
    assert len(model.postnet.convolutions) == m.postnet_layers
    assert model.postnet.convolutions[0][0].conv.out_channels == m.postnet_dim
    assert model.n_mel_channels == spec.tts.n_mels
    info = json.loads((rd / "native/tts_info.json").read_text())
    assert info["vocoder_name"] == "griffin-lim (32 iters)" and info["speakers"] == {}
    assert info["mel"]["hop_length"] == 256 and info["mel"]["sample_rate"] == 16000


def test_multi_speaker_renders_speaker_ids_from_the_manifest(tts_multi_corpus, tmp_path):
    spec = tts_spec(tts_multi_corpus, "tts.multi_speaker=true")
    esp = render_tts_run(spec, "espnet", tmp_path / "esp")
    cfg = yaml.safe_load((esp / "native/conf/train_tts.yaml").read_text())
    assert cfg["tts_conf"]["spks"] == 2
    native = json.loads((esp / "native/tts_commands.json").read_text())
    assert native["speakers"] == {"rms": 0, "slt": 1}
    assert "native/tts_data/train/utt2sid,sids,text_int" in native["commands"]["tts_train"]

    sb = render_tts_run(spec, "speechbrain", tmp_path / "sb")
    from hyperpyyaml import load_hyperpyyaml

    with open(sb / "native/tts_hparams.yaml") as fh:
        model = load_hyperpyyaml(fh)["model"]
    assert type(model).__name__ == "SpeakerTacotron2" and model.speaker_embedding.num_embeddings == 2
    assert json.loads((sb / "native/tts_info.json").read_text())["speakers"] == {"rms": 0, "slt": 1}


def test_multi_speaker_rejects_a_test_speaker_unseen_in_training(tts_multi_corpus, tmp_path):
    rows = [json.loads(line) for line in (tts_multi_corpus / "test.jsonl").read_text().splitlines()]
    rows[1]["speaker"] = "nobody"
    bad = tmp_path / "test.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for s in ("train", "valid"):
        (tmp_path / f"{s}.jsonl").write_text((tts_multi_corpus / f"{s}.jsonl").read_text())
    (tmp_path / "audio").symlink_to(tts_multi_corpus / "audio")
    spec = tts_spec(tmp_path, "tts.multi_speaker=true")
    for backend in BACKENDS:
        with pytest.raises(SpxError, match="speaker 'nobody'.*not in the training set"):
            render_tts_run(spec, backend, tmp_path / f"run-{backend}")


@pytest.mark.parametrize("override, match, backends", [
    ("model.embedding_dim=32", "one width for the character embedding and the encoder", ("speechbrain",)),
    ("model.reduction_factor=2", "one frame per step", ("speechbrain",)),
    ("freeze=[encoder] init_from=/no/such/model.pth", "has no mapping for freeze", ("speechbrain",)),
    ("tts.vocoder=/no/such/vocoder", "tts.vocoder", BACKENDS),
    ("init_from=/no/such/model.pth", "init_from", BACKENDS),
    ("training.precision=bf16", "trains in fp32, not bf16", BACKENDS),
    ("training.precision=bf16 resources.accelerator=gpu", "trains in fp32, not bf16", BACKENDS),
])
def test_what_a_backend_cannot_do_is_one_clear_error_before_anything_runs(tts_multi_corpus, tmp_path, override,
                                                                          match, backends):
    spec = tts_spec(tts_multi_corpus, *override.split(" "))
    for backend in backends:
        with pytest.raises(SpxError, match=match):
            render_tts_run(spec, backend, tmp_path / backend)
        assert not (tmp_path / backend / "steps.json").exists()


def test_a_family_a_backend_lacks_is_named_before_anything_runs(tts_multi_corpus, tmp_path):
    spec = tts_spec(tts_multi_corpus).model_copy(deep=True)
    spec = spec.model_validate({**spec.model_dump(), "model": {"family": "vits"}})
    for backend in ("speechbrain", "nemo"):  # ESPnet renders VITS (tests/test_espnet_vits.py)
        with pytest.raises(SpxError, match=f"'{backend}' backend has no '(vits' model|tts' task)"):
            render_tts_run(spec, backend, tmp_path / backend)
        assert not (tmp_path / backend / "steps.json").exists()


def test_demo_corpus_generator_writes_manifests_with_speakers(tts_multi_corpus):
    rows = [json.loads(line) for line in (tts_multi_corpus / "train.jsonl").read_text().splitlines()[1:]]
    assert len(rows) == 12 and {r["speaker"] for r in rows} == {"slt", "rms"}
    wav, sr = sf.read(tts_multi_corpus / rows[0]["audio"])
    assert sr == 16000 and len(wav) / sr == pytest.approx(rows[0]["duration"], abs=0.01)
    tests = [json.loads(line)["text"] for line in (tts_multi_corpus / "test.jsonl").read_text().splitlines()[1:]]
    assert not set(tests) & {r["text"] for r in rows}  # test sentences are unseen in training


# ------------------------------------------------------------------ slow: real training and synthesis
def max_synth_seconds(rd: RunDir, backend: str, text: str, hop_seconds: float) -> float:
    """The decoder's length cap: ESPnet Text2Speech maxlenratio 10 x (characters + eos); SpeechBrain
    max_decoder_steps (3x the longest training utterance)."""
    if backend == "espnet":
        return 10 * (len(text) + 1) * hop_seconds
    return json.loads((rd / "native/tts_info.json").read_text())["max_decoder_steps"] * hop_seconds



@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_tacotron2_trains_synthesizes_and_is_scored(trained_tts, tts_corpus, backend):
    rd = trained_tts(backend)
    curve = read_jsonl(rd / "curve.jsonl")
    assert len(curve) == 12
    assert curve[-1]["train_loss"] < 0.7 * curve[0]["train_loss"], curve
    assert curve[-1]["valid_loss"] < curve[0]["valid_loss"], curve
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["vocoder"] == "griffin-lim (32 iters)" and summary["params"] > 0
    assert Path(summary["best_checkpoint"]).exists()

    synthesized = synthesized_test_set(rd, tts_corpus)
    hyps = [h for h, _ in synthesized]
    spec = load_spec(rd / "spec.yaml")
    hop_seconds = spec.features.hop_length_ms / 1000
    for h, wav in synthesized:
        # plausible length: at least a word, at most the decoder's length cap (a tiny model may not stop early)
        assert 0.2 < h["duration"] <= max_synth_seconds(rd, backend, h["text"], hop_seconds) + 0.1, (h["id"], h["duration"])
        assert h["synth_time"] > 0 and h["text"] and Path(h["ref_audio"]).exists()
    speed = json.loads((rd / "speed.json").read_text())
    assert speed["audio_seconds"] == pytest.approx(sum(h["duration"] for h in hyps))
    assert len(speed["decode_seconds"]) == 1 and speed["decode_seconds"][0] > 0 and speed["batch_size"] == 1
    assert "griffin-lim" in speed["clock"]

    scores = json.loads((rd / "metrics.json").read_text())  # scored by spx run with the bundled whisper judge
    print(backend, {k: v for k, v in scores.items() if isinstance(v, (int, float))})
    assert scores["synthesis_rtf"] > 0 and scores["intelligibility"]["judge"]["kind"] == "faster-whisper"
    assert 0 <= scores["wer"] and scores["mcd"] > 0 and 0 < scores["speaker_similarity"] <= 1
    assert 1 <= scores["dnsmos_ovrl"] <= 5 and 1 <= scores["distillmos"] <= 5
    assert len(scores["per_utt"]) == len(hyps)


@pytest.mark.slow
def test_served_speechbrain_tacotron2_run_synthesizes(trained_tts, tmp_path):
    """`spx serve` on the shared SpeechBrain Tacotron2 run (tests/test_deploy_tasks.py serves the ESPnet one).
    SpeechBrain's prenet dropout stays on at inference: the length moves between runs, not by 2x."""
    from test_deploy import assert_served_synthesizes

    rd = trained_tts("speechbrain").path
    assert_served_synthesizes(rd, rd, tmp_path / "server.log", same_length=False)


@pytest.mark.slow
def test_bench_report_compares_the_tts_backends(trained_tts):
    """The report has a TTS row per backend (MOS proxies, intelligibility, MCD, RTF), paired MOS differences and
    an audio gallery with each backend's clip beside the reference."""
    from conftest import run_spx

    for backend in BACKENDS:
        trained_tts(backend)
    proc = run_spx("bench", "--report-only", "--out", trained_tts.out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((trained_tts.out / "results.json").read_text())
    rows = {r["backend"]: r for r in res["rows"]}
    assert set(rows) == set(BACKENDS)
    for backend, row in rows.items():
        assert row["task"] == "tts" and row["vocoder"] == "griffin-lim (32 iters)", row
        for key in ("dnsmos_ovrl", "distillmos", "wer", "mcd", "speaker_similarity"):
            assert row["tts"][key]["ci"][0] <= row["tts"][key]["value"] <= row["tts"][key]["ci"][1], (backend, key)
        assert row["synthesis_rtf"] > 0
    metrics = {c["metric"] for c in res["tts_comparisons"]}
    assert {"dnsmos_ovrl", "distillmos", "mcd"} <= metrics
    md = (trained_tts.out / "report.md").read_text()
    assert "DNSMOS OVRL" in md and "espnet" in md and "speechbrain" in md
    html = (trained_tts.out / "report.html").read_text()
    assert html.count("<audio") >= 3 and "data:audio/" in html


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_fine_tune_from_a_trained_tacotron2(trained_tts, tts_corpus, tmp_path, backend):
    """init_from the trained run: the first fine-tuning epoch starts from the trained model's loss, not scratch."""
    base = trained_tts(backend)
    base_curve = read_jsonl(base / "curve.jsonl")
    spec = tts_spec(tts_corpus, *TRAIN_OVERRIDES, "training.epochs=1", f"init_from={base.path}")
    rd = render_tts_run(spec, backend, tmp_path / backend)
    execute(rd)
    ft = read_jsonl(rd / "curve.jsonl")
    assert len(ft) == 1
    assert ft[0]["train_loss"] < 0.7 * base_curve[0]["train_loss"], (ft, base_curve[0])
    assert json.loads((rd / "train_summary.json").read_text())["init_from"]
