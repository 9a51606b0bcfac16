"""ESPnet fine-tuning of pretrained SSL models (spx/adapters/espnet/ssl_ctc.py: ESPnet's `frontend: s3prl` over a
Transformers folder) and the whisper refusal: render and refusals (fast); parity of ESPnet's loaded s3prl frontend
with Transformers' own forward, and one real LoRA fine-tune + decode + score (slow). The tiny random models come
from tests/hf_tiny.py (the *_s320 folders: the real checkpoints' 320-sample stride, which s3prl assumes)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_spx
from hf_tiny import SSL_320, tiny_models
from shared_artifacts import build_once, shared_dir

CTC_RECIPE = REPO / "recipes" / "tiny" / "ssl_ctc_tiny.yaml"
WHISPER_RECIPE = REPO / "recipes" / "tiny" / "whisper_tiny.yaml"
DEMO_TEST = REPO / "spx" / "demo" / "corpus" / "test.jsonl"


def _fake_pretrained(folder: Path, model_type: str, stride=(5, 4, 4, 4), layers: int = 2, hidden: int = 64) -> Path:
    """config.json + preprocessor_config.json alone: what check and render read (never the weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "num_hidden_layers": layers,
                                                    "hidden_size": hidden, "conv_stride": list(stride)}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True, "sampling_rate": 16000}))
    return folder


def _supports(recipe: Path, *overrides: str):
    from spx.adapters import get_adapter
    from spx.spec import load_spec

    get_adapter("espnet").supports(load_spec(recipe, list(overrides)))


# ---------------------------------------------------------------- fast
def test_ssl_ctc_renders_espnets_own_s3prl_config(tmp_path):
    pre = _fake_pretrained(tmp_path / "hub", "hubert")
    rd = tmp_path / "run"
    run_spx("run", "--backend", "espnet", CTC_RECIPE, "--run-dir", rd, "--dry-run", f"model.encoder.pretrained={pre}",
            "model.encoder.layer_weighting=true", "model.head_dropout=0.2", 'freeze=["feature_extractor","encoder.layers:1"]',
            check=True)
    cfg = yaml.safe_load((rd / "native" / "conf" / "train_asr.yaml").read_text())
    assert cfg["frontend"] == "s3prl" and cfg["frontend_conf"]["multilayer_feature"] is True
    assert cfg["frontend_conf"]["frontend_conf"] == {"upstream": "hf_hubert_custom", "path_or_url": str(pre.resolve())}
    assert cfg["normalize"] is None and cfg["preencoder"] == "linear"
    assert cfg["preencoder_conf"] == {"input_size": 64, "output_size": 64}
    assert cfg["encoder"] == "transformer" and cfg["encoder_conf"]["num_blocks"] == 0
    assert cfg["encoder_conf"]["input_layer"] is None  # no subsampling: the upstream's 20 ms frames
    assert cfg["decoder"] == "none" and cfg["model_conf"]["ctc_weight"] == 1.0 and cfg["ctc_conf"]["dropout_rate"] == 0.2
    train = json.loads((rd / "native" / "commands.json").read_text())["commands"]["asr_train"]
    frozen = train[train.index("--freeze_param") + 1:]
    assert frozen == ["frontend.upstream.upstream.model.feature_extractor",
                      "frontend.upstream.upstream.model.encoder.layers.0"]
    assert "--use_adapter" not in train and "--normalize" not in train
    # ESPnet alone reproduces it, through the shim wrapper
    runs = [line for line in (rd / "native" / "run.sh").read_text().splitlines() if line.startswith("python -m")]
    assert runs and all(line.startswith("python -m spx.adapters.espnet.steps.s3prl_compat espnet2.bin.")
                        for line in runs)


def test_lora_freezes_the_whole_upstream_and_saves_the_trainable_part_only(tmp_path):
    pre = _fake_pretrained(tmp_path / "w2v", "wav2vec2")
    rd = tmp_path / "run"
    run_spx("run", "--backend", "espnet", CTC_RECIPE, "--run-dir", rd, "--dry-run", f"model.encoder.pretrained={pre}",
            "finetune.method=lora", "finetune.rank=4", "finetune.alpha=8", "finetune.target_modules=[k_proj]",
            check=True)
    train = json.loads((rd / "native" / "commands.json").read_text())["commands"]["asr_train"]
    assert train[train.index("--freeze_param") + 1] == "frontend.upstream"  # ESPnet's LoRA leaves the base trainable
    assert train[train.index("--adapter") + 1] == "lora" and train[train.index("--use_adapter") + 1] == "true"
    assert yaml.safe_load(train[train.index("--adapter_conf") + 1]) == {
        "rank": 4, "alpha": 8, "dropout_rate": 0.05, "target_modules": ["k_proj"], "bias_type": "none"}
    assert train[train.index("--save_strategy") + 1] == "required_grad_only"


