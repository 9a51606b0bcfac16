"""A HiFi-GAN vocoder trained by spx as its own job on NeMo (family hifigan): rendering (fast) and a real
train -> copy-synthesize -> score run whose run dir then serves as a FastPitch job's tts.vocoder (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from conftest import REPO, corpus_args, read_jsonl
from spx.errors import SpxError
from spx.rundir import RunDir
from spx.spec import load_spec

RECIPE = REPO / "recipes" / "hifigan.yaml"
FASTPITCH = REPO / "recipes" / "fastpitch.yaml"
# CI scale: NeMo's full-size discriminators (~70M parameters) dominate the step; 0.25 s crops of 4 utterances of the
# 12-utterance corpus, 2 epochs of 3 steps (epochs, not max_steps: Lightning validates at the end of whole epochs only)
TRAIN_OVERRIDES = ["training.epochs=2", "training.batch_size=4", "model.segment_seconds=0.25",
                   "eval.speed_repeats=1", "eval.warmup_batches=1"]



def render(recipe: Path, corpus: Path, run_dir: Path, *overrides: str) -> RunDir:
    from spx.runner import render_run

    return render_run(load_spec(recipe, [*corpus_args(corpus), *overrides]), "nemo", run_dir, force=True)



def test_hifigan_config_carries_the_spec_numbers(tts_multi_corpus, tmp_path):
    rd = render(RECIPE, tts_multi_corpus, tmp_path / "voc", "model.upsample_initial_channel=32",
                "training.max_steps=50")
    cfg = yaml.safe_load((rd / "native/tts_config.yaml").read_text())
    gen, pre, model = cfg["model"]["generator"], cfg["model"]["preprocessor"], cfg["model"]
    assert gen["_target_"].endswith("hifigan_modules.Generator")
    assert gen["upsample_rates"] == [8, 8, 4] and gen["upsample_kernel_sizes"] == [16, 16, 8]
    assert gen["upsample_initial_channel"] == 32 and gen["resblock"] == 2 and gen["initial_input_size"] == 80
    # the acoustic model's mel: 16 kHz, 80 mels, 1024-point FFT, 64 ms window, 16 ms hop
    assert (pre["sample_rate"], pre["nfilt"], pre["n_fft"], pre["n_window_size"], pre["n_window_stride"]) == \
        (16000, 80, 1024, 1024, 256)
    assert pre["log_zero_guard_type"] == "add" and pre["mag_power"] == 1.0 and pre["exact_pad"] is True
    seg = model["train_ds"]["dataset"]["n_segments"]
    assert seg == 31 * 256  # 0.5 s = 8000 samples, rounded down to whole 256-sample hops
    # both optimizers step per batch: Lightning's max_steps is twice the spec's, the schedule counts batches
    assert cfg["trainer"]["max_steps"] == 100 and model["max_steps"] == 50
    assert cfg["trainer"]["gradient_clip_val"] is None and model["optim"]["_target_"] == "torch.optim.AdamW"
    rows = read_jsonl(rd / "native/vocoder_train.json")
    assert rows and all(r["duration"] >= 0.5 for r in rows) and Path(rows[0]["audio_filepath"]).is_absolute()
    steps = json.loads((rd / "steps.json").read_text())
    assert [s["name"] for s in steps] == ["tts_train", "tts_synth"]


@pytest.mark.parametrize("override, where", [
    ("model.upsample_rates=[8,8,2]", "model.upsample_rates"),       # 128 != the 256-sample hop
    ("training.grad_clip=1.0", "training.grad_clip"),              # manual optimization: no Trainer clipping
    ("training.grad_accumulation=2", "training.grad_accumulation"),
    ("tts.vocoder=/tmp/x.nemo", "tts.vocoder"),                    # a vocoder job has no vocoder
    ("model.segment_seconds=0.01", "model.segment_seconds"),
    ("resources.devices=2", "resources.devices"),
])
def test_what_the_nemo_vocoder_cannot_do_is_one_clear_error_before_anything_runs(tts_multi_corpus, tmp_path,
                                                                                 override, where):
    with pytest.raises(SpxError) as err:
        render(RECIPE, tts_multi_corpus, tmp_path / "voc", override)
    assert err.value.where == where
    assert not (tmp_path / "voc" / "native").exists()


def test_a_vocoder_dir_that_is_not_a_finished_hifigan_run_is_refused(tts_multi_corpus, tmp_path):
    (tmp_path / "notavocoder").mkdir()
    with pytest.raises(SpxError, match="not a finished spx nemo hifigan run") as err:
        render(FASTPITCH, tts_multi_corpus, tmp_path / "fp", f"tts.vocoder={tmp_path / 'notavocoder'}")
    assert err.value.where == "tts.vocoder"


def test_hifigan_is_not_on_espnet_and_says_so(tts_multi_corpus, tmp_path):
    from spx.runner import render_run

    spec = load_spec(RECIPE, corpus_args(tts_multi_corpus))  # speechbrain runs it too: tests/test_speechbrain_vocoder.py
    with pytest.raises(SpxError, match="hifigan"):
        render_run(spec, "espnet", tmp_path / "espnet", force=True)


def test_a_vocoder_job_is_neither_exported_nor_served_and_says_why(tts_multi_corpus):
    from spx.adapters import get_adapter

    spec = load_spec(RECIPE, corpus_args(tts_multi_corpus))
    adapter = get_adapter("nemo")
    with pytest.raises(SpxError, match="cannot export nemo hifigan models: a vocoder job has no text to speak.*"
                                       "tts.vocoder names this run"):
        adapter.export_module(spec)
    with pytest.raises(SpxError, match="no model loader for inference"):
        adapter.inference_module(spec)
    fastpitch = load_spec(FASTPITCH, corpus_args(tts_multi_corpus))
    assert adapter.export_module(fastpitch) == "spx.adapters.nemo.steps.tts_export"
    assert adapter.inference_module(fastpitch) == "spx.adapters.nemo.steps.tts_synth"


# ------------------------------------------------------------------ slow: real training and copy synthesis
@pytest.mark.slow
def test_hifigan_trains_copy_synthesizes_and_serves_as_fastpitch_vocoder(tts_multi_corpus, tmp_path):
    from spx.launchers.local import run_here

    corpus = tts_multi_corpus  # a vocoder copies any voice: the small 2-voice corpus

    rd = render(RECIPE, corpus, tmp_path / "hifigan-nemo", *TRAIN_OVERRIDES)
    run_here(rd, quiet=True)  # tts_train, tts_synth, then scoring as `spx run` does (metrics.json)

    curve = read_jsonl(rd / "curve.jsonl")
    assert [r["epoch"] for r in curve] == [1, 2] and curve[-1]["step"] == 6, curve
    # the mel L1 (x45 in the generator loss) falls fast from a random generator's
    assert curve[-1]["train_mel_l1"] < curve[0]["train_mel_l1"], curve
    assert all(np.isfinite(r["valid_loss"]) for r in curve)
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["model_class"] == "HifiGanModel" and summary["steps"] == 6
    assert Path(summary["exported_model"]).is_file()

    hyps = read_jsonl(rd / "hyps.jsonl")
    refs = {r["id"]: r for r in read_jsonl(corpus / "test.jsonl")[1:]}
    assert sorted(h["id"] for h in hyps) == sorted(refs)
    for h in hyps:
        wav, sr = sf.read(h["audio"])
        assert sr == 16000 and np.all(np.isfinite(wav))
        # copy synthesis: one hop of audio per mel frame of the recording
        assert abs(h["duration"] - refs[h["id"]]["duration"]) <= 2 * 256 / 16000, (h["id"], h["duration"])
    speed = json.loads((rd / "speed.json").read_text())
    assert speed["clock"].startswith("recording -> waveform") and speed["vocoder"].startswith("hifigan")
    scores = json.loads((rd / "metrics.json").read_text())
    assert 1 <= scores["dnsmos_ovrl"] <= 5 and scores["mcd"] > 0 and scores["synthesis_rtf"] > 0
    assert len(scores["per_utt"]) == len(hyps)

    # the run dir is what a FastPitch job's tts.vocoder names
    fp = render(FASTPITCH, corpus, tmp_path / "fastpitch-nemo", f"tts.vocoder={rd}")
    info = json.loads((fp / "native/tts_info.json").read_text())
    assert info["vocoder"] == str(Path(summary["exported_model"]).resolve())
