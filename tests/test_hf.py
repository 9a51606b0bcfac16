"""Hugging Face Transformers backend (spx/adapters/hf): TrainingArguments rendering, the spec's fine-tuning keys and
their refusals, and (slow) real fine-tuning of tiny random wav2vec2 / HuBERT / WavLM / Whisper models built offline
(tests/hf_tiny.py): decode and score, fine-tune from an own run, LoRA, resume after kill, 2-process gloo DDP."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, run_spx, run_spx_and_crash
from hf_tiny import SSL, tiny_models
from shared_artifacts import build_once, shared_dir

CTC_RECIPE = REPO / "recipes" / "tiny" / "ssl_ctc_tiny.yaml"
WHISPER_RECIPE = REPO / "recipes" / "tiny" / "whisper_tiny.yaml"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fake_pretrained(folder: Path, model_type: str, layers: int = 2) -> Path:
    """A config.json alone: enough for render (which reads model_type and the layer count, never the weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = "encoder_layers" if model_type == "whisper" else "num_hidden_layers"
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, key: layers}))
    return folder


def _render(tmp_path: Path, recipe: Path, *overrides: str):
    from spx.runner import render_run
    from spx.spec import load_spec

    return render_run(load_spec(recipe, list(overrides)), "hf", tmp_path / "run")


# ---------------------------------------------------------------- fast
def test_registry_and_adapter_declare_hf():
    from spx.adapters import get_adapter
    from spx.registry import BACKENDS

    assert BACKENDS["hf"].probe_module == "transformers" and BACKENDS["hf"].distribution == "transformers"
    assert get_adapter("hf").tasks == {"asr": {"ssl_ctc", "whisper"}, "classification": {"ssl_classifier"}}


