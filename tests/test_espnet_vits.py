"""VITS on ESPnet (gan_tts): rendering (fast) and a real tiny train -> synthesize -> score run (slow)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import REPO, read_jsonl, synthesized_test_set
from shared_artifacts import build_once, shared_dir
from spx.errors import SpxError
from spx.rundir import RunDir
from spx.spec import load_spec

RECIPE = REPO / "recipes" / "vits.yaml"
# CI scale: 2 epochs of 6 batches of 16 (~1.5 CPU-minutes of training on one thread): the loss falls, the GAN
# learns the coarse spectrum, not words. One thread: a second OpenMP thread only contends on 2 shared cores.
EPOCHS = 2
TRAIN_OVERRIDES = ["training.max_steps=12", "model.segment_size=8", "eval.speed_repeats=1", "eval.warmup_batches=1",
                   "resources.threads=1"]


def vits_spec(corpus: Path, *overrides: str):
    data = [f"data.train={corpus / 'train.jsonl'}", f"data.valid={corpus / 'valid.jsonl'}",
            f"data.test={corpus / 'test.jsonl'}"]
    return load_spec(RECIPE, [*data, *overrides])


def render(spec, run_dir: Path) -> RunDir:
    from spx.runner import render_run

    return render_run(spec, "espnet", run_dir, force=True)



# ------------------------------------------------------------------ fast: rendering
def test_vits_config_carries_the_spec_numbers(tts_multi_corpus, tmp_path):
    spec = vits_spec(tts_multi_corpus, "model.hidden_channels=48", "model.text_encoder_layers=3",
                     "model.segment_size=24", "model.decoder_channels=96", "model.decoder_resblock_kernel_sizes=[3,7]",
                     "training.optimizer.lr=0.0005")
    rd = render(spec, tmp_path / "run")
    cfg = yaml.safe_load((rd / "native/conf/train_tts.yaml").read_text())
    assert cfg["tts"] == "vits" and cfg["feats_extract"] == "linear_spectrogram"
    assert cfg["token_type"] == "char" and cfg["g2p"] is None and cfg["cleaner"] is None
    assert cfg["feats_extract_conf"] == {"n_fft": 1024, "hop_length": 256, "win_length": 1024}
    g = cfg["tts_conf"]["generator_params"]
    assert (g["hidden_channels"], g["text_encoder_blocks"], g["segment_size"], g["decoder_channels"]) == (48, 3, 24, 96)
    assert g["decoder_upsample_scales"] == [8, 8, 4] and g["decoder_upsample_kernel_sizes"] == [16, 16, 8]
    assert g["decoder_resblock_kernel_sizes"] == [3, 7] and g["decoder_resblock_dilations"] == [[1, 3, 5]] * 2
    assert math.prod(g["decoder_upsample_scales"]) == cfg["feats_extract_conf"]["hop_length"]
    assert g["spks"] == -1 and g["global_channels"] == -1
    d = cfg["tts_conf"]["discriminator_params"]
    assert d["scale_discriminator_params"]["channels"] == 24 and d["period_discriminator_params"]["channels"] == 6
    mel = cfg["tts_conf"]["mel_loss_params"]
    assert (mel["fs"], mel["n_mels"], mel["hop_length"], mel["n_fft"]) == (16000, 80, 256, 1024)
    assert cfg["tts_conf"]["sampling_rate"] == 16000
    # the generator and the discriminator get the spec's optimizer and scheduler
    assert cfg["optim"] == cfg["optim2"] == "adamw" and cfg["optim_conf"] == cfg["optim2_conf"]
    assert cfg["optim_conf"]["lr"] == 0.0005 and cfg["optim_conf"]["betas"] == [0.8, 0.99]
    assert cfg["scheduler"] == cfg["scheduler2"] and cfg["scheduler_conf"] == cfg["scheduler2_conf"]
    assert cfg["max_epoch"] == 10 and cfg["batch_size"] == 16

    native = json.loads((rd / "native/tts_commands.json").read_text())
    cmds = native["commands"]
    assert cmds["tts_train"][0] == cmds["collect_stats"][0] == "espnet2.bin.gan_tts_train"
    assert cmds["tts_train"][cmds["tts_train"].index("--normalize") + 1] == "none"  # the raw linear spectrogram
    assert "--resume" in cmds["tts_train"] and "--init_param" not in cmds["tts_train"]
    assert native["vocoder_name"] == "vits (end-to-end)" and native["synth_model"] == "checkpoints/latest.pth"
    assert not (rd / "native/conf/griffin_lim.yaml").exists()
    assert [s["name"] for s in json.loads((rd / "steps.json").read_text())] == ["tts_train", "tts_synth"]  # tts_train prepares first
    assert "gan_tts_train" in (rd / "native/tts_run.sh").read_text()


def test_max_steps_become_equal_epochs_of_whole_batches(tts_corpus, tmp_path):
    rd = render(vits_spec(tts_corpus, *TRAIN_OVERRIDES), tmp_path / "run")
    cfg = yaml.safe_load((rd / "native/conf/train_tts.yaml").read_text())
    assert (cfg["max_epoch"], cfg["num_iters_per_epoch"]) == (EPOCHS, 6)  # 100 utterances: 7 batches of 16 a pass
    derived = json.loads((rd / "native/tts_commands.json").read_text())["derived"]
    assert derived["total_steps"] == 12 and cfg["scheduler_conf"] == cfg["scheduler2_conf"]


def test_init_from_an_spx_vits_run_dir_loads_its_exported_generator(tts_corpus, tmp_path):
    base = tmp_path / "base"
    (base / "checkpoints").mkdir(parents=True)
    (base / "checkpoints/3epoch.pth").write_bytes(b"")  # path resolution only: nothing loads it at render time
    (base / "train_summary.json").write_text(json.dumps({"exported_model": str(base / "checkpoints/3epoch.pth")}))
    rd = render(vits_spec(tts_corpus, f"init_from={base}"), tmp_path / "run")
    cmd = json.loads((rd / "native/tts_commands.json").read_text())["commands"]["tts_train"]
    assert cmd[cmd.index("--init_param") + 1] == str((base / "checkpoints/3epoch.pth").resolve())


def test_vits_multi_speaker_renders_speaker_ids(tts_multi_corpus, tmp_path):
    rd = render(vits_spec(tts_multi_corpus, "tts.multi_speaker=true"), tmp_path / "run")
    g = yaml.safe_load((rd / "native/conf/train_tts.yaml").read_text())["tts_conf"]["generator_params"]
    assert g["spks"] == 2 and g["global_channels"] == g["hidden_channels"]
    native = json.loads((rd / "native/tts_commands.json").read_text())
    assert native["speakers"] == {"rms": 0, "slt": 1}
    assert "native/tts_data/train/utt2sid,sids,text_int" in native["commands"]["tts_train"]


@pytest.mark.parametrize("overrides, match", [
    (["model.decoder_upsample_scales=[8,8,2]"], r"multiply to 128, but the STFT hop is 256 samples"),
    (["features.hop_length_ms=10.0"], r"multiply to 256, but the STFT hop is 160 samples"),
    (["tts.vocoder=/some/vocoder.pkl"], "VITS generates the waveform itself"),
    (["init_from=/no/such/model.pth"], "init_from"),
])
def test_what_vits_cannot_do_is_one_clear_error_before_anything_runs(tts_multi_corpus, tmp_path, overrides, match):
    spec = vits_spec(tts_multi_corpus, *overrides)
    with pytest.raises(SpxError, match=match):
        render(spec, tmp_path / "run")
    assert not (tmp_path / "run" / "steps.json").exists()


@pytest.mark.parametrize("overrides, match", [
    (["model.hidden_channels=33"], "hidden_channels"),
    (["model.decoder_resblock_kernel_sizes=[4]"], "kernels must be odd"),
    (["model.decoder_channels=8", "model.decoder_upsample_scales=[4,4,4,4]"], "halves at each of the 4 upsamples"),
])
def test_bad_vits_sizes_are_spec_errors(tts_multi_corpus, overrides, match):
    with pytest.raises(SpxError, match=match):
        vits_spec(tts_multi_corpus, *overrides)


# ------------------------------------------------------------------ slow: real training and synthesis
def trained_vits(tts_corpus, tmp_path_factory) -> RunDir:
    """The run dir of the session's ESPnet VITS (trained, synthesized and scored as `spx run` does): built once per
    test run (every xdist worker shares it), by this module's end-to-end test or by tests/test_espnet_vits_deploy.py,
    whichever asks first."""
    from spx.launchers.local import run_here

    def build(folder: Path) -> None:
        run_here(render(vits_spec(tts_corpus, *TRAIN_OVERRIDES), folder / "vits-espnet"), quiet=True)

    return RunDir(build_once(shared_dir(tmp_path_factory, "espnet_vits_run"), build) / "vits-espnet")


@pytest.fixture(scope="session")
def vits_run(tts_corpus, tmp_path_factory) -> RunDir:
    return trained_vits(tts_corpus, tmp_path_factory)


@pytest.mark.slow
def test_vits_trains_synthesizes_and_is_scored(vits_run, tts_corpus):
    rd = vits_run
    curve = read_jsonl(rd / "curve.jsonl")
    assert len(curve) == EPOCHS and curve[-1]["step"] == 12
    assert curve[-1]["train_loss"] < 0.8 * curve[0]["train_loss"], curve  # the generator loss falls
    assert curve[-1]["train_generator_mel_loss"] < curve[0]["train_generator_mel_loss"], curve
    assert all(r["train_discriminator_loss"] > 0 and r["valid_loss"] is not None for r in curve)
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["vocoder"] == "vits (end-to-end)" and summary["params"] > 0
    assert Path(summary["exported_model"]).name == f"{EPOCHS}epoch.pth"  # latest.pth resolved: the last generator

    synthesized = synthesized_test_set(rd, tts_corpus)
    hyps = [h for h, _ in synthesized]
    for h, wav in synthesized:
        assert len(wav) % 256 == 0  # one hop of waveform per latent frame
        assert h["duration"] > 0.05 and h["synth_time"] > 0 and Path(h["ref_audio"]).exists()
    speed = json.loads((rd / "speed.json").read_text())
    assert speed["vocoder"] == "vits (end-to-end)" and "vits (end-to-end)" in speed["clock"]
    assert speed["audio_seconds"] == pytest.approx(sum(h["duration"] for h in hyps)) and speed["batch_size"] == 1

    scores = json.loads((rd / "metrics.json").read_text())  # scored like every TTS run
    print({k: v for k, v in scores.items() if isinstance(v, (int, float))})
    assert scores["synthesis_rtf"] > 0 and scores["mcd"] > 0
    assert 1 <= scores["dnsmos_ovrl"] <= 5 and 1 <= scores["distillmos"] <= 5
    assert len(scores["per_utt"]) == len(hyps)
