"""TTS on NeMo: FastPitch with its internal aligner (family fastspeech2). Rendering (fast) and a real
train -> synthesize -> score run (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, read_jsonl, synthesized_test_set
from shared_artifacts import build_once, shared_dir
from spx.errors import SpxError
from spx.rundir import RunDir
from spx.spec import load_spec

RECIPE = REPO / "recipes" / "fastpitch.yaml"
# CI scale: ~1.5 min of pitch extraction + NeMo imports, ~1.5 min of training (6 epochs x 13 steps) on 2 CPU cores
TRAIN_OVERRIDES = ["training.epochs=6", "training.batch_size=8", "eval.speed_repeats=1", "eval.warmup_batches=1",
                   "resources.threads=1"]


def fastpitch_spec(corpus: Path, *overrides: str):
    data = [f"data.train={corpus / 'train.jsonl'}", f"data.valid={corpus / 'valid.jsonl'}",
            f"data.test={corpus / 'test.jsonl'}"]
    return load_spec(RECIPE, [*data, *overrides])


def render(spec, run_dir: Path) -> RunDir:
    from spx.runner import render_run

    return render_run(spec, "nemo", run_dir, force=True)


# the tests that use the shared FastPitch run: one xdist worker, in order (the other worker would wait on its lock)
SHARED_RUN_GROUP = pytest.mark.xdist_group("nemo_fastpitch")


@pytest.fixture(scope="session")
def nemo_fastpitch_run(tts_corpus, tmp_path_factory) -> Path:
    """The tiny FastPitch trained on the flite corpus, synthesized and scored (once per test run: the training test
    checks it, tests/test_nemo_tts_deploy.py serves and exports it)."""
    from spx.launchers.local import run_here

    def build(folder: Path) -> None:
        rd = render(fastpitch_spec(tts_corpus, *TRAIN_OVERRIDES), folder / "fastpitch-nemo")
        run_here(rd, quiet=True)  # tts_prepare, tts_train, tts_synth, then scoring as `spx run` does (metrics.json)

    return build_once(shared_dir(tmp_path_factory, "nemo_fastpitch"), build) / "fastpitch-nemo"


# ------------------------------------------------------------------ fast: rendering
def test_fastpitch_config_carries_the_spec_architecture(tts_multi_corpus, tmp_path):
    spec = fastpitch_spec(tts_multi_corpus, "model.d_model=48", "model.encoder_layers=3", "model.decoder_layers=1",
                          "model.heads=4")
    rd = render(spec, tmp_path / "run")
    cfg = yaml.safe_load((rd / "native/tts_config.yaml").read_text())
    m = cfg["model"]
    assert m["learn_alignment"] is True and m["symbols_embedding_dim"] == 48
    enc, dec = m["input_fft"], m["output_fft"]
    assert enc["_target_"].endswith("FFTransformerEncoder") and dec["_target_"].endswith("FFTransformerDecoder")
    assert (enc["n_layer"], enc["n_head"], enc["d_model"], enc["d_head"], enc["d_embed"]) == (3, 4, 48, 12, 48)
    assert (dec["n_layer"], dec["n_head"], dec["d_model"], dec["d_head"]) == (1, 4, 48, 12)
    assert m["alignment_module"]["n_text_channels"] == 48 and m["alignment_module"]["n_mel_channels"] == 80
    assert m["duration_predictor"]["input_size"] == 48 and m["pitch_predictor"]["input_size"] == 48
    # characters through NeMo's own tokenizer: no g2p, no dictionary download
    assert m["text_tokenizer"]["_target_"].endswith("tts_tokenizers.EnglishCharsTokenizer")
    assert "g2p" not in m["text_tokenizer"] and "text_normalizer" not in m
    assert (m["sample_rate"], m["n_mel_channels"], m["n_window_size"], m["n_window_stride"], m["n_fft"]) == (
        16000, 80, 1024, 256, 1024)
    ds = m["train_ds"]["dataset"]
    assert ds["_target_"] == "nemo.collections.tts.data.dataset.TTSDataset"
    assert ds["sup_data_types"] == ["align_prior_matrix", "pitch"] and ds["pitch_norm"] is True
    assert Path(ds["sup_data_path"]) == rd.path / "native" / "sup_data"
    assert m["pitch_mean"] is None  # computed from the training audio by the tts_prepare step
    assert m["train_ds"]["dataloader_params"]["batch_size"] == 16
    assert m["optim"]["name"] == "adamw" and m["optim"]["sched"]["name"] == "CosineAnnealing"
    assert cfg["trainer"]["max_epochs"] == 40 and cfg["trainer"]["precision"] == 32
    assert [s["name"] for s in json.loads((rd / "steps.json").read_text())] == ["tts_prepare", "tts_train", "tts_synth"]
    rows = read_jsonl(rd / "native/tts_train.json")
    assert all(Path(r["audio_filepath"]).is_absolute() and r["text"] == r["normalized_text"] for r in rows)
    info = json.loads((rd / "native/tts_info.json").read_text())
    assert info["vocoder_name"] == "griffin-lim (32 iters)" and info["mel"]["hop_length"] == 256


@pytest.mark.parametrize("override, match", [
    ("tts.multi_speaker=true", "tts.multi_speaker"),
    ("features.hop_length_ms=10.0", "hop_length_ms = win_length_ms / 4"),
    ("tts.vocoder=/no/such/hifigan.nemo", "tts.vocoder"),
    ("init_from=/no/such/fastpitch.nemo", "init_from"),
    ("training.precision=bf16", "fp32"),
    ("training.scheduler.name=noam", "not mapped for TTS on nemo"),
])
def test_what_nemo_fastpitch_cannot_do_is_one_clear_error_before_anything_runs(tts_multi_corpus, tmp_path, override,
                                                                               match):
    spec = fastpitch_spec(tts_multi_corpus, override)
    with pytest.raises(SpxError, match=match):
        render(spec, tmp_path / "run")
    assert not (tmp_path / "run" / "steps.json").exists()


def test_nemo_has_no_tacotron2(tts_multi_corpus, tmp_path):
    spec = load_spec(REPO / "recipes" / "tacotron2.yaml", [f"data.train={tts_multi_corpus / 'train.jsonl'}",
                                                          f"data.valid={tts_multi_corpus / 'valid.jsonl'}",
                                                          f"data.test={tts_multi_corpus / 'test.jsonl'}"])
    with pytest.raises(SpxError, match="'nemo' backend has no 'tacotron2' model"):
        render(spec, tmp_path / "run")
    assert not (tmp_path / "run" / "steps.json").exists()


# ------------------------------------------------------------------ slow: real training and synthesis
@pytest.mark.slow
@SHARED_RUN_GROUP
def test_fastpitch_trains_synthesizes_and_is_scored(nemo_fastpitch_run, tts_corpus):
    rd = nemo_fastpitch_run
    stats = json.loads((rd / "native/pitch_stats.json").read_text())
    assert 80 < stats["pitch_mean"] < 400 and stats["pitch_std"] > 0  # flite 'slt' is a female voice
    curve = read_jsonl(rd / "curve.jsonl")
    assert len(curve) == 6
    assert curve[-1]["train_loss"] < 0.8 * curve[0]["train_loss"], curve
    assert curve[-1]["valid_loss"] < curve[0]["valid_loss"], curve
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["vocoder"] == "griffin-lim (32 iters)" and summary["params"] > 0
    assert Path(summary["best_checkpoint"]).exists() and Path(summary["exported_model"]).is_file()
    assert summary["model_class"] == "FastPitchModel"

    synthesized = synthesized_test_set(rd, tts_corpus)
    hyps = [h for h, _ in synthesized]
    for h, wav in synthesized:
        # plausible length: FastPitch's predicted durations give at least a word, at most max_token_duration
        # (75 frames) per input character (+ NeMo's padding spaces)
        assert 0.2 < h["duration"] <= 75 * (len(h["text"]) + 2) * 0.016, (h["id"], h["duration"])
        assert h["synth_time"] > 0 and h["text"] and Path(h["ref_audio"]).exists()
    speed = json.loads((rd / "speed.json").read_text())
    assert speed["audio_seconds"] == pytest.approx(sum(h["duration"] for h in hyps))
    assert "griffin-lim" in speed["clock"] and speed["batch_size"] == 1

    scores = json.loads((rd / "metrics.json").read_text())
    print("nemo fastpitch", {k: v for k, v in scores.items() if isinstance(v, (int, float))})
    assert 1 <= scores["dnsmos_ovrl"] <= 5 and scores["mcd"] > 0 and scores["synthesis_rtf"] > 0
    assert len(scores["per_utt"]) == len(hyps)
