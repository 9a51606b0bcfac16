"""SpeechBrain backend: native hyperpyyaml rendering, real training/decoding, fine-tuning, resume after kill,
2-process gloo DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, RECIPE, run_spx, run_spx_and_crash


class _TagLoader(yaml.SafeLoader):
    """Reads the generated hyperpyyaml without building anything: a tagged node becomes {"!tag": value}."""


def _tagged(loader, suffix, node):
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return {"!" + suffix: value}


_TagLoader.add_multi_constructor("!", _tagged)


def _hparams(run_dir: Path) -> dict:
    return yaml.load((run_dir / "native" / "hparams.yaml").read_text(), Loader=_TagLoader)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _state(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- fast
def test_dry_run_renders_native_hyperpyyaml(tmp_path):
    rd = tmp_path / "run"
    proc = run_spx("run", "--backend", "speechbrain", RECIPE, "--run-dir", rd, "--dry-run",
                   "model.encoder.layers=3", "model.encoder.d_model=64", "model.encoder.heads=2",
                   "model.encoder.ff_expansion=2", "model.encoder.conv_kernel=9", "model.encoder.subsampling=8",
                   "model.encoder.dropout=0.2", "features.n_mels=64", "features.hop_length_ms=12",
                   "training.optimizer.lr=0.001", "training.optimizer.betas=[0.8,0.95]",
                   "training.optimizer.weight_decay=0.01", "training.scheduler.name=noam",
                   "training.scheduler.warmup_steps=50", "training.grad_accumulation=2", "training.precision=bf16",
                   "training.grad_clip=2.5", "augmentation.speed_perturb=[0.9,1.0,1.1]",
                   "training.early_stopping.monitor=valid_wer", "training.early_stopping.patience=3",
                   "decoding.strategy=beam", "decoding.beam_size=3", "backends.speechbrain.ckpt_interval_minutes=5")
    assert proc.returncode == 0, proc.stderr
    assert "spx.adapters.speechbrain.steps.train" in proc.stdout and "spx.adapters.speechbrain.steps.decode" in proc.stdout
    hp = _hparams(rd)
    tr = hp["Transformer"]["!new:speechbrain.lobes.models.transformer.TransformerASR.TransformerASR"]
    assert (tr["num_encoder_layers"], tr["nhead"], tr["d_ffn"], tr["kernel_size"], tr["dropout"]) == (3, 2, 128, 9, 0.2)
    assert tr["encoder_module"] == "conformer" and tr["num_decoder_layers"] == 0 and hp["d_model"] == 64
    cnn = hp["CNN"]["!new:speechbrain.lobes.models.convolution.ConvolutionFrontEnd"]
    assert cnn["num_blocks"] == 3 and cnn["strides"] == [2, 2, 2]  # subsampling 8
    assert cnn["dropout"] == 0.0  # dropout after the front end only, as NeMo and ESPnet
    assert tr["input_size"] == 8 * 32  # 64 mels halved three times x 32 channels
    fb = hp["compute_features"]["!new:speechbrain.lobes.features.Fbank"]
    assert hp["n_mels"] == 64 and fb["hop_length"] == 12.0 and fb["win_length"] == 25.0 and fb["n_fft"] == 512
    assert hp["tokenizer_type"] == "char"
    tokens = [json.loads(l) for l in (rd / "native" / "tokens.txt").read_text().splitlines()]
    train_text = {r["wrd"] for r in __import__("csv").DictReader((rd / "native" / "train.csv").open())}
    assert set(tokens) == {c for t in train_text for c in t} and hp["output_neurons"] == len(tokens) + 1
    opt = hp["opt_class"]["!name:torch.optim.AdamW"]
    assert opt["lr"] == {"!ref": "<lr>"} and hp["lr"] == 0.001 and hp["betas"] == [0.8, 0.95]
    assert hp["weight_decay"] == 0.01
    assert "!name:speechbrain.nnet.schedulers.NoamScheduler" in hp["lr_annealing"] and hp["warmup_steps"] == 50
    assert hp["grad_accumulation_factor"] == 2 and hp["precision"] == "bf16" and hp["max_grad_norm"] == 2.5
    assert hp["number_of_epochs"] == 40 and hp["decoding"] == "beam" and hp["beam_size"] == 3
    sp = hp["speed_perturb"]["!new:speechbrain.augment.time_domain.SpeedPerturb"]
    assert sp["speeds"] == [90, 100, 110]
    assert hp["freq_drop"]["!new:speechbrain.augment.freq_domain.SpectrogramDrop"]["drop_length_high"] == 8
    stopper = hp["epoch_counter"]["!new:speechbrain.utils.epoch_loop.EpochCounterWithStopper"]
    assert stopper["limit_to_stop"] == {"!ref": "<early_stopping_patience>"} and hp["early_stopping_patience"] == 3
    assert hp["early_stopping_monitor"] == "valid_wer"
    assert set(hp["checkpointer"]["!new:speechbrain.utils.checkpoints.Checkpointer"]["recoverables"]) >= {
        "CNN", "Transformer", "ctc_lin", "normalizer", "counter"}
    assert yaml.safe_load((rd / "native" / "overrides.yaml").read_text()) == {"ckpt_interval_minutes": 5}
    steps = json.loads((rd / "steps.json").read_text())
    assert [s["name"] for s in steps] == ["train", "decode"]
    assert steps[0]["log"] == "train.log" and steps[0]["launch"] == "torchrun"


def test_dry_run_bpe_and_dynamic_batches(tmp_path):
    rd = tmp_path / "run"
    proc = run_spx("run", "--backend", "speechbrain", RECIPE, "--run-dir", rd, "--dry-run",
                   "tokenizer.type=bpe", "tokenizer.vocab_size=40", "training.batch_seconds=30",
                   "training.scheduler.name=linear", "training.optimizer.name=sgd")
    assert proc.returncode == 0, proc.stderr
    hp = _hparams(rd)
    assert hp["tokenizer_type"] == "bpe" and hp["vocab_size"] == 40 and hp["output_neurons"] == 40
    assert hp["dynamic_batching"] is True and hp["max_batch_length_seconds"] == 30
    assert "!name:speechbrain.nnet.schedulers.LinearWarmupScheduler" in hp["lr_annealing"]
    assert "!name:torch.optim.SGD" in hp["opt_class"]


def test_family_modules_declare_the_contract_and_import_no_toolkit():
    """Every family the ADAPTER names is a module with the contract's names whose INFERENCE (if any) is a steps
    module; __init__, helpers and the family modules import neither torch nor speechbrain (only steps/ does)."""
    code = """if True:
        import importlib, json, sys
        from spx.adapters.speechbrain import ADAPTER
        out = {}
        importlib.import_module("spx.adapters.speechbrain.helpers")
        for task, families in ADAPTER.families.items():
            for family, module in families.items():
                m = importlib.import_module(f"spx.adapters.speechbrain.{module}")
                out[family] = [m.TASK, m.NAME, list(m.CPU_PRECISIONS), bool(m.INIT_FROM), m.INFERENCE, m.EXPORT,
                               all(callable(getattr(m, f, None)) for f in ("check", "render", "collect_extras"))]
        print(json.dumps({"families": out, "toolkits": [t for t in ("torch", "speechbrain") if t in sys.modules]}))
    """
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["toolkits"] == []
    steps = "spx.adapters.speechbrain.steps."
    assert got["families"] == {
        "conformer_ctc": ["asr", "conformer_ctc", ["fp32", "bf16"], True, steps + "decode", steps + "export", True],
        "ssl_ctc": ["asr", "ssl_ctc", ["fp32"], True, steps + "ssl_decode", steps + "ssl_export", True],
        "whisper": ["asr", "whisper", ["fp32"], True, steps + "whisper_decode", steps + "whisper_export", True],
        "kws_classifier": ["classification", "kws_classifier", ["fp32"], True, steps + "cls_decode", steps + "cls_export",
                           True],
        "tacotron2": ["tts", "tacotron2", ["fp32"], True, steps + "tts_synth", steps + "tacotron2_export", True],
        "fastspeech2": ["tts", "fastspeech2", ["fp32"], True, steps + "tts_fastspeech2_synth", steps + "tts_export",
                        True],
        "hifigan": ["tts", "hifigan", ["fp32"], True, None, None, True],
    }


def _unsupported_tts_recipe(tmp_path: Path) -> tuple[Path, str]:
    from spx.adapters.speechbrain import ADAPTER
    from spx.spec.models import TTS_FAMILIES

    missing = sorted(TTS_FAMILIES - ADAPTER.tasks.get("tts", set()))
    if not missing:
        pytest.skip("the speechbrain backend renders every TTS family")
    recipe = tmp_path / "tts.yaml"
    data = yaml.safe_load(RECIPE.read_text())
    data.update(task="tts", model={"family": missing[0]})
    for key in ("train", "valid", "test"):
        data["data"][key] = str((RECIPE.parent / data["data"][key]).resolve())
    recipe.write_text(yaml.safe_dump(data))
    return recipe, missing[0]


def test_unsupported_family_refused_before_anything_is_written(tmp_path):
    rd = tmp_path / "run"
    recipe, family = _unsupported_tts_recipe(tmp_path)
    proc = run_spx("run", "--backend", "speechbrain", recipe, "--run-dir", rd, "--dry-run")
    assert proc.returncode == 2
    assert "speechbrain" in proc.stderr and ("'tts'" in proc.stderr or family in proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len([l for l in proc.stderr.splitlines() if l.startswith("error:")]) == 1
    assert not rd.exists()


def test_bad_freeze_init_from_and_fp16_on_cpu_refused(tmp_path):
    cases = [
        (['freeze=["encoder.layers:7"]', f"init_from={tmp_path}"], "encoder.layers:7"),
        (['freeze=["encoder"]'], "init_from is not"),
        ([f"init_from={tmp_path / 'nope'}"], "does not exist"),
        ([f"init_from={tmp_path}"], "not a SpeechBrain model exported by spx"),
        (["training.precision=fp16", "resources.accelerator=cpu"], "fp16"),
    ]
    for i, (overrides, message) in enumerate(cases):
        rd = tmp_path / f"r{i}"
        proc = run_spx("run", "--backend", "speechbrain", RECIPE, "--run-dir", rd, "--dry-run", *overrides)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (overrides, proc.stderr)
        assert not rd.exists()


# ---------------------------------------------------------------- slow: real training
@pytest.mark.slow
def test_trained_run_decodes_held_out_voices(trained_run):
    rd = trained_run("speechbrain")
    metrics = json.loads((rd / "metrics.json").read_text())
    print(f"speechbrain WER {metrics['wer']:.3f} CER {metrics['cer']:.3f} RTFx {metrics.get('rtfx')}")
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
    export = Path(summary["exported_model"])
    assert (export / "spx_export.json").is_file() and (export / "Transformer.ckpt").is_file()
    assert (export / "hparams.yaml").is_file() and (export / "label_encoder.txt").is_file()
    assert summary["world_size"] == 1 and summary["params"] > 100_000
    assert Path(summary["best_checkpoint"]).name.startswith("CKPT+")
    assert (rd / "native" / "hparams.yaml").is_file() and (rd / "native" / "train.csv").is_file()


@pytest.mark.slow
def test_finetune_from_own_checkpoint_with_frozen_layers(trained_run, tmp_path):
    base = trained_run("speechbrain")
    source = Path(json.loads((base / "train_summary.json").read_text())["exported_model"])
    rd = tmp_path / "ft"
    run_spx("run", "--backend", "speechbrain", RECIPE, "--run-dir", rd, f"init_from={base}",
            'freeze=["encoder.layers:1"]', "training.epochs=1", "training.scheduler.warmup_steps=0",
            "training.optimizer.lr=0.0005", "eval.speed_repeats=1", check=True)
    assert _hparams(rd)["init_from"] == str(source) and _hparams(rd)["init_load_head"] is True
    log = (rd / "train.log").read_text()
    assert "initialized CNN, Transformer, ctc_lin, normalizer from" in log
    base_curve, ft_curve = _jsonl(base / "curve.jsonl"), _jsonl(rd / "curve.jsonl")
    # starts from the trained weights: its first epoch is far better than an untrained model's first epoch
    assert ft_curve[0]["valid_loss"] < 0.3 * base_curve[0]["valid_loss"]
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["frozen_parameters"] > 0 and summary["trainable_params"] < summary["params"]
    after_dir = Path(summary["exported_model"])
    before, after = _state(source / "Transformer.ckpt"), _state(after_dir / "Transformer.ckpt")
    frozen = [k for k in before if k.startswith("encoder.layers.0.")]
    trained = [k for k in before if k.startswith("encoder.layers.1.") and before[k].is_floating_point()]
    assert frozen and all(before[k].equal(after[k]) for k in frozen)
    assert any(not before[k].equal(after[k]) for k in trained)  # the rest did train
    metrics = json.loads((rd / "metrics.json").read_text())
    assert metrics["wer"] < 0.6


def _finished_epochs(ckpt_dir: Path) -> int:
    """Highest epoch with a complete checkpoint (spx marks it once SpeechBrain has written every file)."""
    best = 0
    for meta in ckpt_dir.glob("CKPT+*/CKPT.yaml"):
        if not (meta.parent / "spx_complete").exists():
            continue
        try:
            best = max(best, int((yaml.safe_load(meta.read_text()) or {}).get("epoch", 0)))
        except (yaml.YAMLError, ValueError, TypeError):
            continue
    return best


@pytest.mark.slow
def test_resume_after_kill_continues_from_checkpoint(tmp_path):
    rd = tmp_path / "resume"
    run_spx_and_crash(["run", "--backend", "speechbrain", RECIPE, "--run-dir", rd, "training.epochs=4",
                       "training.batch_size=16", "eval.speed_repeats=1"],
                      lambda: _finished_epochs(rd / "checkpoints") >= 2, "an epoch-2 checkpoint", timeout=1200)
    assert not (rd / "train_summary.json").exists()
    done = _finished_epochs(rd / "checkpoints")
    assert 2 <= done < 4
    run_spx("run", "--resume", rd, check=True)
    log = (rd / "train.log").read_text()
    assert f"at epoch {done} (optimizer step {done * 15})" in log and "resumed from checkpoint" in log
    curve = _jsonl(rd / "curve.jsonl")
    assert [r["epoch"] for r in curve] == [1, 2, 3, 4]  # continued: no epoch trained twice in the record
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["resumed_from_epoch"] == done and summary["steps"] == 4 * 15
    # the resumed process trained only the remaining epochs
    assert summary["ranks"][0]["updates"] == (4 - done) * 15
    assert json.loads((rd / "status.json").read_text())["state"] == "finished"


@pytest.mark.slow
def test_two_process_gloo_data_parallel(tmp_path):
    rd = tmp_path / "ddp"
    run_spx("run", "--backend", "speechbrain", RECIPE, "--run-dir", rd, "resources.devices=2",
            "resources.accelerator=cpu", "resources.threads=1", "training.epochs=2", "training.batch_size=16", "eval.speed_repeats=1", check=True)
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch"] == 16 * 2
    assert summary["distributed_backend"] == "gloo"
    # each rank saw half of the 240 utterances per epoch: 8 batches of <=16, so 2 epochs = 16 optimizer steps
    assert [r["rank"] for r in summary["ranks"]] == [0, 1] and all(r["batches"] == 16 for r in summary["ranks"])
    assert summary["steps"] == 16
    log = (rd / "train.log").read_text()
    assert "spx[rank 0/2]" in log and "spx[rank 1/2]" in log and "distributed backend gloo" in log
    ckpts = list((rd / "checkpoints").glob("CKPT+*"))
    assert 1 <= len(ckpts) <= 2 and (Path(summary["exported_model"]) / "Transformer.ckpt").is_file()
    assert len(_jsonl(rd / "curve.jsonl")) == 2
    assert json.loads((rd / "metrics.json").read_text())["utterances"] == 40
