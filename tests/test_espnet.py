"""ESPnet backend: render (fast), and real training/decoding, fine-tuning, resume after kill, 2-process gloo (slow)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import RECIPE, REPO, run_spx, run_spx_and_crash

DEMO = REPO / "spx" / "demo" / "corpus"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _native_config(rd: Path) -> dict:
    return yaml.safe_load((rd / "native" / "conf" / "train_asr.yaml").read_text())


# ------------------------------------------------------------------ fast
def test_dry_run_renders_native_espnet_recipe(tmp_path):
    rd = tmp_path / "run"
    proc = run_spx("run", "--backend", "espnet", RECIPE, "--run-dir", rd, "--dry-run",
                   "model.encoder.layers=3", "model.encoder.d_model=64", "model.encoder.heads=2", "model.encoder.ff_expansion=3",
                   "model.encoder.conv_kernel=9", "model.encoder.subsampling=8", "model.encoder.dropout=0.2",
                   "tokenizer.type=bpe", "tokenizer.vocab_size=40", "training.optimizer.name=adam",
                   "training.optimizer.lr=0.001", "training.optimizer.betas=[0.8,0.95]", "training.scheduler.name=noam",
                   "training.scheduler.warmup_steps=50", "training.grad_accumulation=2", "training.epochs=7",
                   "augmentation.speed_perturb=[0.9,1.0,1.1]", "backends.espnet.encoder_conf.macaron_style=false",
                   check=True)
    assert "espnet.adapters" not in proc.stdout
    cfg = _native_config(rd)
    enc = cfg["encoder_conf"]
    assert cfg["encoder"] == "conformer" and cfg["decoder"] == "none" and cfg["model_conf"]["ctc_weight"] == 1.0
    assert (enc["num_blocks"], enc["output_size"], enc["attention_heads"], enc["linear_units"]) == (3, 64, 2, 192)
    assert (enc["cnn_module_kernel"], enc["input_layer"], enc["dropout_rate"]) == (9, "conv2d8", 0.2)
    assert enc["macaron_style"] is False  # backends.espnet pass-through wins
    assert cfg["frontend"] == "default" and cfg["frontend_conf"]["n_mels"] == 40
    assert cfg["frontend_conf"]["hop_length"] == 160 and cfg["frontend_conf"]["win_length"] == 400
    assert "normalize" not in cfg  # global_mvn only at train time (CLI of the train command)
    assert cfg["optim"] == "adam" and cfg["optim_conf"]["lr"] == 0.001 and cfg["optim_conf"]["betas"] == [0.8, 0.95]
    assert cfg["scheduler"] == "warmuplr" and cfg["scheduler_conf"]["warmup_steps"] == 50
    assert cfg["accum_grad"] == 2 and cfg["max_epoch"] == 7 and cfg["batch_size"] == 8
    assert cfg["specaug_conf"]["freq_mask_width_range"] == [0, 8]
    factors = [e[2]["factor"] for e in cfg["preprocessor_conf"]["data_aug_effects"][0][1]]
    assert factors == [0.9, 1.0, 1.1]
    cmds = json.loads((rd / "native" / "commands.json").read_text())["commands"]
    assert cmds["tokenize_text"][0] == "espnet2.bin.tokenize_text" and "bpe" in cmds["tokenize_text"]
    train = cmds["asr_train"]
    assert train[0] == "espnet2.bin.asr_train" and train[train.index("--resume") + 1] == "true"
    assert train[train.index("--normalize") + 1] == "global_mvn"
    assert "--normalize" not in cmds["collect_stats"]
    # Kaldi data dirs with transcripts cleaned the way every backend cleans them
    text = (rd / "native" / "data" / "train" / "text").read_text().splitlines()
    assert len(text) == 240 and all(line.split(" ", 1)[1] == line.split(" ", 1)[1].lower() for line in text)
    assert (rd / "native" / "data" / "valid" / "wav.scp").exists()
    steps = json.loads((rd / "steps.json").read_text())
    assert [s["name"] for s in steps] == ["train", "decode"]  # one process prepares and trains: one espnet2 import
    assert next(s for s in steps if s["name"] == "train")["log"] == "train.log"
    native_sh = (rd / "native" / "run.sh").read_text()  # ESPnet's own commands stay one per entry point
    assert [line.split()[2] for line in native_sh.splitlines() if line.startswith("python -m ")] == [
        "espnet2.bin.tokenize_text", "espnet2.bin.asr_train", "espnet2.bin.aggregate_stats_dirs", "espnet2.bin.asr_train"]


def test_cosine_schedule_and_dynamic_batches(tmp_path):
    rd = tmp_path / "run"
    run_spx("run", "--backend", "espnet", RECIPE, "--run-dir", rd, "--dry-run", "training.batch_size=null",
            "training.batch_seconds=20", "training.epochs=20", "resources.devices=2",
            "training.early_stopping={monitor: valid_loss, patience: 3}", check=True)
    cfg = _native_config(rd)
    assert cfg["batch_type"] == "length" and cfg["batch_bins"] == 20 * 16000 * 2
    sc = cfg["scheduler_conf"]
    assert cfg["scheduler"] == "CosineAnnealingWarmupRestarts" and sc["max_lr"] == 0.004 and sc["warmup_steps"] == 100
    assert sc["first_cycle_steps"] > 100
    assert cfg["patience"] == 3 and cfg["early_stopping_criterion"] == ["valid", "loss", "min"]
    steps = json.loads((rd / "steps.json").read_text())
    assert next(s for s in steps if s["name"] == "train")["launch"] == "torchrun"
    assert [s["name"] for s in steps] == ["prepare", "train", "decode"]  # statistics once, not once per rank


def test_unsupported_family_refused_before_anything_is_written(tmp_path):
    recipe = tmp_path / "tts.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tts", "task": "tts", "model": {"family": "hifigan"},  # ESPnet 202511 trains no standalone vocoder
        "data": {"train": str(DEMO / "train.jsonl"), "valid": str(DEMO / "valid.jsonl"), "test": str(DEMO / "test.jsonl")}}))
    rd = tmp_path / "run"
    proc = run_spx("run", "--backend", "espnet", recipe, "--run-dir", rd, "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: model.family: spx's 'espnet' backend has no 'hifigan' model for task 'tts'")
    assert "tacotron2" in proc.stderr and "Traceback" not in proc.stderr  # names what it has
    assert not rd.exists()


def test_bad_fine_tuning_inputs_are_clear_errors(tmp_path):
    rd = tmp_path / "run"
    proc = run_spx("run", "--backend", "espnet", RECIPE, "--run-dir", rd, "--dry-run", "freeze=[encoder.layers:9]",
                   f"init_from={tmp_path}")
    assert proc.returncode == 2 and "encoder.layers:9" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_spx("run", "--backend", "espnet", RECIPE, "--run-dir", rd, "--dry-run", f"init_from={tmp_path}/nope.pth")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not rd.exists()


# ------------------------------------------------------------------ slow: real training
@pytest.mark.slow
def test_trained_run_reaches_wer_and_writes_normalized_files(trained_run):
    rd = trained_run("espnet")
    metrics = json.loads((rd / "metrics.json").read_text())
    print(f"espnet demo WER={metrics['wer']:.3f} CER={metrics['cer']:.3f} RTFx={metrics.get('rtfx')}")
    assert metrics["utterances"] == 40
    assert metrics["wer"] < 0.5
    hyps = _read_jsonl(rd / "hyps.jsonl")
    assert len(hyps) == 40 and sum(bool(h["hyp"].strip()) for h in hyps) >= 35
    speed = json.loads((rd / "speed.json").read_text())
    assert speed["repeats"] == 3 and len(speed["decode_seconds"]) == 3
    curve = _read_jsonl(rd / "curve.jsonl")
    assert [r["epoch"] for r in curve] == list(range(1, len(curve) + 1)) and len(curve) >= 5
    assert curve[-1]["train_loss"] < 0.5 * curve[0]["train_loss"]
    assert curve[-1]["valid_loss"] < curve[0]["valid_loss"]
    summary = json.loads((rd / "train_summary.json").read_text())
    assert Path(summary["exported_model"]).is_file() and summary["exported_model"].endswith(".pth")
    assert Path(summary["config"]).is_file() and summary["params"] > 100_000
    assert summary["world_size"] == 1 and summary["steps"] == curve[-1]["step"]
    assert (rd / "native" / "tokens.txt").exists() and (rd / "native" / "asr_stats" / "train" / "feats_stats.npz").exists()


def _param_state(path: str) -> dict:
    import torch

    sd = torch.load(path, map_location="cpu")
    return {k: v for k, v in sd.items() if "running_" not in k and "num_batches_tracked" not in k}


@pytest.mark.slow
def test_fine_tune_from_trained_checkpoint_with_frozen_layer(trained_run, tmp_path):
    import torch

    base = trained_run("espnet")
    init = json.loads((base / "train_summary.json").read_text())["exported_model"]
    rd = tmp_path / "ft"
    run_spx("run", "--backend", "espnet", RECIPE, "--run-dir", rd, f"init_from={init}", "freeze=[encoder.layers:1]",
            "training.epochs=1", "eval.speed_repeats=1", check=True)
    log = (rd / "train.log").read_text()
    assert f"--init_param {init}" in log and "--freeze_param encoder.encoders.0 " in log
    first = _read_jsonl(rd / "curve.jsonl")[0]
    untrained_first = _read_jsonl(base / "curve.jsonl")[0]
    assert first["valid_loss"] < 0.5 * untrained_first["valid_loss"]
    before, after = _param_state(init), _param_state(json.loads((rd / "train_summary.json").read_text())["exported_model"])
    frozen = [k for k in before if k.startswith("encoder.encoders.0.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    trainable = [k for k in before if k.startswith("encoder.encoders.1.")]
    assert any(not torch.equal(before[k], after[k]) for k in trainable)


@pytest.mark.slow
def test_resume_after_kill_continues_from_checkpoint(tmp_path):
    rd = tmp_path / "resume"
    # ESPnet torch.saves checkpoint.pth in place: the kill waits a second for it to be written completely
    run_spx_and_crash(["run", "--backend", "espnet", RECIPE, "--run-dir", rd, "training.epochs=3",
                       "training.batch_size=16", "eval.speed_repeats=1"],
                      (rd / "checkpoints" / "checkpoint.pth").exists, "a checkpoint", timeout=1200, grace=1.0, settle=0)
    assert not (rd / "train_summary.json").exists()
    run_spx("run", "--resume", rd, check=True)
    log = (rd / "train.log").read_text()
    assert "The training was resumed using checkpoints/checkpoint.pth" in log
    epochs = [r["epoch"] for r in _read_jsonl(rd / "curve.jsonl")]
    assert epochs == [1, 2, 3]
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["resumed_from_epoch"] >= 1 and summary["epochs"] == 3
    assert json.loads((rd / "metrics.json").read_text())["utterances"] == 40


@pytest.mark.slow
def test_two_process_gloo_data_parallel(tmp_path):
    rd = tmp_path / "ddp"
    run_spx("run", "--backend", "espnet", RECIPE, "--run-dir", rd, "resources.devices=2", "training.epochs=2",
            "training.batch_size=8", "eval.speed_repeats=1", check=True)
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch"] == 16
    ranks = summary["ranks"]
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    assert all(r["train_batches"] >= 15 * 2 for r in ranks)  # 240 utts / 16 per step = 15 steps, 2 epochs, each rank
    assert "--dist_backend gloo" in (rd / "train.log").read_text()
    assert sorted(p.name for p in (rd / "checkpoints").glob("checkpoint*.pth")) == ["checkpoint.pth"]
    assert Path(summary["exported_model"]).is_file()
    assert json.loads((rd / "metrics.json").read_text())["utterances"] == 40


LAZY_PROBE = """
import json, sys
from spx.adapters.espnet.steps.lazy_imports import defer_unused_imports, still_deferred
defer_unused_imports(("g2p_en", "probe_ok", "probe_broken", "probe_absent"))
import g2p_en, probe_ok, probe_broken
out = {"lazy": still_deferred(), "nltk_before": "nltk" in sys.modules, "ran_before": "ran" in open(sys.argv[1]).read()}
out["value"] = probe_ok.VALUE  # the first attribute access executes the module
out["g2p"] = g2p_en.G2p.__module__
out["nltk_after"] = "nltk" in sys.modules
out["lazy_after"] = still_deferred()
for attempt in ("first", "second"):
    try:
        probe_broken.anything
    except ImportError as exc:
        out[f"broken_{attempt}"] = str(exc)