@pytest.mark.parametrize("kind, stride, overrides, key, message", [
    ("wavlm", (5, 4, 4, 4), [], "model.encoder.pretrained", "has no expert for a Transformers folder"),
    ("wav2vec2", (5, 4, 4), [], "model.encoder.pretrained", "total conv stride of 80 samples"),
    ("bert", (5, 4, 4, 4), [], "model.encoder.pretrained", "is a 'bert' model"),
    ("wav2vec2", (5, 4, 4, 4), ["training.optimizer.pretrained_lr=0.0001"], "training.optimizer.pretrained_lr",
     "is not supported by spx's espnet ssl_ctc family"),
    ("wav2vec2", (5, 4, 4, 4), ["finetune.freeze_pretrained_steps=10"], "finetune.freeze_pretrained_steps",
     "is not supported by spx's espnet ssl_ctc family"),
    ("wav2vec2", (5, 4, 4, 4), ["finetune.method=lora", "finetune.alpha=2.5"], "finetune.alpha", "integer alpha"),
    ("wav2vec2", (5, 4, 4, 4), ["finetune.method=adapter"], "finetune.method", "adapter is not supported"),
    ("wav2vec2", (5, 4, 4, 4), ['freeze=["encoder.layers:3"]'], "freeze", "has 2 layers"),
    ("wav2vec2", (5, 4, 4, 4), ["features.sample_rate=8000"], "features.sample_rate", "16 kHz"),
])
def test_ssl_ctc_refuses_what_espnet_cannot_do(tmp_path, kind, stride, overrides, key, message):
    from spx.errors import SpxError

    pre = _fake_pretrained(tmp_path / kind, kind, stride)
    with pytest.raises(SpxError) as err:
        _supports(CTC_RECIPE, f"model.encoder.pretrained={pre}", *overrides)
    assert err.value.where == key and message in str(err.value), (err.value.where, str(err.value))


