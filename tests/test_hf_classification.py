"""task: classification on the hf backend (family ssl_classifier: AutoModelForAudioClassification over a pretrained
wav2vec2 / HuBERT / WavLM): rendering, refusals, the other backends' refusal of the family, and (slow) a tiny random
wav2vec2 (tests/hf_tiny.py) fine-tuned for real on the keyword-spotting demo corpus, decoded and scored, and a LoRA
variant whose trainable parameters are the adapters and the class layers only."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, read_jsonl, run_spx
from hf_tiny import SSL, tiny_models
from shared_artifacts import build_once, shared_dir
from test_classification import GOOD, _tiny_corpus, data_overrides
from spx.demo.kws_corpus import CLASSES
from spx.demo.resolve import KWS_DEMO

RECIPE = REPO / "recipes" / "tiny" / "ssl_classifier_tiny.yaml"
# measured 0.49 on the held-out voices (72 clips, 12 classes: chance 0.08) with the tiny random wav2vec2 after 6
# epochs; the bar checks the wiring (the model learned something), with a wide margin
MIN_ACCURACY = 0.2


def _fake_pretrained(folder: Path, model_type: str, layers: int = 2) -> Path:
    """A config.json alone: enough for render (which reads model_type and the layer count, never the weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "num_hidden_layers": layers}))
    return folder


def _spec(tmp_path: Path, *overrides: str, model_type: str = "wav2vec2"):
    from spx.spec import load_spec

    pre = _fake_pretrained(tmp_path / model_type, model_type)
    return load_spec(RECIPE, [*_tiny_corpus(tmp_path, GOOD), f"model.encoder.pretrained={pre}", *overrides])


# ---------------------------------------------------------------- fast
def test_hf_declares_the_classification_family():
    from spx.adapters import get_adapter
    from spx.spec.models import CLASSIFICATION_FAMILIES, PRETRAINED_FAMILIES

    assert get_adapter("hf").tasks["classification"] == {"ssl_classifier"}
    assert "ssl_classifier" in CLASSIFICATION_FAMILIES and "ssl_classifier" in PRETRAINED_FAMILIES


def test_renders_label_rows_training_arguments_and_lora(tmp_path):
    from spx.runner import render_run

    spec = _spec(tmp_path, "finetune.method=lora", "finetune.rank=4", "training.optimizer.pretrained_lr=0.0001",
                 "finetune.freeze_pretrained_steps=5", 'freeze=["feature_extractor"]')
    rd = render_run(spec, "hf", tmp_path / "run")
    native = rd / "native"
    settings = json.loads((native / "spx_hf.json").read_text())
    assert settings["family"] == "ssl_classifier" and settings["classes"] == ["no", "yes"]
    assert settings["projector_dim"] == 64 and settings["layer_weighting"] is False
    assert settings["lora_config"]["modules_to_save"] == ["projector", "classifier"]
    assert settings["lora_config"]["target_modules"] == ["q_proj", "v_proj"] and settings["lora_config"]["r"] == 4
    assert settings["optimizer"]["pretrained_lr"] == 0.0001 and settings["freeze_pretrained_steps"] == 5
    rows = read_jsonl(native / "train.jsonl")
    assert [r["label"] for r in rows] == ["yes", "no", "yes"] and "text" not in rows[0]
    args = json.loads((native / "training_args.json").read_text())
    assert args["metric_for_best_model"] == "loss" and args["per_device_train_batch_size"] == 16
    steps = json.loads((rd / "steps.json").read_text())
    assert [s["argv"][-2] for s in steps] == ["spx.adapters.hf.steps.train_cls", "spx.adapters.hf.steps.cls_decode"]
    assert [(s["launch"], s["timed"]) for s in steps] == [("torchrun", False), ("single", True)]


@pytest.mark.parametrize("overrides, model_type, key, message", [
    ([], "bert", "model.encoder.pretrained", "ssl_classifier takes wav2vec2, hubert, wavlm"),
    (["finetune.method=lora", "model.encoder.layer_weighting=true"], "wav2vec2", "model.encoder.layer_weighting",
     "modules_to_save"),
    (["training.early_stopping.monitor=valid_wer"], "wav2vec2", "training.early_stopping.monitor", "no WER"),
    (["finetune.method=adapter"], "wav2vec2", "finetune.method", "it has: full, lora"),
    (['freeze=["encoder.layers:3"]'], "wav2vec2", "freeze", "the pretrained encoder has 2 layers"),
    (["backends.hf.bogus=1"], "wav2vec2", "backends.hf", "unknown key(s) ['bogus']"),
])
def test_refuses_what_it_cannot_do(tmp_path, overrides, model_type, key, message):
    from spx.adapters import get_adapter
    from spx.errors import SpxError

    with pytest.raises(SpxError) as err:
        get_adapter("hf").supports(_spec(tmp_path, *overrides, model_type=model_type))
    assert err.value.where == key and message in str(err.value), (err.value.where, str(err.value))


def test_bad_labels_refused_before_anything_is_written(tmp_path):
    pre = _fake_pretrained(tmp_path / "w2v", "wav2vec2")
    data = _tiny_corpus(tmp_path, {**GOOD, "test": [{"label": "yes"}, {"label": "maybe"}]})
    rd = tmp_path / "run"
    proc = run_spx("run", "--backend", "hf", RECIPE, "--run-dir", rd, f"model.encoder.pretrained={pre}", *data)
    assert proc.returncode == 2 and "'maybe'" in proc.stderr and "Traceback" not in proc.stderr
    assert not rd.exists()