out["broken_in_sys_modules"] = "probe_broken" in sys.modules
try:
    import probe_broken as again
except ImportError as exc:
    out["broken_reimport"] = str(exc)
try:
    import probe_absent
except ModuleNotFoundError as exc:
    out["absent"] = str(exc)
print(json.dumps(out))
"""


def test_deferred_imports_load_the_real_module_on_first_use(tmp_path):
    """spx's ESPnet children defer g2p_en (nltk, inflect, nltk's download attempts): still the real module when touched,
    and a module that fails to import still raises its ImportError, every time."""
    marker = tmp_path / "ran.txt"
    marker.write_text("")
    (tmp_path / "probe_ok.py").write_text(f"open({str(marker)!r}, 'a').write('ran')\nVALUE = 42\n")
    (tmp_path / "probe_broken.py").write_text("import probe_dependency_that_is_not_installed\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    proc = subprocess.run([sys.executable, "-c", LAZY_PROBE, str(marker)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["lazy"] == {"g2p_en": True, "probe_broken": True, "probe_ok": True}
    assert not out["nltk_before"] and not out["ran_before"]
    assert out["value"] == 42 and marker.read_text() == "ran"  # executed once, on first use
    assert out["g2p"] == "g2p_en.g2p" and out["nltk_after"]  # the real G2p, with its nltk
    assert out["lazy_after"] == {"g2p_en": False, "probe_broken": True, "probe_ok": False}
    assert not out["broken_in_sys_modules"]  # as after a failed eager import
    assert "probe_dependency_that_is_not_installed" in out["broken_first"]
    assert "probe_dependency_that_is_not_installed" in out["broken_second"]
    assert "probe_dependency_that_is_not_installed" in out["broken_reimport"]
    assert "probe_absent" in out["absent"]  # not installed: the ordinary error at the import statement


def test_epoch_results_line_parsed_into_curve_values():
    from spx.adapters.espnet.conformer_ctc import freeze_params
    from spx.adapters.espnet.steps.train import parse_epoch_results
    from spx.spec import Spec

    line = ("3epoch results: [train] iter_time=0.157, loss_ctc=54.591, loss=54.591, optim0_lr0=7.800e-04, "
            "time=2 minutes and 9.89 seconds, [valid] loss_ctc=56.066, cer_ctc=0.977, loss=56.066, time=5.2 seconds")
    epoch, sec = parse_epoch_results(line)
    assert epoch == 3 and sec["train"]["loss"] == 54.591 and sec["train"]["optim0_lr0"] == 7.8e-4
    assert sec["valid"] == {"loss_ctc": 56.066, "cer_ctc": 0.977, "loss": 56.066}
    assert parse_epoch_results("The best model has been updated: valid.loss") is None
    data = {"train": "a.jsonl", "valid": "b.jsonl", "test": "c.jsonl"}
    spec = Spec.model_validate({"data": data, "freeze": ["encoder.layers:2", "feature_extractor"]})
    assert freeze_params(spec) == ["encoder.encoders.0", "encoder.encoders.1", "frontend", "normalize", "encoder.embed"]
