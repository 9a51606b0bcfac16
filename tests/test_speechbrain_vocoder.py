"""A HiFi-GAN vocoder trained by spx as its own job on SpeechBrain (family hifigan, recipes/hifigan.yaml): rendering
(fast) and a real train -> copy-synthesize -> score run whose run dir then serves as a SpeechBrain Tacotron2 /
FastSpeech2 job's tts.vocoder (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, corpus_args, read_jsonl
from spx.errors import SpxError
from spx.rundir import RunDir
from spx.spec import load_spec

RECIPE = REPO / "recipes" / "hifigan.yaml"
TACOTRON2 = REPO / "recipes" / "tacotron2.yaml"
FASTPITCH = REPO / "recipes" / "fastpitch.yaml"
HOP = 256  # the recipes' 16 ms hop at 16 kHz
# CI scale: SpeechBrain's fixed full-size discriminators (70.7M parameters) dominate a step (~9 s for 2 crops on one
# loaded CPU thread), so the shortest crop they take (7 hops, 0.112 s), batches of 2 from 4 training utterances:
# 4 epochs of 2 steps; a 16-channel generator
TRAIN_ROWS, VALID_ROWS = 4, 2
TRAIN_OVERRIDES = ["training.epochs=4", "training.batch_size=2", "model.segment_seconds=0.125",
                   "model.upsample_initial_channel=16", "training.scheduler.warmup_steps=1", "resources.threads=1",
                   "eval.speed_repeats=1", "eval.warmup_batches=1"]



def render(recipe: Path, corpus: Path, run_dir: Path, *overrides: str) -> RunDir:
    from spx.runner import render_run

    return render_run(load_spec(recipe, [*corpus_args(corpus), *overrides]), "speechbrain", run_dir, force=True)



def small_corpus(corpus: Path, out: Path) -> Path:
    """The first rows of the corpus' train/valid manifests (all of test), audio paths made absolute."""
    out.mkdir()
    for split, n in (("train", TRAIN_ROWS), ("valid", VALID_ROWS), ("test", None)):
        header, *rows = read_jsonl(corpus / f"{split}.jsonl")
        rows = [{**r, "audio": str((corpus / r["audio"]).resolve())} for r in rows[:n]]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [header, *rows]))
    return out


def load_yaml(path: Path) -> dict:
    from hyperpyyaml import load_hyperpyyaml

    with open(path) as fh:
        return load_hyperpyyaml(fh)


# ------------------------------------------------------------------ fast: rendering
def test_speechbrain_hifigan_recipe_carries_the_spec_numbers(tts_multi_corpus, tmp_path):
    rd = render(RECIPE, tts_multi_corpus, tmp_path / "voc", "model.upsample_initial_channel=32",
                "training.max_steps=50", "training.grad_clip=1.0")
    assert [s["name"] for s in json.loads((rd / "steps.json").read_text())] == ["tts_train", "tts_synth"]
    hp = load_yaml(rd / "native/tts_hparams.yaml")
    gen = hp["generator"]
    assert gen.conv_pre.conv.in_channels == 80 and gen.conv_pre.conv.out_channels == 32
    assert [up.conv.stride[0] for up in gen.ups] == [8, 8, 4]           # the product is the 256-sample hop
    assert [up.conv.kernel_size[0] for up in gen.ups] == [16, 16, 8]    # kernels 2x each rate
    assert type(gen.resblocks[0]).__name__ == "ResBlock2" and len(gen.resblocks) == 3 * 3  # V3 blocks, kernels 3/5/7
    assert type(hp["discriminator"]).__name__ == "HifiganDiscriminator"
    assert hp["segment_size"] == 31 * HOP  # 0.5 s = 8000 samples, rounded down to whole hops
    # max_steps overrides epochs: 12 utterances of batch 8 = 2 steps an epoch, 25 epochs, the Brain stops at step 50
    assert hp["optimizer_step_limit"] == 50 and hp["epochs"] == 25 and hp["max_grad_norm"] == 1.0
    assert hp["lr_annealing_generator"].total_steps == 50 and hp["lr_annealing_discriminator"].warmup_steps == 20
    assert hp["generator_loss"].l1_spec_loss_weight == 45 and hp["generator_loss"].feat_match_loss_weight == 10
    opt = hp["opt_class_generator"](gen.parameters())
    assert type(opt).__name__ == "AdamW" and opt.defaults["betas"] == (0.8, 0.99)
    info = json.loads((rd / "native/tts_info.json").read_text())
    assert info["model_class"] == "HifiganGenerator" and info["segment_samples"] == 31 * HOP
    assert info["mel"] == {"sample_rate": 16000, "n_mels": 80, "n_fft": 1024, "win_length": 1024, "hop_length": HOP,
                           "f_min": 0.0, "f_max": 8000.0}