def test_whisper_is_refused_with_the_upstream_reason(tmp_path):
    rd = tmp_path / "run"
    proc = run_spx("run", "--backend", "espnet", WHISPER_RECIPE, "--run-dir", rd,
                   f"model.pretrained={tmp_path / 'anything'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "espnet#5792" in proc.stderr and "N_MELS" in proc.stderr and not rd.exists()


# ---------------------------------------------------------------- slow: real models
@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> Path:
    return tiny_models(tmp_path_factory)


PARITY = r"""
import json, sys
import torchaudio
from spx.adapters.espnet.steps.s3prl_compat import apply, build_frontend
had = hasattr(torchaudio, "set_audio_backend")
shims = {"had_set_audio_backend": had, "done": apply(), "again": apply()}
import torchaudio.sox_effects as fx
try:
    fx.apply_effects_tensor(None, 16000, [])
except RuntimeError as exc:
    shims["sox_effects_error"] = str(exc)
import soundfile as sf, torch
from transformers import AutoModel, Wav2Vec2FeatureExtractor
from spx.adapters.espnet.ssl_ctc import UPSTREAMS, freeze_params
from spx.spec import load_spec

folders, audio, recipe = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
wav, rate = sf.read(audio, dtype="float32")
assert rate == 16000
out = {"shims": shims}
torch.set_grad_enabled(False)
for folder in folders:
    kind = json.load(open(folder + "/config.json"))["model_type"]
    frontend = build_frontend(folder, UPSTREAMS[kind])
    hs, hs_lens = frontend.upstream(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
    espnet_last = hs[-1][0, : int(hs_lens[-1][0])]
    feats, feats_lens = frontend(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    inputs = extractor(wav, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    ref = AutoModel.from_pretrained(folder).eval()(**inputs).last_hidden_state[0]
    names = [n for n, _ in frontend.named_parameters()]
    spec = load_spec(recipe, [f"model.encoder.pretrained={folder}", 'freeze=["feature_extractor","encoder.layers:2"]'])
    prefixes = [p[len("frontend."):] for p in freeze_params(spec)]
    n = ref.shape[0]  # s3prl counts ceil(samples / 320) frames, repeating the last one to get there
    out[kind] = {"shape": list(espnet_last.shape), "ref_shape": list(ref.shape),
                 "max_abs_diff": float((espnet_last[:n] - ref).abs().max()), "ref_scale": float(ref.abs().max()),
                 "extra_frames_repeat_last": bool((espnet_last[n:] == espnet_last[n - 1]).all()),
                 "frontend_frames": int(feats_lens[0]), "frontend_dim": int(feats.shape[-1]),
                 "freeze_prefixes_found": {p: any(n.startswith(p + ".") for n in names) for p in prefixes}}
print("PARITY " + json.dumps(out))
"""


@pytest.mark.slow
def test_espnet_s3prl_frontend_matches_transformers_forward(hf_models):
    """ESPnet's loaded frontend (its s3prl upstream, last layer, before the featurizer) computes what
    transformers.AutoModel computes on the same folder and the same normalized audio; in the same process (one
    s3prl import), the s3prl shims add the two names torchaudio lost and nothing else."""
    from spx.manifests import read_manifest

    audio = read_manifest(str(DEMO_TEST))[0].audio
    folders = ",".join(str(hf_models / name) for name in ("wav2vec2_s320", "hubert_s320"))
    proc = subprocess.run([sys.executable, "-c", PARITY, folders, audio, str(CTC_RECIPE)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("PARITY "))[7:])
    shims = result.pop("shims")  # the s3prl shims stand in only for what torchaudio lost, once
    assert shims["again"] == []
    if not shims["had_set_audio_backend"]:  # torchaudio >= 2.9
        assert shims["done"] == ["torchaudio.set_audio_backend", "torchaudio.sox_effects"]
        assert "removed in torchaudio 2.9" in shims["sox_effects_error"]
    assert set(result) == {"wav2vec2", "hubert"}
    for kind, r in result.items():
        # the same frames; s3prl's length convention (ceil(samples / 320)) adds at most one, a copy of the last
        assert r["shape"][1] == r["ref_shape"][1] == SSL_320["hidden_size"], (kind, r)
        assert 0 <= r["shape"][0] - r["ref_shape"][0] <= 1 and r["extra_frames_repeat_last"], (kind, r)
        assert r["max_abs_diff"] <= 1e-4 * max(r["ref_scale"], 1.0), (kind, r)
        assert r["frontend_frames"] == r["shape"][0] and r["frontend_dim"] == SSL_320["hidden_size"], (kind, r)
        assert all(r["freeze_prefixes_found"].values()), (kind, r)  # --freeze_param names real parameters


@pytest.fixture(scope="session")
def espnet_lora_run(hf_models, tmp_path_factory) -> Path:
    """The tiny HuBERT (stride 320) fine-tuned on the demo corpus with LoRA and a weighted sum of layers (once)."""
    def build(folder: Path) -> None:
        run_spx("run", "--backend", "espnet", CTC_RECIPE, "--run-dir", folder / "run", "--force",
                f"model.encoder.pretrained={hf_models / 'hubert_s320'}", "model.encoder.layer_weighting=true",
                "finetune.method=lora", "finetune.rank=4", "finetune.alpha=8", "training.epochs=2",
                "training.optimizer.lr=0.005", check=True)

    return build_once(shared_dir(tmp_path_factory, "espnet_lora_run"), build) / "run"


@pytest.mark.slow
def test_lora_fine_tune_trains_adapters_and_new_layers_only_decodes_and_scores(espnet_lora_run):
    import torch

    rd = espnet_lora_run
    summary = json.loads((rd / "train_summary.json").read_text())
    hidden, layers, rank = SSL_320["hidden_size"], SSL_320["num_hidden_layers"], 4
    vocab = sum(1 for line in (rd / "native" / "tokens.txt").read_text().splitlines() if line.strip())
    lora = layers * 2 * (rank * hidden + hidden * rank)  # q_proj, v_proj per layer: A (r x in) + B (out x r)
    new = ((layers + 1)                  # the featurizer's layer weights (multilayer_feature)
           + hidden * hidden + hidden    # preencoder: linear
           + 2 * hidden                  # the 0-block transformer's final LayerNorm
           + hidden * vocab + vocab)     # the CTC head
    assert summary["lora_params"] == lora and summary["trainable_params"] == lora + new, summary
    assert summary["frozen_params"] == summary["params"] - lora - new
    details = summary["init_details"]
    assert details["pretrained_tensors"] > 0 and details["pretrained_tensors_unchanged"] == details["pretrained_tensors"]
    # the export holds the adapters and the new layers only (the base stays the pretrained folder) ...
    exported = torch.load(summary["exported_model"], map_location="cpu")
    assert sum(v.numel() for v in exported.values()) == lora + new
    assert all("lora_" in k or not k.startswith("frontend.upstream.") for k in exported)
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in exported.items())  # B starts at 0: it trained
    # ... and the run trained, decoded and scored (wiring: a tiny random base, few steps)
    curve = [json.loads(line) for line in (rd / "curve.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in curve] == [1, 2] and curve[-1]["train_loss"] < 0.7 * curve[0]["train_loss"]
    metrics = json.loads((rd / "metrics.json").read_text())
    print(f"espnet ssl_ctc LoRA tiny: WER {metrics['wer']:.3f} CER {metrics['cer']:.3f}")
    assert metrics["utterances"] == 40 and metrics["cer"] < 1.0
    cfg = yaml.safe_load((rd / "checkpoints" / "config.yaml").read_text())
    assert cfg["use_adapter"] is True and cfg["freeze_param"] == ["frontend.upstream"]