def test_ssl_ctc_renders_training_arguments_and_lora(tmp_path):
    pre = _fake_pretrained(tmp_path / "w2v", "wav2vec2")
    rd = _render(tmp_path, CTC_RECIPE, f"model.encoder.pretrained={pre}", "finetune.method=lora", "finetune.rank=4",
                 "finetune.alpha=8", "training.optimizer.pretrained_lr=0.0001", "finetune.freeze_pretrained_steps=10",
                 "training.early_stopping.monitor=valid_wer", "training.early_stopping.patience=2",
                 "training.grad_accumulation=2", 'freeze=["feature_extractor"]', "backends.hf.merge_lora=true",
                 "backends.hf.training_args.logging_first_step=true")
    native = rd / "native"
    args = json.loads((native / "training_args.json").read_text())
    assert args["learning_rate"] == 0.002 and args["lr_scheduler_type"] == "cosine_with_min_lr"
    assert args["lr_scheduler_kwargs"] == {"min_lr": 0.0001} and args["warmup_steps"] == 20
    assert args["gradient_accumulation_steps"] == 2 and args["metric_for_best_model"] == "wer"
    assert args["save_total_limit"] == 2 and args["use_cpu"] is True and args["ddp_backend"] is None
    assert args["logging_first_step"] is True  # backends.hf.training_args merged untouched
    settings = json.loads((native / "spx_hf.json").read_text())
    assert settings["lora_config"] == {"r": 4, "lora_alpha": 8.0, "lora_dropout": 0.05, "bias": "none",
                                       "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]}
    assert settings["optimizer"]["pretrained_lr"] == 0.0001 and settings["freeze_pretrained_steps"] == 10
    assert settings["early_stopping"] == {"monitor": "valid_wer", "patience": 2} and settings["merge_lora"] is True
    vocab = json.loads((native / "vocab.json").read_text())
    assert vocab["[PAD]"] == 0 and "|" in vocab and " " not in vocab and "e" in vocab
    assert len(_jsonl(native / "train.jsonl")) == 240
    steps = json.loads((rd / "steps.json").read_text())
    assert [(s["name"], s["launch"], s["timed"]) for s in steps] == [("train", "torchrun", False),
                                                                     ("decode", "single", True)]
    assert steps[0]["argv"][-2:] == ["spx.adapters.hf.steps.train_ctc", str(rd.path)]


def test_whisper_renders_seq2seq_arguments_and_ddp_backend(tmp_path):
    pre = _fake_pretrained(tmp_path / "wh", "whisper")
    rd = _render(tmp_path, WHISPER_RECIPE, f"model.pretrained={pre}", "decoding.strategy=beam",
                 "decoding.beam_size=3", "resources.devices=2", "training.scheduler.name=noam")
    args = json.loads((rd / "native" / "training_args.json").read_text())
    assert args["generation_num_beams"] == 3 and args["generation_max_length"] == 24
    assert args["ddp_backend"] == "gloo" and args["lr_scheduler_type"] == "inverse_sqrt"
    assert args["predict_with_generate"] is False
    settings = json.loads((rd / "native" / "spx_hf.json").read_text())
    assert (settings["language"], settings["task"], settings["num_beams"]) == ("en", "transcribe", 3)


def test_bpe_tokenizer_is_trained_by_the_train_step_not_rendered_as_a_vocabulary(tmp_path):
    pre = _fake_pretrained(tmp_path / "w2v", "wav2vec2")
    rd = _render(tmp_path, CTC_RECIPE, f"model.encoder.pretrained={pre}", "tokenizer.type=bpe",
                 "tokenizer.vocab_size=32")
    settings = json.loads((rd / "native" / "spx_hf.json").read_text())
    assert settings["tokenizer"]["type"] == "bpe" and settings["tokenizer"]["vocab_size"] == 32
    assert not (rd / "native" / "vocab.json").exists()


@pytest.mark.slow  # imports Transformers' Trainer (tens of seconds), trains nothing
def test_trainer_optimizer_groups_pretrained_lr_and_the_held_pretrained_part(tmp_path):
    """spx's Trainer subclass on a real Trainer: the new head at lr, the pretrained part at pretrained_lr, and the
    pretrained part's lr held at 0 for freeze_pretrained_steps optimizer steps."""
    from transformers import Trainer, TrainingArguments, Wav2Vec2Config, Wav2Vec2ForCTC

    from spx.adapters.hf.steps.common import make_trainer_class

    model = Wav2Vec2ForCTC(Wav2Vec2Config(**SSL))
    opt = {"name": "adamw", "lr": 1e-3, "pretrained_lr": 1e-4, "weight_decay": 0.01, "betas": [0.9, 0.98]}
    cls = make_trainer_class(Trainer, opt, ("lm_head",), hold_steps=3)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3,
                             lr_scheduler_type="constant_with_warmup", warmup_steps=0)
    trainer = cls(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    groups = trainer.optimizer.param_groups
    head = [g for g in groups if not g["spx_pretrained"]]
    pretrained = [g for g in groups if g["spx_pretrained"]]
    assert sum(len(g["params"]) for g in head) == 2  # lm_head weight and bias
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert {g["weight_decay"] for g in groups} == {0.0, 0.01}
    seen = []
    for _ in range(5):
        seen.append(([g["lr"] for g in head], [g["lr"] for g in pretrained]))
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert all(h == [1e-3] * len(head) for h, _ in seen)
    assert [set(p) for _, p in seen] == [{0.0}, {0.0}, {0.0}, {1e-4}, {1e-4}]


@pytest.mark.parametrize("overrides, key, message", [
    (["finetune.method=adapter"], "finetune.method", "exist only in wav2vec2 models with do_stable_layer_norm"),
    (["model.encoder.layer_weighting=true"], "model.encoder.layer_weighting", "layer_weighting is not rendered"),
    (["decoding.strategy=beam"], "decoding.strategy", "greedy CTC"),
    (['freeze=["encoder.layers:3"]'], "freeze", "the pretrained encoder has 2 layers"),
    (["training.batch_seconds=20", "training.batch_size=null"], "training.batch_seconds", "Trainer batches by count"),
    (["backends.hf.bogus=1"], "backends.hf", "unknown key(s) ['bogus']"),
    (["augmentation.speed_perturb=[0.9,1.0,1.1]"], "augmentation.speed_perturb", "not rendered by the hf backend"),
])
def test_ssl_ctc_refuses_what_it_cannot_do(tmp_path, overrides, key, message):
    from spx.adapters import get_adapter
    from spx.errors import SpxError
    from spx.spec import load_spec

    pre = _fake_pretrained(tmp_path / "w2v", "wav2vec2")
    spec = load_spec(CTC_RECIPE, [f"model.encoder.pretrained={pre}", *overrides])
    with pytest.raises(SpxError) as err:
        get_adapter("hf").supports(spec)
    assert err.value.where == key and message in str(err.value), (err.value.where, str(err.value))


def test_wrong_model_kind_and_whisper_only_settings_refused(tmp_path):
    from spx.adapters import get_adapter
    from spx.errors import SpxError
    from spx.spec import load_spec

    bert = _fake_pretrained(tmp_path / "bert", "bert")
    with pytest.raises(SpxError, match="is a 'bert' model; ssl_ctc takes wav2vec2, hubert, wavlm"):
        get_adapter("hf").supports(load_spec(CTC_RECIPE, [f"model.encoder.pretrained={bert}"]))
    w2v = _fake_pretrained(tmp_path / "w2v", "wav2vec2")
    with pytest.raises(SpxError, match="not whisper"):
        get_adapter("hf").supports(load_spec(WHISPER_RECIPE, [f"model.pretrained={w2v}"]))
    wh = _fake_pretrained(tmp_path / "wh", "whisper")
    with pytest.raises(SpxError) as err:  # Whisper has no new head: one learning rate
        get_adapter("hf").supports(load_spec(WHISPER_RECIPE, [f"model.pretrained={wh}",
                                                              "training.optimizer.pretrained_lr=0.0001"]))
    assert err.value.where == "training.optimizer.pretrained_lr"
    with pytest.raises(SpxError) as err:
        get_adapter("hf").supports(load_spec(WHISPER_RECIPE, [f"model.pretrained={wh}", "tokenizer.type=bpe",
                                                              "tokenizer.vocab_size=64"]))
    assert err.value.where == "tokenizer.type"


def test_families_without_a_pretrained_part_refuse_the_fine_tuning_keys(tmp_path):
    """conformer_ctc trains from scratch: the keys are refused by name in the spec; with init_from, the backends
    that run conformer_ctc refuse LoRA (their families declare full fine-tuning only)."""
    from spx.adapters import get_adapter
    from spx.errors import SpxError
    from spx.spec import load_spec

    recipe = REPO / "recipes" / "conformer_ctc.yaml"
    for key, value in (("finetune.method", "lora"), ("training.optimizer.pretrained_lr", "0.0001"),
                       ("finetune.freeze_pretrained_steps", "5")):
        with pytest.raises(SpxError) as err:
            load_spec(recipe, [f"{key}={value}"])
        assert f"{key} needs a pretrained model" in str(err.value) and "conformer_ctc.yaml:" in err.value.where
    with pytest.raises(SpxError, match="target_modules applies to method lora only"):
        load_spec(recipe, ["finetune.target_modules=[q_proj]"])
    spec = load_spec(recipe, ["finetune.method=lora", f"init_from={tmp_path}"])
    for backend in ("nemo", "speechbrain", "espnet"):
        with pytest.raises(SpxError) as err:
            get_adapter(backend).supports(spec)
        assert err.value.where == "finetune.method" and "lora is not supported" in str(err.value), backend
    with pytest.raises(SpxError) as err:
        get_adapter("hf").supports(spec)
    assert err.value.where == "model.family"


def test_cli_refusal_exits_2_and_writes_nothing(tmp_path):
    pre = _fake_pretrained(tmp_path / "w2v", "wav2vec2")
    rd = tmp_path / "run"
    proc = run_spx("run", "--backend", "hf", CTC_RECIPE, "--run-dir", rd, f"model.encoder.pretrained={pre}",
                   "decoding.strategy=beam")
    assert proc.returncode == 2 and "decoding.strategy" in proc.stderr and "Traceback" not in proc.stderr
    assert not rd.exists()


# ---------------------------------------------------------------- slow: real fine-tuning of tiny models
@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> Path:
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="session")
def hf_ctc_run(hf_models, tmp_path_factory) -> Path:
    """The tiny wav2vec2 fine-tuned on the demo corpus (once per test run)."""
    def build(folder: Path) -> None:
        run_spx("run", "--backend", "hf", CTC_RECIPE, "--run-dir", folder / "run", "--force",
                f"model.encoder.pretrained={hf_models / 'wav2vec2'}", check=True)

    return build_once(shared_dir(tmp_path_factory, "hf_ctc_run"), build) / "run"


