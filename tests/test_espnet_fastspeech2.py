"""FastSpeech2 on ESPnet from a Tacotron2 teacher's durations (family fastspeech2, recipes/fastpitch.yaml with
tts.duration_teacher): rendering (fast) and a real teacher -> durations -> prepare -> train -> synthesize -> score run
(slow) that takes the session's trained ESPnet Tacotron2 (conftest `trained_tts`) as its teacher."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from conftest import REPO, read_jsonl, render_tts_run, synthesized_test_set, tts_spec
from shared_artifacts import build_once, shared_dir
from spx.errors import SpxError

RECIPE = REPO / "recipes" / "fastpitch.yaml"
# CI scale: 8 epochs x 6 batches of 16 on one thread (~1.5 min of training, ~6 min for the whole test at load ~3);
# the teacher is the suite's 12-epoch Tacotron2 (conftest trained_tts), trained once per session
EPOCHS = 8
TRAIN_OVERRIDES = [f"training.epochs={EPOCHS}", "eval.speed_repeats=1", "eval.warmup_batches=1", "resources.threads=1"]


def fs2_spec(corpus: Path, *overrides: str):
    return tts_spec(corpus, *overrides, recipe=RECIPE)



def fake_teacher(corpus: Path, root: Path, *overrides: str, config_edit=None) -> Path:
    """An spx espnet tacotron2 run dir as render sees it: train_summary.json, a (never loaded) best checkpoint, the
    config.yaml ESPnet writes (spx's rendered config + token_list + global_mvn stats path) and the stats file."""
    from spx.adapters.espnet.helpers import TTS_TOKENS

    rd = render_tts_run(tts_spec(corpus, *overrides), "espnet", root / "render")
    cfg = yaml.safe_load((rd / "native/conf/train_tts.yaml").read_text())
    cfg.update(token_list=(rd / TTS_TOKENS).read_text().split(), normalize="global_mvn",
               normalize_conf={"stats_file": "native/tts_stats/train/feats_stats.npz"})
    if config_edit:
        config_edit(cfg)
    teacher = root / "teacher"
    (teacher / "checkpoints").mkdir(parents=True)
    (teacher / "native/tts_stats/train").mkdir(parents=True)
    (teacher / "native/tts_stats/train/feats_stats.npz").write_bytes(b"")
    (teacher / "checkpoints/12epoch.pth").write_bytes(b"")
    (teacher / "checkpoints/config.yaml").write_text(yaml.safe_dump(cfg))
    (teacher / "train_summary.json").write_text(json.dumps({
        "best_checkpoint": str(teacher / "checkpoints/12epoch.pth"),
        "native_config": str(teacher / "checkpoints/config.yaml")}))
    return teacher


@pytest.fixture()
def teacher(tts_multi_corpus, tmp_path) -> Path:
    return fake_teacher(tts_multi_corpus, tmp_path / "t")


# ------------------------------------------------------------------ fast: rendering
def test_fastspeech2_config_carries_the_spec_numbers(tts_multi_corpus, teacher, tmp_path):
    spec = fs2_spec(tts_multi_corpus, f"tts.duration_teacher={teacher}", "model.d_model=48", "model.heads=4",
                    "model.encoder_layers=3", "model.decoder_layers=1", "training.optimizer.lr=0.001")
    rd = render_tts_run(spec, "espnet", tmp_path / "run")
    cfg = yaml.safe_load((rd / "native/conf/train_tts.yaml").read_text())
    c = cfg["tts_conf"]
    assert cfg["tts"] == "fastspeech2" and cfg["token_type"] == "char" and cfg["g2p"] is None
    assert (c["adim"], c["aheads"], c["elayers"], c["dlayers"]) == (48, 4, 3, 1)
    assert c["eunits"] == c["dunits"] == 4 * 48 and c["positionwise_conv_kernel_size"] == 3
    for predictor in ("duration_predictor", "pitch_predictor", "energy_predictor"):  # the widths NeMo/SpeechBrain get
        assert (c[f"{predictor}_layers"], c[f"{predictor}_chans"], c[f"{predictor}_kernel_size"]) == (2, 48, 3)
    assert (c["postnet_layers"], c["postnet_chans"], c["reduction_factor"]) == (5, 48, 1)
    assert "spks" not in c
    # token-averaged dio pitch and energy, global_mvn-normalized, as ESPnet's egs2 FastSpeech2
    assert cfg["pitch_extract"] == "dio" and cfg["energy_extract"] == "energy"
    assert cfg["pitch_normalize"] == cfg["energy_normalize"] == "global_mvn"
    pe, ee = cfg["pitch_extract_conf"], cfg["energy_extract_conf"]
    assert pe["use_token_averaged_f0"] is True and ee["use_token_averaged_energy"] is True
    assert pe["reduction_factor"] == ee["reduction_factor"] == 1
    assert (pe["fs"], pe["hop_length"], ee["hop_length"], ee["win_length"]) == (16000, 256, 256, 1024)
    teacher_cfg = yaml.safe_load((teacher / "checkpoints/config.yaml").read_text())
    assert cfg["feats_extract"] == "fbank" and cfg["feats_extract_conf"] == teacher_cfg["feats_extract_conf"]
    assert cfg["optim_conf"]["lr"] == 0.001 and cfg["max_epoch"] == 40
    assert [s["name"] for s in json.loads((rd / "steps.json").read_text())] == ["tts_train", "tts_synth"]  # tts_train prepares first


def test_commands_run_the_teacher_and_carry_durations_pitch_and_energy(tts_multi_corpus, teacher, tmp_path):
    rd = render_tts_run(fs2_spec(tts_multi_corpus, f"tts.duration_teacher={teacher}"), "espnet", tmp_path / "run")
    native = json.loads((rd / "native/tts_commands.json").read_text())
    cmds = native["commands"]
    assert list(cmds)[:2] == ["teacher_durations_train", "teacher_durations_valid"]  # before collect_stats
    model = str((teacher / "checkpoints/12epoch.pth").resolve())
    assert native["duration_teacher"]["model"] == model
    for split in ("train", "valid"):
        t = cmds[f"teacher_durations_{split}"]
        assert t[0] == "espnet2.bin.tts_inference"
        assert t[t.index("--use_teacher_forcing") + 1] == "true" and t[t.index("--model_file") + 1] == model
        assert f"native/tts_data/{split}/wav.scp,speech,sound" in t
        assert t[t.index("--output_dir") + 1] == f"native/teacher/{split}"
        for name in ("collect_stats", "tts_train"):
            assert f"native/tts_data/{split}/durations,durations,text_int" in cmds[name]
        for feat in ("pitch", "energy"):
            assert f"native/tts_stats/{split}/collect_feats/{feat}.scp,{feat},npy" in cmds["tts_train"]
    stats = cmds["collect_stats"]
    assert stats[stats.index("--pitch_normalize") + 1] == stats[stats.index("--energy_normalize") + 1] == "none"
    assert stats[stats.index("--write_collected_feats") + 1] == "true"
    train = cmds["tts_train"]
    assert train[train.index("--pitch_normalize_conf") + 1] == "stats_file=native/tts_stats/train/pitch_stats.npz"
    assert train[train.index("--energy_normalize_conf") + 1] == "stats_file=native/tts_stats/train/energy_stats.npz"
    assert train[train.index("--normalize") + 1] == "global_mvn"
    assert native["synth_model"] == "checkpoints/valid.loss.best.pth"
    # the teacher's config as this run loads it: its relative statistics path made absolute
    tcfg = yaml.safe_load((rd / "native/teacher/teacher_config.yaml").read_text())
    assert tcfg["normalize_conf"]["stats_file"] == str((teacher / "native/tts_stats/train/feats_stats.npz").resolve())
    script = (rd / "native/tts_run.sh").read_text()
    assert "--use_teacher_forcing true" in script
    assert "cp native/teacher/train/durations/durations native/tts_data/train/durations" in script


def test_multi_speaker_needs_a_teacher_with_as_many_speaker_ids(tts_multi_corpus, tmp_path):
    two = fake_teacher(tts_multi_corpus, tmp_path / "two", "tts.multi_speaker=true")
    rd = render_tts_run(fs2_spec(tts_multi_corpus, f"tts.duration_teacher={two}", "tts.multi_speaker=true"), "espnet",
                        tmp_path / "run")
    assert yaml.safe_load((rd / "native/conf/train_tts.yaml").read_text())["tts_conf"]["spks"] == 2
    teacher_cmd = json.loads((rd / "native/tts_commands.json").read_text())["commands"]["teacher_durations_train"]
    assert "native/tts_data/train/utt2sid,sids,text_int" in teacher_cmd
    three = fake_teacher(tts_multi_corpus, tmp_path / "three", "tts.multi_speaker=true",
                         config_edit=lambda c: c["tts_conf"].update(spks=3))
    with pytest.raises(SpxError, match="3 speaker ids, this job's training manifest 2"):
        render_tts_run(fs2_spec(tts_multi_corpus, f"tts.duration_teacher={three}", "tts.multi_speaker=true"), "espnet",
                       tmp_path / "run3")


def test_without_a_teacher_one_clear_error_and_nothing_written(tts_multi_corpus, tmp_path):
    with pytest.raises(SpxError) as err:
        render_tts_run(fs2_spec(tts_multi_corpus), "espnet", tmp_path / "run")
    assert err.value.where == "tts.duration_teacher"
    assert "recipes/tacotron2.yaml" in err.value.hint and "tts.duration_teacher" in err.value.hint
    assert not (tmp_path / "run").exists()


def _edit(key, value):
    def edit(cfg):
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return edit


@pytest.mark.parametrize("config_edit, match", [
    (_edit("tts", "fastspeech2"), "is an ESPnet 'fastspeech2' model"),
    (_edit("tts_conf.reduction_factor", 2), "reduction_factor 2"),
    (_edit("feats_extract_conf.n_mels", 40), r"mel frames differ .*n_mels: this job 80, teacher 40"),
    (_edit("feats_extract_conf.hop_length", 200), r"hop_length: this job 256, teacher 200"),
    (_edit("token_list", ["<blank>", "<unk>", "a", "<sos/eos>"]), "reads other tokens"),
    (_edit("g2p", "g2p_en"), "reads other tokens"),
    (_edit("normalize_conf.stats_file", "elsewhere/feats_stats.npz"), "not found beside its training folder"),
])
def test_a_teacher_that_does_not_match_is_refused_before_anything_runs(tts_multi_corpus, tmp_path, config_edit, match):
    teacher = fake_teacher(tts_multi_corpus, tmp_path / "t", config_edit=config_edit)
    with pytest.raises(SpxError, match=match):
        render_tts_run(fs2_spec(tts_multi_corpus, f"tts.duration_teacher={teacher}"), "espnet", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_teacher_path_without_a_model_or_config_is_refused(tts_multi_corpus, teacher, tmp_path):
    with pytest.raises(SpxError, match="no ESPnet Tacotron2 model") as err:
        render_tts_run(fs2_spec(tts_multi_corpus, f"tts.duration_teacher={tmp_path / 'nothing'}"), "espnet",
                       tmp_path / "run")
    assert err.value.where == "tts.duration_teacher"
    (teacher / "checkpoints/config.yaml").unlink()
    with pytest.raises(SpxError, match="no config.yaml beside"):
        render_tts_run(fs2_spec(tts_multi_corpus, f"tts.duration_teacher={teacher}"), "espnet", tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("backend", ["nemo", "speechbrain"])
def test_backends_with_an_internal_aligner_refuse_a_duration_teacher(tts_multi_corpus, teacher, tmp_path, backend):
    with pytest.raises(SpxError, match="internal aligner") as err:
        render_tts_run(fs2_spec(tts_multi_corpus, f"tts.duration_teacher={teacher}"), backend, tmp_path / backend)
    assert err.value.where == "tts.duration_teacher" and "ESPnet FastSpeech2" in err.value.hint
    assert not (tmp_path / backend).exists()


def test_espnet_tacotron2_refuses_a_duration_teacher(tts_multi_corpus, teacher, tmp_path):
    with pytest.raises(SpxError, match="learns its alignment itself") as err:
        render_tts_run(tts_spec(tts_multi_corpus, f"tts.duration_teacher={teacher}"), "espnet", tmp_path / "run")
    assert err.value.where == "tts.duration_teacher"


def test_speechbrain_tacotron2_refuses_a_duration_teacher(tts_multi_corpus, teacher, tmp_path):
    with pytest.raises(SpxError, match="takes no duration teacher") as err:
        render_tts_run(tts_spec(tts_multi_corpus, f"tts.duration_teacher={teacher}"), "speechbrain", tmp_path / "run")
    assert err.value.where == "tts.duration_teacher" and "ESPnet FastSpeech2" in err.value.hint
    assert not (tmp_path / "run").exists()


def test_teacher_durations_that_do_not_sum_to_the_frames_fail_clearly(tmp_path):
    from spx.adapters.espnet.steps.tts_prepare import frame_count, install_durations

    mel = {"n_fft": 1024, "hop_length": 256}
    data = tmp_path / "native/tts_data/train"
    data.mkdir(parents=True)
    sf.write(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    frames = frame_count(16000, mel)
    assert frames == 16000 // 256 + 1  # ESPnet's centered STFT
    (data / "wav.scp").write_text(f"u1 {tmp_path / 'a.wav'}\n")
    (data / "text").write_text("u1 hi yo\n")  # 5 char tokens (h, i, <space>, y, o) + <sos/eos>
    out = tmp_path / "native/teacher/train"
    (out / "durations").mkdir(parents=True)
    (out / "durations/durations").write_text(f"u1 1 1 1 1 {frames - 4}\n")  # one entry short
    with pytest.raises(SystemExit, match=r"u1: 5 durations for 5 tokens \+ <sos/eos>"):
        install_durations(tmp_path, out, "train", mel)
    (out / "durations/durations").write_text(f"u1 1 1 1 1 1 {frames - 4}\n")  # right count, one frame too many
    with pytest.raises(SystemExit, match=f"summing to {frames + 1} for {frames} frames"):
        install_durations(tmp_path, out, "train", mel)
    (out / "durations/durations").write_text("")
    with pytest.raises(SystemExit, match="no durations for 1 train utterance"):
        install_durations(tmp_path, out, "train", mel)
    assert not (data / "durations").exists()
    (out / "durations/durations").write_text(f"u1 1 1 1 1 1 {frames - 5}\n")
    install_durations(tmp_path, out, "train", mel)
    assert (data / "durations").read_text() == f"u1 1 1 1 1 1 {frames - 5}\n"


# ------------------------------------------------------------------ slow: real teacher, training and synthesis
def trained_fastspeech2(trained_tts, tts_corpus, tmp_path_factory):
    """The run dir of the session's ESPnet FastSpeech2, trained from the session's ESPnet Tacotron2 (conftest
    `trained_tts`) as its duration teacher: built once per test run (every xdist worker shares it), by this module's
    end-to-end test or by tests/test_espnet_tts_deploy.py, whichever asks first."""
    from spx.launchers.local import run_here
    from spx.rundir import RunDir

    teacher = trained_tts("espnet")  # the session's ESPnet Tacotron2 (tests/test_tts.py checks it)

    def build(folder: Path) -> None:
        rd = render_tts_run(fs2_spec(tts_corpus, *TRAIN_OVERRIDES, f"tts.duration_teacher={teacher.path}"),
                            "espnet", folder / "fastspeech2-espnet")
        run_here(rd, quiet=True)  # teacher durations, stats, train, synthesize, then score as `spx run` does

    return RunDir(build_once(shared_dir(tmp_path_factory, "espnet_fastspeech2_run"), build) / "fastspeech2-espnet")


@pytest.fixture(scope="session")
def fastspeech2_run(trained_tts, tts_corpus, tmp_path_factory):
    return trained_fastspeech2(trained_tts, tts_corpus, tmp_path_factory)


@pytest.mark.slow
def test_fastspeech2_from_teacher_durations_trains_synthesizes_and_is_scored(fastspeech2_run, trained_tts, tts_corpus):
    teacher = trained_tts("espnet")
    rd = fastspeech2_run

    # durations: one per token + <sos/eos>, summing to each utterance's frame count
    hop = 256
    for split in ("train", "valid"):
        data = rd / f"native/tts_data/{split}"
        wavs = dict(line.split(maxsplit=1) for line in (data / "wav.scp").read_text().splitlines())
        texts = dict((line.split(maxsplit=1) + [""])[:2] for line in (data / "text").read_text().splitlines())
        rows = dict(line.split(maxsplit=1) for line in (data / "durations").read_text().splitlines())
        assert sorted(rows) == sorted(wavs)
        for utt, durations in rows.items():
            d = [int(x) for x in durations.split()]
            assert len(d) == len(texts[utt]) + 1 and sum(d) == sf.info(wavs[utt]).frames // hop + 1, utt
        assert (rd / f"native/tts_stats/{split}/collect_feats/pitch.scp").exists()

    curve = read_jsonl(rd / "curve.jsonl")
    assert len(curve) == EPOCHS
    assert curve[-1]["train_loss"] < 0.7 * curve[0]["train_loss"], curve
    assert curve[-1]["valid_loss"] < curve[0]["valid_loss"], curve
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["vocoder"] == "griffin-lim (32 iters)" and summary["params"] > 0
    assert Path(summary["best_checkpoint"]).exists()
    assert summary["duration_teacher"] == json.loads((teacher / "train_summary.json").read_text())["best_checkpoint"]
    assert yaml.safe_load((rd / "checkpoints/config.yaml").read_text())["tts"] == "fastspeech2"

    synthesized = synthesized_test_set(rd, tts_corpus)
    hyps = [h for h, _ in synthesized]
    for h, wav in synthesized:
        assert h["duration"] > 0.2 and h["synth_time"] > 0 and Path(h["ref_audio"]).exists(), h
    speed = json.loads((rd / "speed.json").read_text())
    assert speed["audio_seconds"] == pytest.approx(sum(h["duration"] for h in hyps)) and speed["batch_size"] == 1
    assert "griffin-lim" in speed["clock"]

    scores = json.loads((rd / "metrics.json").read_text())
    print({k: v for k, v in scores.items() if isinstance(v, (int, float))})
    assert scores["synthesis_rtf"] > 0 and scores["mcd"] > 0 and 0 <= scores["wer"]
    assert 1 <= scores["dnsmos_ovrl"] <= 5 and 1 <= scores["distillmos"] <= 5
    assert len(scores["per_utt"]) == len(hyps)


def test_init_from_a_run_of_another_family_is_refused(tts_multi_corpus, teacher, tmp_path):
    """init_from names an spx run dir of another family (here the Tacotron2 teacher run): one clear error."""
    tacotron = render_tts_run(tts_spec(tts_multi_corpus), "espnet", tmp_path / "t2")
    spec = fs2_spec(tts_multi_corpus, f"tts.duration_teacher={teacher}", f"init_from={tacotron.path}")
    with pytest.raises(SpxError, match="is a tts/tacotron2 run; this job is tts/fastspeech2"):
        render_tts_run(spec, "espnet", tmp_path / "run")
    assert not (tmp_path / "run" / "steps.json").exists()