def test_the_vocoder_hears_exactly_the_mel_speechbrain_tacotron2_and_fastspeech2_make(tts_multi_corpus, tmp_path):
    """The export folder's mel_spectrogram (what the vocoder trains on and copy-synthesizes from) against the acoustic
    models' own mel functions on the same audio."""
    import torch

    from spx.adapters.speechbrain.steps.tts_model import compute_mel
    from spx.adapters.speechbrain.steps.tts_train import load_hparams

    rd = render(RECIPE, tts_multi_corpus, tmp_path / "voc")
    export = load_yaml(rd / "native/export_hyperparams.yaml")
    assert export["generator"].conv_pre.in_channels == 80 and export["hop_length"] == HOP
    wav = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    ours = export["mel_spectrogram"](audio=torch.from_numpy(wav))
    info = json.loads((rd / "native/tts_info.json").read_text())
    assert torch.allclose(ours, compute_mel(wav, info["mel"]))  # SpeechBrain Tacotron2's
    fastspeech2 = render(FASTPITCH, tts_multi_corpus, tmp_path / "fs2")
    fs2_mel, _energy = load_hparams(fastspeech2)["mel_spectrogram"](audio=torch.from_numpy(wav))
    assert torch.allclose(ours, fs2_mel)


@pytest.mark.parametrize("override, where", [
    ("model.upsample_rates=[8,8,2]", "model.upsample_rates"),      # 128 != the 256-sample hop
    ("training.grad_accumulation=2", "training.grad_accumulation"),  # one D and one G update per batch
    ("tts.vocoder=/tmp/x", "tts.vocoder"),                          # a vocoder job has no vocoder
    ("model.segment_seconds=0.01", "model.segment_seconds"),        # under 4 hops
    ("model.segment_seconds=0.1", "model.segment_seconds"),         # 6 hops: too short for the period-11 discriminator
    ("training.scheduler.name=noam", "training.scheduler.name"),
    ("training.precision=bf16", "training.precision"),
    ("resources.devices=2", "resources.devices"),
    ("init_from=/no/such/generator.ckpt", "init_from"),
])
def test_what_the_speechbrain_vocoder_cannot_do_is_one_clear_error_before_anything_runs(tts_multi_corpus, tmp_path,
                                                                                        override, where):
    with pytest.raises(SpxError) as err:
        render(RECIPE, tts_multi_corpus, tmp_path / "voc", override)
    assert err.value.where == where and err.value.hint
    assert not (tmp_path / "voc" / "native").exists()


def test_a_vocoder_run_dir_that_is_not_a_finished_speechbrain_hifigan_is_refused(tts_multi_corpus, tmp_path):
    unfinished = render(RECIPE, tts_multi_corpus, tmp_path / "voc")  # rendered, never trained
    for recipe in (TACOTRON2, FASTPITCH):
        with pytest.raises(SpxError, match="not a finished spx speechbrain hifigan run") as err:
            render(recipe, tts_multi_corpus, tmp_path / "tts", f"tts.vocoder={unfinished.path}")
        assert err.value.where == "tts.vocoder"
        assert not (tmp_path / "tts" / "native").exists()


