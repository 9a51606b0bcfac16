"""NeMo backend: native config rendering, real training/decoding, fine-tuning, resume after kill, 2-process DDP."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from conftest import RECIPE, run_spx, run_spx_and_crash


def _config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "native" / "config.yaml").read_text())


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _nemo_weights(path: Path) -> dict:
    """The state dict inside a .nemo archive (a tar with model_weights.ckpt)."""
    import torch

    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("model_weights.ckpt"))
        data = tar.extractfile(member).read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- fast
def test_dry_run_renders_native_config(tmp_path):
    rd = tmp_path / "run"
    proc = run_spx("run", "--backend", "nemo", RECIPE, "--run-dir", rd, "--dry-run",
                   "model.encoder.layers=3", "model.encoder.d_model=64", "model.encoder.heads=2",
                   "model.encoder.conv_kernel=9", "model.encoder.subsampling=8", "features.n_mels=64",
                   "training.optimizer.lr=0.001", "training.optimizer.betas=[0.8,0.95]",
                   "training.scheduler.name=linear", "training.grad_accumulation=2", "training.precision=bf16",
                   "augmentation.speed_perturb=[0.9,1.0,1.1]", "training.early_stopping.monitor=valid_wer",
                   "decoding.strategy=beam", "decoding.beam_size=3", "backends.nemo.model.encoder.xscaling=false")
    assert proc.returncode == 0, proc.stderr
    assert "spx.adapters.nemo.steps.train" in proc.stdout and "spx.adapters.nemo.steps.decode" in proc.stdout
    cfg = _config(rd)
    enc, model = cfg["model"]["encoder"], cfg["model"]
    assert enc["_target_"].endswith("ConformerEncoder")
    assert (enc["n_layers"], enc["d_model"], enc["n_heads"], enc["conv_kernel_size"], enc["subsampling_factor"],
            enc["feat_in"]) == (3, 64, 2, 9, 8, 64)
    assert enc["xscaling"] is False  # backends.nemo pass-through, merged untouched
    assert model["preprocessor"]["_target_"].endswith("AudioToMelSpectrogramPreprocessor")
    assert model["preprocessor"]["features"] == 64 and model["preprocessor"]["window_stride"] == 0.01
    assert model["spec_augment"]["_target_"].endswith("SpectrogramAugmentation")
    assert model["spec_augment"]["time_width"] == 25
    train_text = {json.loads(l)["text"] for l in (rd / "native" / "train.json").read_text().splitlines()}
    assert set(model["labels"]) == {c for t in train_text for c in t}  # char tokenizer: labels from the data
    assert model["decoder"]["vocabulary"] == model["labels"]
    optim = model["optim"]
    assert optim["name"] == "adamw" and optim["lr"] == 0.001 and optim["betas"] == [0.8, 0.95]
    assert optim["sched"]["name"] == "WarmupAnnealing" and optim["sched"]["warmup_steps"] == 100
    assert model["train_ds"]["augmentor"]["speed"]["num_rates"] == 3
    assert model["decoding"] == {"strategy": "beam_batch", "beam": {"beam_size": 3, "return_best_hypothesis": True}}
    assert cfg["trainer"]["accumulate_grad_batches"] == 2 and cfg["trainer"]["precision"] == "bf16-mixed"
    assert cfg["trainer"]["max_epochs"] == 40 and cfg["trainer"]["gradient_clip_val"] == 5.0
    assert cfg["exp_manager"]["resume_if_exists"] is True
    assert cfg["exp_manager"]["early_stopping_callback_params"]["monitor"] == "val_wer"
    steps = json.loads((rd / "steps.json").read_text())
    assert [s["name"] for s in steps] == ["train", "decode"] and steps[0]["log"] == "train.log"


def test_dry_run_bpe_trains_a_sentencepiece_tokenizer_first(tmp_path):
    rd = tmp_path / "run"
    proc = run_spx("run", "--backend", "nemo", RECIPE, "--run-dir", rd, "--dry-run",
                   "tokenizer.type=bpe", "tokenizer.vocab_size=40", "training.batch_seconds=30")
    assert proc.returncode == 0, proc.stderr
    cfg = _config(rd)
    assert cfg["model"]["tokenizer"] == {"dir": str(rd.resolve() / "native" / "tokenizer"), "type": "bpe"}
    assert "labels" not in cfg["model"]
    assert cfg["model"]["train_ds"]["use_lhotse"] is True and cfg["model"]["train_ds"]["batch_duration"] == 30
    assert cfg["model"]["optim"]["sched"]["max_steps"] > 0
    steps = json.loads((rd / "steps.json").read_text())
    assert [s["name"] for s in steps] == ["tokenizer", "train", "decode"]


def test_unsupported_family_refused_before_anything_is_written(tmp_path):
    recipe = tmp_path / "tts.yaml"
    data = yaml.safe_load(RECIPE.read_text())
    data.update(task="tts", model={"family": "tacotron2"})
    for key in ("train", "valid", "test"):
        data["data"][key] = str((RECIPE.parent / data["data"][key]).resolve())
    recipe.write_text(yaml.safe_dump(data))
    rd = tmp_path / "run"
    proc = run_spx("run", "--backend", "nemo", recipe, "--run-dir", rd, "--dry-run")
    assert proc.returncode == 2
    assert "nemo" in proc.stderr and "tacotron2" in proc.stderr and "Traceback" not in proc.stderr
    assert len([l for l in proc.stderr.splitlines() if l.startswith("error:")]) == 1
    assert not rd.exists()


def test_bad_freeze_and_fp16_on_cpu_refused(tmp_path):
    proc = run_spx("run", "--backend", "nemo", RECIPE, "--run-dir", tmp_path / "a", "--dry-run",
                   'freeze=["encoder.layers:7"]', "init_from=x.nemo")
    assert proc.returncode == 2 and "encoder.layers:7" in proc.stderr and "2 layers" in proc.stderr
    proc = run_spx("run", "--backend", "nemo", RECIPE, "--run-dir", tmp_path / "b", "--dry-run",
                   "training.precision=fp16", "resources.accelerator=cpu")
    assert proc.returncode == 2 and "fp16 needs a GPU" in proc.stderr
    proc = run_spx("run", "--backend", "nemo", RECIPE, "--run-dir", tmp_path / "c", "--dry-run",
                   f"init_from={tmp_path / 'missing.nemo'}")
    assert proc.returncode == 2 and "missing.nemo" in proc.stderr and "file not found" in proc.stderr
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))


# ---------------------------------------------------------------- slow: real training
@pytest.mark.slow
def test_trained_run_decodes_held_out_voices(trained_run):
    rd = trained_run("nemo")
    metrics = json.loads((rd / "metrics.json").read_text())
    print(f"nemo WER {metrics['wer']:.3f} CER {metrics['cer']:.3f} RTFx {metrics.get('rtfx')}")
    assert metrics["utterances"] == 40
    assert metrics["wer"] < 0.5
    hyps = _jsonl(rd / "hyps.jsonl")
    assert len(hyps) == 40 and all({"id", "ref", "hyp", "duration", "decode_time"} <= set(h) for h in hyps)
    speed = json.loads((rd / "speed.json").read_text())
    assert len(speed["decode_seconds"]) == speed["repeats"] and speed["audio_seconds"] > 0
    curve = _jsonl(rd / "curve.jsonl")
    assert [r["epoch"] for r in curve] == list(range(1, len(curve) + 1))
    assert curve[-1]["train_loss"] < 0.5 * curve[0]["train_loss"]
    assert curve[-1]["valid_loss"] < curve[0]["valid_loss"]
    summary = json.loads((rd / "train_summary.json").read_text())
    assert Path(summary["exported_model"]).is_file() and summary["exported_model"].endswith(".nemo")
    assert summary["world_size"] == 1 and summary["params"] > 100_000
    assert list((rd / "checkpoints").glob("*last.ckpt"))
    assert (rd / "native" / "config.yaml").is_file() and (rd / "native" / "train.json").is_file()


@pytest.mark.slow
def test_finetune_from_own_checkpoint_with_frozen_layers(trained_run, tmp_path):
    base = trained_run("nemo")
    source = json.loads((base / "train_summary.json").read_text())["exported_model"]
    rd = tmp_path / "ft"
    run_spx("run", "--backend", "nemo", RECIPE, "--run-dir", rd, f"init_from={source}", 'freeze=["encoder.layers:1"]',
            "training.epochs=1", "training.scheduler.warmup_steps=0", "training.optimizer.lr=0.0005",
            "eval.speed_repeats=1", check=True)
    assert _config(rd)["init_from_nemo_model"] == source
    base_curve, ft_curve = _jsonl(base / "curve.jsonl"), _jsonl(rd / "curve.jsonl")
    # starts from the trained weights: its first epoch is far better than an untrained model's first epoch
    assert ft_curve[0]["valid_loss"] < 0.3 * base_curve[0]["valid_loss"]
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["init_details"]["new_ctc_head"] is False and summary["frozen_params"] > 0
    before, after = _nemo_weights(Path(source)), _nemo_weights(Path(summary["exported_model"]))
    frozen = [k for k in before if k.startswith(("encoder.pre_encode.", "encoder.layers.0."))]
    trained = [k for k in before if k.startswith("encoder.layers.1.") and before[k].is_floating_point()]
    assert frozen and all(before[k].equal(after[k]) for k in frozen)
    assert any(not before[k].equal(after[k]) for k in trained)  # the rest did train
    metrics = json.loads((rd / "metrics.json").read_text())
    assert metrics["wer"] < 0.6


def _resumable_checkpoint(ckpt_dir: Path, min_epoch: int) -> bool:
    """A finished NeMo 'last' checkpoint of epoch index >= min_epoch (NeMo marks half-written ones '-unfinished')."""
    for p in ckpt_dir.glob("epoch=*-last.ckpt"):
        epoch = int(p.name.split("-")[0].split("=")[1])
        if epoch >= min_epoch and not Path(str(p)[: -len(".ckpt")] + "-unfinished").exists():
            return True
    return False


@pytest.mark.slow
def test_resume_after_kill_continues_from_checkpoint(tmp_path):
    rd = tmp_path / "resume"
    run_spx_and_crash(["run", "--backend", "nemo", RECIPE, "--run-dir", rd, "training.epochs=4", "training.batch_size=16",
                       "eval.speed_repeats=1"],  # epoch index 1 = two epochs done
                      lambda: _resumable_checkpoint(rd / "checkpoints", min_epoch=1), "a checkpoint")
    epochs_before = [r["epoch"] for r in _jsonl(rd / "curve.jsonl")]
    assert 2 <= len(epochs_before) < 4
    run_spx("run", "--resume", rd, check=True)
    log = (rd / "train.log").read_text()
    assert "resumed from checkpoint at epoch" in log
    curve = _jsonl(rd / "curve.jsonl")
    assert [r["epoch"] for r in curve] == [1, 2, 3, 4]  # continued: no epoch trained twice in the record
    starts = [l for l in log.splitlines() if "starts training at epoch" in l]
    assert len(starts) == 2 and "at epoch 1 " in starts[0] and "at epoch 1 " not in starts[1]
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["resumed"] is True and summary["steps"] == 4 * 15
    assert json.loads((rd / "status.json").read_text())["state"] == "finished"


@pytest.mark.slow
def test_two_process_gloo_data_parallel(tmp_path):
    rd = tmp_path / "ddp"
    run_spx("run", "--backend", "nemo", RECIPE, "--run-dir", rd, "resources.devices=2", "resources.accelerator=cpu",
            "resources.threads=1", "training.epochs=2", "training.batch_size=16", "eval.speed_repeats=1", check=True)
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch"] == 16 * 2
    assert len(summary["per_rank"]) == 2 and all(r["batches"] > 0 for r in summary["per_rank"])
    log = (rd / "train.log").read_text()
    assert "rank 0/2 starts training" in log and "rank 1/2 starts training" in log
    assert "gloo" in log.lower()
    # each rank saw half of the 240 utterances per epoch: 8 batches of <=16, so 2 epochs = 16 optimizer steps
    assert summary["steps"] == 16
    assert len(list((rd / "checkpoints").glob("*last.ckpt"))) == 1 and Path(summary["exported_model"]).is_file()
    assert len(_jsonl(rd / "curve.jsonl")) == 2
