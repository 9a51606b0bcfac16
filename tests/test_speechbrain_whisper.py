"""SpeechBrain whisper (spx/adapters/speechbrain/whisper.py): a pretrained Whisper loaded through SpeechBrain's
Transformers integration and fine-tuned natively (NLL on the next tokens, S2SWhisper searchers). Fast: the rendered
hyperpyyaml and the refusals. Slow: the tiny random Whisper built offline (tests/hf_tiny.py) fine-tuned on the demo
corpus, decoded with beam search and scored; the decoder prefix and the frozen front-end checked."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, run_spx
from hf_tiny import tiny_models
from shared_artifacts import build_once, shared_dir

RECIPE = REPO / "recipes" / "tiny" / "whisper_tiny.yaml"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fake_whisper(folder: Path, model_type: str = "whisper") -> Path:
    """config.json alone: enough for render (it reads the model type and the encoder's layer count)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "encoder_layers": 2}))
    return folder


def _spec(*overrides: str):
    from spx.spec import load_spec

    return load_spec(RECIPE, list(overrides))


# ---------------------------------------------------------------- fast
def test_adapter_declares_whisper_with_its_loader():
    from spx.adapters import get_adapter

    sb = get_adapter("speechbrain")
    assert "whisper" in sb.tasks["asr"]
    assert sb.inference_module(_spec()) == "spx.adapters.speechbrain.steps.whisper_decode"


def test_renders_the_integration_searchers_and_freezing(tmp_path):
    from spx.runner import render_run

    pre = _fake_whisper(tmp_path / "wh")
    rd = render_run(_spec(f"model.pretrained={pre}", "model.language=de", "model.task=translate",
                          "decoding.strategy=beam", "decoding.beam_size=3", 'freeze=["encoder"]'),
                    "speechbrain", tmp_path / "run")
    text = (rd / "native" / "hparams.yaml").read_text()
    assert "whisper_base: !new:speechbrain.integrations.huggingface.whisper.Whisper\n" in text
    assert f"pretrained_source: {json.dumps(str(pre))}" in text
    assert 'language: "de"' in text and "whisper_task: translate" in text
    assert "freeze: false" in text and "freeze_encoder: true" in text and "encoder_only: false" in text
    assert "valid_search: !new:speechbrain.decoders.seq2seq.S2SWhisperGreedySearcher\n    model: !ref <whisper_base>" in text
    assert ("test_search: !new:speechbrain.decoders.seq2seq.S2SWhisperBeamSearcher\n    module: [!ref <whisper_base>]"
            in text) and "beam_size: 3" in text
    assert f"max_decode_ratio: {24 / 1500!r}" in text  # model.max_new_tokens 24 over 1500 encoder frames
    assert "nll_loss: !name:speechbrain.nnet.losses.nll_loss" in text and "opt_class: !name:torch.optim.AdamW" in text
    greedy = render_run(_spec(f"model.pretrained={pre}"), "speechbrain", tmp_path / "greedy")
    text = (greedy / "native" / "hparams.yaml").read_text()
    assert "test_search: !new:speechbrain.decoders.seq2seq.S2SWhisperGreedySearcher" in text
    assert "freeze_encoder: false" in text and "\nwhisper: !ref <whisper_base>\n" in text


def test_renders_lora_as_an_adapted_model_the_searchers_use_the_integration(tmp_path):
    from spx.runner import render_run

    pre = _fake_whisper(tmp_path / "wh")
    rd = render_run(_spec(f"model.pretrained={pre}", "finetune.method=lora", "finetune.rank=4",
                          'finetune.target_modules=["q_proj"]', "finetune.dropout=0"), "speechbrain", tmp_path / "run")
    text = (rd / "native" / "hparams.yaml").read_text()
    assert "whisper: !new:speechbrain.nnet.adapters.AdaptedModel\n    model_to_adapt: !ref <whisper_base>" in text
    assert "adapter_class: !name:speechbrain.nnet.adapters.LoRA" in text and 'target_layers: ["*.q_proj"]' in text
    assert 'adapter_kwargs: {"rank": 4, "alpha": 16.0}' in text and "manual_adapter_insertion: True" in text
    assert "valid_search: !new:speechbrain.decoders.seq2seq.S2SWhisperGreedySearcher\n    model: !ref <whisper_base>" in text


@pytest.mark.parametrize("overrides, key, message", [
    (["finetune.method=adapter"], "finetune.method", "HoulsbyAdapterLinear"),
    (["finetune.method=lora", 'freeze=["encoder"]'], "freeze", "AdaptedModel keeps every base weight frozen"),
    (["finetune.method=lora", "backends.speechbrain.merge_lora=true"], "backends.speechbrain.merge_lora",
     "not wired"),
    (["training.optimizer.pretrained_lr=0.0001"], "training.optimizer.pretrained_lr", "pretrained_lr"),
    (["augmentation.spec_augment={}"], "augmentation.spec_augment", "not rendered"),
    (["augmentation.speed_perturb=[0.9,1.0,1.1]"], "augmentation.speed_perturb", "not rendered"),
    (["tokenizer.type=bpe", "tokenizer.vocab_size=64"], "tokenizer.type", "keeps its own tokenizer"),
    (["features.sample_rate=8000"], "features.sample_rate", "16 kHz"),
    (["model.language=null"], "model.language", "language detection"),
    (['freeze=["encoder.layers:3"]'], "freeze", "the pretrained encoder has 2 layers"),
])
def test_refuses_what_it_does_not_render(tmp_path, overrides, key, message):
    from spx.adapters import get_adapter
    from spx.errors import SpxError

    pre = _fake_whisper(tmp_path / "wh")
    with pytest.raises(SpxError) as err:
        get_adapter("speechbrain").supports(_spec(f"model.pretrained={pre}", *overrides))
    assert err.value.where == key and message in str(err.value), (err.value.where, str(err.value))


def test_refuses_other_models_missing_folders_and_init_from(tmp_path):
    from spx.adapters import get_adapter
    from spx.errors import SpxError

    sb = get_adapter("speechbrain")
    w2v = _fake_whisper(tmp_path / "w2v", "wav2vec2")
    with pytest.raises(SpxError, match="is a 'wav2vec2' model, not whisper"):
        sb.supports(_spec(f"model.pretrained={w2v}"))
    with pytest.raises(SpxError, match="does not exist"):
        sb.supports(_spec(f"model.pretrained={tmp_path / 'nowhere'}"))
    pre = _fake_whisper(tmp_path / "wh")
    with pytest.raises(SpxError, match="init_from is not wired"):
        sb.supports(_spec(f"model.pretrained={pre}", f"init_from={pre}"))


def test_cli_refusal_exits_2_and_writes_nothing(tmp_path):
    pre = _fake_whisper(tmp_path / "wh")
    rd = tmp_path / "run"
    proc = run_spx("run", "--backend", "speechbrain", RECIPE, "--run-dir", rd, f"model.pretrained={pre}",
                   "model.language=null")
    assert proc.returncode == 2 and "model.language" in proc.stderr and "Traceback" not in proc.stderr
    assert not rd.exists()


# ---------------------------------------------------------------- slow: the tiny Whisper fine-tuned for real
@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="session")
def sb_whisper_run(tiny, tmp_path_factory) -> Path:
    """The tiny Whisper fine-tuned 2 epochs on the demo corpus by SpeechBrain, conv front-end frozen, decoded with
    beam search (once per test run)."""
    def build(folder: Path) -> None:
        run_spx("run", "--backend", "speechbrain", RECIPE, "--run-dir", folder / "run", "--force",
                f"model.pretrained={tiny / 'whisper'}", "decoding.strategy=beam", "decoding.beam_size=2",
                'freeze=["feature_extractor"]', check=True)

    return build_once(shared_dir(tmp_path_factory, "sb_whisper_run"), build) / "run"