@pytest.mark.parametrize("backend", ["nemo", "speechbrain", "espnet"])
def test_other_backends_refuse_the_family_and_say_where_it_runs(tmp_path, backend):
    from spx.adapters import get_adapter
    from spx.errors import SpxError

    with pytest.raises(SpxError) as err:
        get_adapter(backend).supports(_spec(tmp_path))
    assert err.value.where == "model.family"
    assert f"spx's {backend!r} backend has no 'ssl_classifier' model for task 'classification'" in str(err.value)
    assert "kws_classifier" in str(err.value)  # what it has instead


# ---------------------------------------------------------------- slow: real fine-tuning of tiny models
@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> Path:
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="session")
def hf_cls_run(hf_models, kws_corpus, tmp_path_factory) -> Path:
    """The tiny wav2vec2 fine-tuned as a keyword classifier on the demo KWS corpus (once per test run)."""
    def build(folder: Path) -> None:
        run_spx("run", "--backend", "hf", RECIPE, "--run-dir", folder / "run", "--force",
                f"model.encoder.pretrained={hf_models / 'wav2vec2'}", *data_overrides(kws_corpus), check=True)

    return build_once(shared_dir(tmp_path_factory, "hf_cls_run"), build) / "run"


@pytest.mark.slow
def test_ssl_classifier_fine_tunes_classifies_and_scores(hf_cls_run):
    rd = hf_cls_run
    metrics = json.loads((rd / "metrics.json").read_text())
    print(f"hf ssl_classifier tiny: accuracy {metrics['accuracy']:.3f} macro-F1 {metrics['macro_f1']:.3f}")
    assert metrics["utterances"] == len(CLASSES) * KWS_DEMO["test_per_class"] and metrics["classes"] == len(CLASSES)
    assert metrics["accuracy"] >= MIN_ACCURACY
    rows = read_jsonl(rd / "hyps.jsonl")
    for r in rows:
        scores = list(r["scores"].values())
        assert r["ref_label"] in CLASSES and r["label"] == next(iter(r["scores"])) and r["test_set"] == "test"
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    curve = read_jsonl(rd / "curve.jsonl")
    assert [c["epoch"] for c in curve] == list(range(1, 7)) and all(0 <= c["valid_acc"] <= 1 for c in curve)
    assert curve[-1]["train_loss"] < curve[0]["train_loss"] and curve[-1]["valid_loss"] < curve[0]["valid_loss"]
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["model_type"] == "wav2vec2" and summary["classes"] == len(CLASSES)
    assert summary["params"] == summary["trainable_params"] > 50_000
    export = Path(summary["exported_model"])
    config = json.loads((export / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForSequenceClassification"] and config["classifier_proj_size"] == 64
    assert [config["id2label"][str(i)] for i in range(len(CLASSES))] == sorted(CLASSES)
    speed = json.loads((rd / "speed.json").read_text())
    assert speed["utterances"] == len(rows) and speed["decode_seconds"][0] > 0
    # the family's model loader (the bench's judge, `spx serve`) agrees with the decode step
    first = min(rows, key=lambda r: r["duration"])
    code = ("import importlib, json, sys; from spx.rundir import RunDir; from spx.manifests import read_manifest; "
            "from spx.adapters import get_adapter; from spx.adapters.common.child import load_audio; "
            "rd = RunDir(sys.argv[1]); spec = rd.spec; "
            "classify = importlib.import_module(get_adapter('hf').inference_module(spec)).load_classifier(rd.path, 'cpu'); "
            "u = [u for u in read_manifest(spec.test_sets[0]) if u.id == sys.argv[2]][0]; "
            "print(json.dumps(classify([load_audio(u, 16000)])[0]))")
    proc = subprocess.run([sys.executable, "-c", code, str(rd), first["id"]], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    label, scores = json.loads(proc.stdout.strip().splitlines()[-1])
    assert label == first["label"] and sorted(scores) == sorted(CLASSES) and abs(sum(scores.values()) - 1) < 1e-3
    # not to the last digit: the wav2vec2-base layout's group-norm feature encoder normalizes over the padded batch,
    # so a clip alone scores a little differently than in the decode step's batch (measured: 0.010)
    assert scores[label] == pytest.approx(first["scores"][label], abs=0.05)


@pytest.mark.slow
def test_lora_trains_adapters_and_class_layers_only(hf_models, kws_corpus, tmp_path):
    rd = tmp_path / "lora"
    run_spx("run", "--backend", "hf", RECIPE, "--run-dir", rd, f"model.encoder.pretrained={hf_models / 'hubert'}",
            *data_overrides(kws_corpus), "finetune.method=lora", "finetune.rank=4", "training.max_steps=5",
            "training.scheduler.warmup_steps=0", "eval.warmup_batches=0", check=True)
    summary = json.loads((rd / "train_summary.json").read_text())
    hidden, layers, proj, classes = SSL["hidden_size"], SSL["num_hidden_layers"], 64, len(CLASSES)
    lora = layers * 2 * (4 * hidden + hidden * 4)  # q_proj and v_proj per layer: A (r x in) + B (out x r)
    head = hidden * proj + proj + proj * classes + classes  # projector + classifier
    assert summary["model_type"] == "hubert" and summary["lora_params"] == lora
    assert summary["trainable_params"] == lora + head
    assert summary["base_weights_sha256_before"] == summary["base_weights_sha256_after"]
    export = Path(summary["exported_model"])
    info = json.loads((export / "spx_export.json").read_text())
    assert info["method"] == "lora" and info["base_model"] == str(hf_models / "hubert")
    from safetensors.numpy import load_file

    adapter = load_file(str(export / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k or "projector" in k or "classifier" in k for k in adapter)
    assert any("lora_B" in k and abs(v).sum() > 0 for k, v in adapter.items())  # the adapters did train
    assert json.loads((rd / "metrics.json").read_text())["utterances"] == len(CLASSES) * KWS_DEMO["test_per_class"]
