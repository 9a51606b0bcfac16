"""Issue 13's audio contract end to end, per backend: `spx run` trains on one mix of audio forms (8/48 kHz WAV, MP3,
stereo, Kaldi segments, piped sox wav.scp of FLAC and of NIST SPHERE), validates on FLAC and decodes a test set in the others (22.05 kHz WAV,
Opus, segments of a piped recording, piped ffmpeg wav.scp) with no failure. Not a WER bar: the model is the smallest
the spec allows, trained for one epoch (2 steps), so the run costs little more than the backend's imports."""
from __future__ import annotations

import json

import pytest

from audio_forms import TEST_FORMS, TRAIN_FORMS
from conftest import RECIPE, corpus_args, read_jsonl, run_spx
from shared_artifacts import shared_dir

TINY = ["model.encoder.layers=1", "model.encoder.d_model=16", "model.encoder.heads=2", "model.encoder.ff_expansion=1",
        "model.encoder.conv_kernel=3", "training.epochs=1", "training.scheduler.warmup_steps=0",
        "augmentation.speed_perturb=null", "augmentation.spec_augment=null", "eval.speed_repeats=1",
        "eval.warmup_batches=0", "resources.threads=1"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["nemo", "speechbrain", "espnet"])
def test_trains_and_decodes_every_audio_form(backend, audio_forms, tmp_path_factory):
    rd = tmp_path_factory.mktemp(f"audio_forms_{backend}") / "run"
    # one cache for the three runs, as a bench shares one for its cells
    cache = shared_dir(tmp_path_factory, "audio_forms_cache")
    run_spx("run", "--backend", backend, RECIPE, "--run-dir", rd, *corpus_args(audio_forms), *TINY,
            env={"SPX_AUDIO_CACHE": str(cache)}, check=True)
    status = json.loads((rd / "status.json").read_text())
    assert status["state"] == "finished", status
    index = json.loads((audio_forms / "index.json").read_text())
    test_ids = [u["id"] for u in read_jsonl(audio_forms / "test.jsonl")[1:]]
    assert {index[i]["form"] for i in test_ids} == set(TEST_FORMS)
    hyps = read_jsonl(rd / "hyps.jsonl")
    assert sorted(h["id"] for h in hyps) == sorted(test_ids), "a test row has no hypothesis"
    assert json.loads((rd / "metrics.json").read_text())["utterances"] == len(test_ids)
    # what the run dir says it did: every train/test row materialized (no form of theirs is read as is), FLAC as is
    audio = json.loads((rd / "manifests" / "audio.json").read_text())["manifests"]
    train_ids = [u["id"] for u in read_jsonl(audio_forms / "train.jsonl")[1:]]
    assert {index[i]["form"] for i in train_ids} == set(TRAIN_FORMS)
    assert (audio["train.jsonl"]["as_is"], audio["train.jsonl"]["materialized"]) == (0, len(train_ids))
    assert (audio["test.jsonl"]["as_is"], audio["test.jsonl"]["materialized"]) == (0, len(test_ids))
    assert audio["valid.jsonl"]["materialized"] == 0
    assert set(audio["train.jsonl"]["reasons"]) == {"pipe", "codec", "rate", "channels", "segment"}