@pytest.mark.slow
def test_encoder_output_equals_transformers_forward(hf_models, tmp_path):
    """The parity test of the pretrained-models issue, hf's part (SpeechBrain's and ESPnet's are in their
    *_pretrained test files, against the same reference): the model the train step loads (load_ctc with the rendered
    settings, a new CTC head) computes, below its head, what transformers.AutoModel computes from the same folder on
    the same utterance, normalized by the feature extractor the train step uses."""
    import torch
    from transformers import AutoModel

    from spx.adapters.common.child import load_audio
    from spx.adapters.hf.steps.common import feature_extractor
    from spx.adapters.hf.steps.models import char_text, load_ctc
    from spx.manifests import read_manifest

    wav = load_audio(read_manifest(REPO / "spx" / "demo" / "corpus" / "test.jsonl")[0], 16000)
    for kind in ("wav2vec2_s320", "hubert_s320", "wavlm_s320"):
        folder = hf_models / kind
        rd = _render(tmp_path / kind, CTC_RECIPE, f"model.encoder.pretrained={folder}")
        settings = json.loads((rd / "native" / "spx_hf.json").read_text())
        model = load_ctc(str(folder), char_text(rd / "native" / "vocab.json"), settings, keep_head=False).eval()
        inputs = feature_extractor(str(folder))(wav, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            ours = model.base_model(inputs.input_values, attention_mask=inputs.attention_mask).last_hidden_state
            theirs = AutoModel.from_pretrained(folder).eval()(inputs.input_values,
                                                              attention_mask=inputs.attention_mask).last_hidden_state
        assert ours.shape == theirs.shape == (1, len(wav) // 320, SSL["hidden_size"]), kind
        assert torch.equal(ours, theirs), (kind, (ours - theirs).abs().max().item())


@pytest.mark.slow
def test_ssl_ctc_fine_tunes_decodes_and_scores(hf_ctc_run):
    rd = hf_ctc_run
    metrics = json.loads((rd / "metrics.json").read_text())
    print(f"hf ssl_ctc tiny: WER {metrics['wer']:.3f} CER {metrics['cer']:.3f} RTFx {metrics.get('rtfx')}")
    assert metrics["utterances"] == 40 and 0.0 <= metrics["cer"] <= 1.0
    curve = _jsonl(rd / "curve.jsonl")
    assert [r["epoch"] for r in curve] == [1, 2, 3, 4] and [r["step"] for r in curve] == [30, 60, 90, 120]
    assert curve[-1]["train_loss"] < 0.5 * curve[0]["train_loss"] and curve[-1]["valid_loss"] < curve[0]["valid_loss"]
    assert all(r["valid_wer"] >= 0.0 for r in curve)
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["model_type"] == "wav2vec2" and summary["steps"] == 120 and summary["world_size"] == 1
    assert summary["params"] == summary["trainable_params"] > 50_000 and summary["tokenizer"] == "char"
    export = Path(summary["exported_model"])
    assert {"config.json", "model.safetensors", "vocab.json", "preprocessor_config.json", "spx_export.json"} <= {
        p.name for p in export.iterdir()}
    assert json.loads((export / "config.json").read_text())["vocab_size"] == summary["vocab_size"]
    assert (rd / "native" / "training_args.json").is_file()
    assert len(list((rd / "checkpoints").glob("checkpoint-*"))) <= 2  # save_total_limit = keep_checkpoints


@pytest.mark.slow
def test_fine_tune_from_own_run_keeps_the_head(hf_ctc_run, tmp_path):
    rd = tmp_path / "ft"
    run_spx("run", "--backend", "hf", CTC_RECIPE, "--run-dir", rd, f"init_from={hf_ctc_run}",
            f"model.encoder.pretrained={json.loads((hf_ctc_run / 'native' / 'spx_hf.json').read_text())['pretrained']}",
            "training.epochs=1", 'freeze=["feature_extractor"]', "training.optimizer.pretrained_lr=0.0005",
            "training.scheduler.warmup_steps=0", check=True)
    settings = json.loads((rd / "native" / "spx_hf.json").read_text())
    assert settings["keep_head"] is True  # the demo text's characters are the base run's vocabulary
    base, ft = _jsonl(hf_ctc_run / "curve.jsonl"), _jsonl(rd / "curve.jsonl")
    assert ft[0]["valid_loss"] < base[0]["valid_loss"]  # starts from the trained model, not from scratch
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["init_from"] == str(hf_ctc_run / "checkpoints" / "export") and summary["frozen_parameters"] > 0
    assert summary["trainable_params"] < summary["params"]
    assert json.loads((rd / "metrics.json").read_text())["utterances"] == 40


@pytest.mark.slow
def test_lora_trains_adapters_and_head_only_and_leaves_the_base_bit_identical(hf_models, tmp_path):
    rd = tmp_path / "lora"
    run_spx("run", "--backend", "hf", CTC_RECIPE, "--run-dir", rd, f"model.encoder.pretrained={hf_models / 'hubert'}",
            "finetune.method=lora", "finetune.rank=4", "training.epochs=1", "backends.hf.merge_lora=true", check=True)
    summary = json.loads((rd / "train_summary.json").read_text())
    hidden, layers, vocab = SSL["hidden_size"], SSL["num_hidden_layers"], summary["vocab_size"]
    lora = layers * 2 * (4 * hidden + hidden * 4)  # q_proj and v_proj per layer: A (r x in) + B (out x r)
    head = hidden * vocab + vocab
    assert summary["model_type"] == "hubert" and summary["lora_params"] == lora
    assert summary["trainable_params"] == lora + head
    assert summary["base_weights_sha256_before"] == summary["base_weights_sha256_after"]
    export = Path(summary["exported_model"])
    info = json.loads((export / "spx_export.json").read_text())
    assert info["method"] == "lora" and info["base_model"] == str(hf_models / "hubert")
    from safetensors.numpy import load_file

    adapter = load_file(str(export / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k or "lm_head" in k for k in adapter)
    assert any("lora_B" in k and abs(v).sum() > 0 for k, v in adapter.items())  # the adapters did train (B starts at 0)
    merged = load_file(str(export / "merged" / "model.safetensors"))
    base = load_file(str(hf_models / "hubert" / "model.safetensors"))
    q = "encoder.layers.0.attention.q_proj.weight"
    k = "encoder.layers.0.attention.k_proj.weight"
    assert not (merged["hubert." + q] == base[q]).all() and (merged["hubert." + k] == base[k]).all()
    assert json.loads((rd / "metrics.json").read_text())["utterances"] == 40
    # full fine-tuning from the LoRA run: base + adapter merged on load, and every weight trains again
    full = tmp_path / "full_from_lora"
    run_spx("run", "--backend", "hf", CTC_RECIPE, "--run-dir", full, f"model.encoder.pretrained={hf_models / 'hubert'}",
            f"init_from={rd}", "training.max_steps=3", check=True)
    again = json.loads((full / "train_summary.json").read_text())
    assert again["trainable_params"] == again["params"] == summary["params"] - lora - head and again["steps"] == 3
    assert "+ LoRA adapter" in (full / "train.log").read_text()


@pytest.mark.slow
def test_attention_adapters_train_with_the_head_and_leave_the_base_bit_identical(hf_models, tmp_path):
    """finetune.method adapter: Transformers' MMS attention adapters (adapter_attn_dim) in a stable-layer-norm
    wav2vec2; the base frozen (freeze_base_model), the adapters and the new head train."""
    rd = tmp_path / "adapter"
    run_spx("run", "--backend", "hf", CTC_RECIPE, "--run-dir", rd,
            f"model.encoder.pretrained={hf_models / 'wav2vec2_stable'}", "finetune.method=adapter", "finetune.rank=8",
            "training.max_steps=5", check=True)
    summary = json.loads((rd / "train_summary.json").read_text())
    hidden, vocab = SSL["hidden_size"], summary["vocab_size"]
    per_layer = 2 * hidden + (hidden * 8 + 8) + (8 * hidden + hidden)  # LayerNorm, down, up
    assert summary["adapter_params"] == SSL["num_hidden_layers"] * per_layer
    assert summary["trainable_params"] == summary["adapter_params"] + hidden * vocab + vocab
    assert summary["base_weights_sha256_before"] == summary["base_weights_sha256_after"]
    export = Path(summary["exported_model"])
    assert json.loads((export / "config.json").read_text())["adapter_attn_dim"] == 8
    assert json.loads((rd / "metrics.json").read_text())["utterances"] == 40


def _complete_steps(ckpt_dir: Path) -> int:
    done = [int(d.name.split("-")[1]) for d in ckpt_dir.glob("checkpoint-*") if (d / "spx_complete").exists()]
    return max(done, default=0)


@pytest.mark.slow
def test_resume_after_kill_continues_from_checkpoint(hf_models, tmp_path):
    rd = tmp_path / "resume"
    run_spx_and_crash(["run", "--backend", "hf", CTC_RECIPE, "--run-dir", rd,
                       f"model.encoder.pretrained={hf_models / 'wavlm'}", "training.epochs=3", "training.batch_size=16"],
                      lambda: _complete_steps(rd / "checkpoints") >= 15, "a first-epoch checkpoint", settle=0)
    assert not (rd / "train_summary.json").exists()
    done = _complete_steps(rd / "checkpoints")
    assert done in (15, 30)
    run_spx("run", "--resume", rd, check=True)
    log = (rd / "train.log").read_text()
    assert f"resuming from checkpoint {rd / 'checkpoints' / f'checkpoint-{done}'} (optimizer step {done})" in log
    assert [r["epoch"] for r in _jsonl(rd / "curve.jsonl")] == [1, 2, 3]  # no epoch recorded twice
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == done and summary["steps"] == 45 and summary["model_type"] == "wavlm"
    assert summary["ranks"][0]["updates"] == 45 - done  # the resumed process trained only what was left
    assert json.loads((rd / "status.json").read_text())["state"] == "finished"


@pytest.mark.slow
def test_two_process_gloo_data_parallel(hf_models, tmp_path):
    rd = tmp_path / "ddp"
    run_spx("run", "--backend", "hf", CTC_RECIPE, "--run-dir", rd, f"model.encoder.pretrained={hf_models / 'wav2vec2'}",
            "resources.devices=2", "training.epochs=1", check=True)
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["distributed_backend"] == "gloo"
    assert summary["effective_batch"] == 16
    # each rank read half of the 240 utterances: 15 batches of 8, so one epoch = 15 optimizer steps
    assert [r["rank"] for r in summary["ranks"]] == [0, 1] and all(r["batches"] == 15 for r in summary["ranks"])
    assert summary["steps"] == 15
    log = (rd / "train.log").read_text()
    assert "spx[rank 0/2]" in log and "spx[rank 1/2]" in log
    assert json.loads((rd / "metrics.json").read_text())["utterances"] == 40


@pytest.fixture(scope="session")
def hf_whisper_run(hf_models, tmp_path_factory) -> Path:
    """The tiny Whisper fine-tuned 2 epochs on the demo corpus by Seq2SeqTrainer, decoded with beam search (once per
    test run; tests/test_whisper_deploy.py exports it)."""
    def build(folder: Path) -> None:
        run_spx("run", "--backend", "hf", WHISPER_RECIPE, "--run-dir", folder / "run", "--force",
                f"model.pretrained={hf_models / 'whisper'}", "decoding.strategy=beam", "decoding.beam_size=2",
                check=True)

    return build_once(shared_dir(tmp_path_factory, "hf_whisper_run"), build) / "run"


@pytest.mark.slow
def test_whisper_fine_tunes_and_decodes_with_beam_search(hf_whisper_run):
    rd = hf_whisper_run
    metrics = json.loads((rd / "metrics.json").read_text())
    print(f"hf whisper tiny: WER {metrics['wer']:.3f} CER {metrics['cer']:.3f} RTFx {metrics.get('rtfx')}")
    assert metrics["utterances"] == 40
    curve = _jsonl(rd / "curve.jsonl")
    assert [r["epoch"] for r in curve] == [1, 2] and curve[-1]["valid_loss"] < curve[0]["valid_loss"]
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["model_type"] == "whisper" and summary["language"] == "en" and summary["steps"] == 60
    export = Path(summary["exported_model"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in export.iterdir()}
    assert "(whisper, beam, cpu, float32" in (rd / "logs" / "decode.log").read_text()
    assert len(_jsonl(rd / "hyps.jsonl")) == 40