def test_an_spx_vocoder_trained_on_other_mels_is_refused_at_render(tts_multi_corpus, tmp_path):
    from spx.adapters.speechbrain.helpers import VOCODER_EXPORT_INFO as EXPORT_INFO

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "hyperparams.yaml").write_text("generator: null\n")
    mel = {"sample_rate": 22050, "n_mels": 80, "n_fft": 1024, "win_length": 1024, "hop_length": 256, "f_min": 0.0,
           "f_max": 11025.0}
    (folder / EXPORT_INFO).write_text(json.dumps({"model_class": "HifiganGenerator", "mel": mel}))
    with pytest.raises(SpxError, match="sample_rate 22050 vs 16000") as err:
        render(TACOTRON2, tts_multi_corpus, tmp_path / "t2", f"tts.vocoder={folder}")
    assert err.value.where == "tts.vocoder"


# ------------------------------------------------------------------ slow: real training and copy synthesis
@pytest.mark.slow
def test_speechbrain_hifigan_trains_copy_synthesizes_and_serves_as_acoustic_models_vocoder(tts_multi_corpus, tmp_path):
    from spx.launchers.local import run_here

    corpus = small_corpus(tts_multi_corpus, tmp_path / "corpus")
    rd = render(RECIPE, corpus, tmp_path / "hifigan-speechbrain", *TRAIN_OVERRIDES)
    run_here(rd, quiet=True)  # tts_train, tts_synth, then scoring as `spx run` does (metrics.json)

    curve = read_jsonl(rd / "curve.jsonl")
    assert [r["epoch"] for r in curve] == [1, 2, 3, 4] and curve[-1]["step"] == 8, curve
    # the mel L1 (x45 in the generator loss) falls fast from a random generator's: on the random training crops and on
    # the fixed valid crops (the valid loss)
    assert curve[-1]["train_mel_l1"] < curve[0]["train_mel_l1"], curve
    assert curve[-1]["valid_loss"] < curve[0]["valid_loss"], curve
    assert all(np.isfinite([r["train_loss"], r["train_discriminator_loss"], r["valid_loss"]]).all() for r in curve)
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["model_class"] == "HifiganGenerator" and summary["steps"] == 8
    export = Path(summary["exported_model"])
    assert (export / "hyperparams.yaml").is_file() and (export / "generator.ckpt").is_file()

    hyps = read_jsonl(rd / "hyps.jsonl")
    refs = {r["id"]: r for r in read_jsonl(corpus / "test.jsonl")[1:]}
    assert sorted(h["id"] for h in hyps) == sorted(refs)
    for h in hyps:
        wav, sr = sf.read(h["audio"])
        assert sr == 16000 and np.all(np.isfinite(wav)) and np.abs(wav).max() > 0
        # copy synthesis: one hop of audio per mel frame of the recording
        assert abs(h["duration"] - refs[h["id"]]["duration"]) <= 2 * HOP / 16000, (h["id"], h["duration"])
    speed = json.loads((rd / "speed.json").read_text())
    assert speed["clock"].startswith("recording -> waveform") and speed["vocoder"].startswith("hifigan")
    scores = json.loads((rd / "metrics.json").read_text())
    print("speechbrain hifigan", {k: v for k, v in scores.items() if isinstance(v, (int, float))})
    assert 1 <= scores["dnsmos_ovrl"] <= 5 and scores["mcd"] > 0 and scores["synthesis_rtf"] > 0
    assert len(scores["per_utt"]) == len(hyps)

    # the run dir is what a SpeechBrain Tacotron2 / FastSpeech2 job's tts.vocoder names
    for recipe in (TACOTRON2, FASTPITCH):
        acoustic = render(recipe, corpus, tmp_path / recipe.stem, f"tts.vocoder={rd}")
        info = json.loads((acoustic / "native/tts_info.json").read_text())
        assert info["vocoder"] == str(export.resolve()) and info["vocoder_name"] == info["vocoder"]