@pytest.mark.slow
def test_fine_tunes_decodes_and_scores(sb_whisper_run, tiny):
    import importlib

    import torch
    from safetensors.torch import load_file

    from spx.adapters import get_adapter
    from spx.adapters.common.child import load_audio, load_run
    from spx.manifests import read_manifest

    rd = sb_whisper_run
    metrics = json.loads((rd / "metrics.json").read_text())
    print(f"speechbrain whisper tiny: WER {metrics['wer']:.3f} CER {metrics['cer']:.3f} RTFx {metrics.get('rtfx')}")
    assert metrics["utterances"] == 40 and 0.0 <= metrics["wer"] and 0.0 <= metrics["cer"]
    hyps = _jsonl(rd / "hyps.jsonl")
    assert len(hyps) == 40 and all(h["ref"] and isinstance(h["hyp"], str) for h in hyps)
    curve = _jsonl(rd / "curve.jsonl")
    assert [r["epoch"] for r in curve] == [1, 2] and [r["step"] for r in curve] == [30, 60]
    assert curve[-1]["train_loss"] < curve[0]["train_loss"] and curve[-1]["valid_loss"] < curve[0]["valid_loss"]
    assert all(0.0 <= r["valid_wer"] for r in curve)
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["model_type"] == "whisper" and summary["finetune_method"] == "full" and summary["steps"] == 60
    assert summary["decoder_prefix"] == ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    # freeze: [feature_extractor] froze exactly Whisper's two conv layers
    base = load_file(tiny / "whisper" / "model.safetensors")
    conv = sum(t.numel() for n, t in base.items() if n.startswith(("model.encoder.conv1.", "model.encoder.conv2.")))
    assert summary["frozen_params"] == conv > 0
    assert summary["params"] == summary["trainable_params"] + summary["frozen_params"]
    export = Path(summary["exported_model"])
    assert {"whisper.ckpt", "hparams.yaml", "spx_export.json"} <= {p.name for p in export.iterdir()}
    info = json.loads((export / "spx_export.json").read_text())
    assert info["family"] == "whisper" and info["base_model"] == str(tiny / "whisper")
    assert "(whisper, beam, cpu, float32" in (rd / "logs" / "decode.log").read_text()
    # the decoder trained, the frozen front-end did not
    tuned = torch.load(export / "whisper.ckpt", map_location="cpu")
    q = "model.decoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tuned[q], base[q])  # the integration's WhisperModel sits at .model, as in the HF file
    assert torch.equal(tuned["model.encoder.conv1.weight"], base["model.encoder.conv1.weight"])
    # the family's INFERENCE loader (the bench's judge, `spx serve`) loads the export and transcribes a batch
    module = get_adapter("speechbrain").inference_module(load_run(rd)[0])
    transcribe = importlib.import_module(module).load_transcriber(str(rd), "cpu")
    utts = read_manifest(REPO / "spx" / "demo" / "corpus" / "test.jsonl")[:3]
    texts = transcribe([load_audio(u, 16000) for u in utts])
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    # both searchers start from the same prefix the decoder was trained with
    from spx.adapters.speechbrain.steps.whisper_model import load_whisper_hparams

    hparams = load_whisper_hparams(load_run(rd)[1])
    prefix = hparams["whisper"].tokenizer.convert_tokens_to_ids(summary["decoder_prefix"])
    assert [list(hparams[s].initial_tokens) for s in ("valid_search", "test_search")] == [prefix, prefix]


@pytest.mark.slow
def test_lora_trains_the_adapters_only_and_leaves_the_base_bit_identical(tiny, tmp_path):
    """LoRA (rank 4 on q_proj/v_proj of encoder self-attention and decoder self- and cross-attention): trainable =
    the adapters, exactly; the base's digest unchanged; the export holds the adapters alone and decodes."""
    rd = tmp_path / "lora"
    run_spx("run", "--backend", "speechbrain", RECIPE, "--run-dir", rd, f"model.pretrained={tiny / 'whisper'}",
            "finetune.method=lora", "finetune.rank=4", "training.max_steps=4", "model.max_new_tokens=4",
            "eval.warmup_batches=0", check=True)  # short decodes: this run checks the parameters, not accuracy
    summary = json.loads((rd / "train_summary.json").read_text())
    d_model, layers = 32, 2 + 2 * 2  # encoder layers (self-attn) + decoder layers (self- and cross-attn)
    assert summary["lora_layers"] == 2 * layers and summary["steps"] == 4
    assert summary["trainable_params"] == summary["lora_params"] == 2 * layers * 4 * 2 * d_model
    assert summary["params"] == summary["trainable_params"] + summary["frozen_params"]
    assert summary["base_weights_sha256_before"] == summary["base_weights_sha256_after"]
    export = Path(summary["exported_model"])
    import torch

    saved = torch.load(export / "whisper.ckpt", map_location="cpu")
    assert saved and all(k.split(".")[-2] in ("adapter_down_proj", "adapter_up_proj") for k in saved)
    assert json.loads((export / "spx_export.json").read_text())["method"] == "lora"
    assert len(_jsonl(rd / "hyps.jsonl")) == 40
