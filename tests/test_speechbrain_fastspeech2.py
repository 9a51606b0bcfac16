"""TTS on SpeechBrain: FastSpeech2 with its internal aligner (family fastspeech2, recipes/fastpitch.yaml, the recipe
NeMo FastPitch runs). Rendering (fast) and a real prepare -> train -> synthesize -> score run (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, read_jsonl, run_spx, synthesized_test_set
from shared_artifacts import build_once, shared_dir
from test_deploy import assert_served_synthesizes
from spx.errors import SpxError
from spx.rundir import RunDir
from spx.spec import load_spec

RECIPE = REPO / "recipes" / "fastpitch.yaml"
# CI scale: ~3 s of pitch/energy extraction, ~1 min of training (16 epochs x 13 steps of batch 8) on 2 CPU cores
TRAIN_OVERRIDES = ["training.epochs=16", "training.batch_size=8", "eval.speed_repeats=1", "eval.warmup_batches=1",
                   "resources.threads=1"]
RECIPE_PARAMS = 751_955  # FastSpeech2WithAlignment at the recipe sizes (d_model 64, 2 + 2 layers, 2 heads, 80 mels)


def fastspeech2_spec(corpus: Path, *overrides: str, recipe: Path = RECIPE):
    data = [f"data.train={corpus / 'train.jsonl'}", f"data.valid={corpus / 'valid.jsonl'}",
            f"data.test={corpus / 'test.jsonl'}"]
    return load_spec(recipe, [*data, *overrides])


def render(spec, run_dir: Path, backend: str = "speechbrain") -> RunDir:
    from spx.runner import render_run

    return render_run(spec, backend, run_dir, force=True)


def load_hparams(rd: RunDir) -> dict:
    from hyperpyyaml import load_hyperpyyaml

    with open(rd / "native/tts_hparams.yaml") as fh:
        return load_hyperpyyaml(fh)



HIFIGAN_HPARAMS = """generator: !new:speechbrain.lobes.models.HifiGAN.HifiganGenerator
    in_channels: 80
    out_channels: 1
    resblock_type: "1"
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    resblock_kernel_sizes: [3, 7, 11]
    upsample_kernel_sizes: [16, 16, 4, 4]
    upsample_initial_channel: 32
    upsample_factors: [8, 8, 2, 2]  # = the recipe's hop of 256 samples
    inference_padding: 5
    cond_channels: 0
    conv_post_bias: True
modules:
    generator: !ref <generator>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        generator: !ref <generator>
"""


def untrained_speechbrain_hifigan(folder: Path) -> Path:
    """A SpeechBrain HiFi-GAN folder in the layout of speechbrain/tts-hifigan-* (hyperparams.yaml + generator.ckpt),
    with untrained weights: no model hub here, and it exercises the vocoder path, not its quality."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    folder.mkdir(parents=True)
    (folder / "hyperparams.yaml").write_text(HIFIGAN_HPARAMS)
    torch.save(load_hyperpyyaml(HIFIGAN_HPARAMS)["generator"].state_dict(), folder / "generator.ckpt")
    return folder


# ------------------------------------------------------------------ fast: rendering
def test_hparams_build_fastspeech2_with_the_spec_architecture(tts_multi_corpus, tmp_path):
    spec = fastspeech2_spec(tts_multi_corpus, "model.d_model=48", "model.encoder_layers=3", "model.decoder_layers=1",
                            "model.heads=4")
    rd = render(spec, tmp_path / "run")
    hp = load_hparams(rd)
    model = hp["model"]
    from speechbrain.lobes.models.FastSpeech2 import FastSpeech2WithAlignment

    assert isinstance(model, FastSpeech2WithAlignment) and model.alignment_prior_scaling == 1.0
    assert model.encPreNet.token_embedding.Embedding.embedding_dim == 48
    assert model.encPreNet.token_embedding.Embedding.num_embeddings == 39  # a-z, 0-9, apostrophe, space + padding
    assert len(model.encoder.layers) == 3 and len(model.decoder.layers) == 1
    for stack in (model.encoder, model.decoder):
        attention = stack.layers[0].self_att.att
        assert (attention.embed_dim, attention.num_heads) == (48, 4)
        assert stack.layers[0].pos_ffn[0].conv.out_channels == 4 * 48  # d_ffn = 4 x d_model, as NeMo's FFT blocks
    assert model.aligner.key_layer[0].conv.in_channels == 48 and model.linear.w.out_features == 80
    assert model.enc_num_head == model.dec_num_head == 4
    mel = hp["mel_spectrogram"].keywords
    assert (mel["sample_rate"], mel["n_mels"], mel["n_fft"], mel["win_length"], mel["hop_length"]) == (
        16000, 80, 1024, 1024, 256)
    assert type(hp["criterion"]).__name__ == "LossWithAlignment"
    assert type(hp["collate_fn"]).__name__ == "TextMelCollateWithAlignment"
    # 12 training rows, batch 16, 40 epochs: 40 planned updates for the warmup + cosine schedule
    sched = hp["lr_annealing"]
    assert (sched.shape, sched.lr0, sched.warmup_steps, sched.total_steps) == ("cosine", 0.002, 20, 40)
    assert set(hp["checkpointer"].recoverables) == {"model", "lr_annealing", "counter"}
    assert [s["name"] for s in json.loads((rd / "steps.json").read_text())] == ["tts_prepare", "tts_train", "tts_synth"]
    info = json.loads((rd / "native/tts_info.json").read_text())
    assert info["model"] == "FastSpeech2WithAlignment" and info["vocoder_name"] == "griffin-lim (32 iters)"


def test_recipe_sizes_build_a_tiny_model(tts_multi_corpus, tmp_path):
    from spx.adapters.common.child import count_params

    model = load_hparams(render(fastspeech2_spec(tts_multi_corpus), tmp_path / "run"))["model"]
    assert count_params(model) == RECIPE_PARAMS
    wider = load_hparams(render(fastspeech2_spec(tts_multi_corpus, "model.d_model=96"), tmp_path / "wide"))["model"]
    assert count_params(wider) > RECIPE_PARAMS


def test_backends_speechbrain_overrides_reach_the_model_the_children_build(tts_multi_corpus, tmp_path):
    from spx.adapters.speechbrain.steps.tts_train import load_hparams as child_hparams

    spec = fastspeech2_spec(tts_multi_corpus, "backends.speechbrain.alignment_prior_scaling=0",
                            "backends.speechbrain.ffn_cnn_kernel_size_list=[9,1]")
    model = child_hparams(render(spec, tmp_path / "run"))["model"]
    assert model.alignment_prior_scaling == 0  # SpeechBrain's aligner without the prior
    assert model.encoder.layers[0].pos_ffn[0].conv.kernel_size == (9,)  # SpeechBrain's recipe FFN kernels


def test_the_fastpitch_recipe_renders_on_nemo_and_speechbrain(tts_multi_corpus, tmp_path):
    spec = fastspeech2_spec(tts_multi_corpus)
    for backend in ("nemo", "speechbrain"):
        rd = render(spec, tmp_path / backend, backend)
        assert [s["name"] for s in json.loads((rd / "steps.json").read_text())] == [
            "tts_prepare", "tts_train", "tts_synth"]


@pytest.mark.parametrize("override, match", [
    ("tts.multi_speaker=true", "no speaker input"),
    ("freeze=[encoder]", "has no mapping for freeze"),
    ("resources.devices=2", "one process"),
    ("training.precision=bf16", "fp32"),
    ("training.scheduler.name=noam", "not mapped for TTS on speechbrain"),
    ("tts.vocoder=/no/such/hifigan", "tts.vocoder"),
    ("init_from=/no/such/model.ckpt", "init_from"),
])
def test_what_speechbrain_fastspeech2_cannot_do_is_one_clear_error_before_anything_runs(tts_multi_corpus, tmp_path,
                                                                                        override, match):
    spec = fastspeech2_spec(tts_multi_corpus, *override.split(" "))
    with pytest.raises(SpxError, match=match):
        render(spec, tmp_path / "run")
    assert not (tmp_path / "run" / "steps.json").exists()


def test_init_from_a_run_of_another_family_is_refused(tts_multi_corpus, tmp_path):
    tacotron = render(fastspeech2_spec(tts_multi_corpus, recipe=REPO / "recipes" / "tacotron2.yaml"), tmp_path / "t2")
    spec = fastspeech2_spec(tts_multi_corpus, f"init_from={tacotron.path}")
    with pytest.raises(SpxError, match="is a tts/tacotron2 run; this job is tts/fastspeech2"):
        render(spec, tmp_path / "run")


# ------------------------------------------------------------------ slow: real training and synthesis
@pytest.fixture(scope="session")
def sb_fastspeech2_run(tts_corpus, tmp_path_factory) -> RunDir:
    """The tiny SpeechBrain FastSpeech2 trained on the flite corpus, synthesized and scored as `spx run` does (once
    per test run, shared by the training, serving and export tests)."""
    from spx.launchers.local import run_here

    def build(folder: Path) -> None:
        rd = render(fastspeech2_spec(tts_corpus, *TRAIN_OVERRIDES), folder / "fastspeech2-speechbrain")
        run_here(rd, quiet=True)  # tts_prepare, tts_train, tts_synth, then scoring (metrics.json)

    return RunDir(build_once(shared_dir(tmp_path_factory, "speechbrain_fastspeech2"), build)
                  / "fastspeech2-speechbrain")


@pytest.mark.slow
def test_fastspeech2_trains_synthesizes_is_scored_and_fine_tunes(sb_fastspeech2_run, tts_corpus, tmp_path):
    from spx.launchers.execute import execute

    rd = sb_fastspeech2_run
    stats = json.loads((rd / "native/pitch_stats.json").read_text())
    assert 80 < stats["pitch_mean"] < 600 and stats["pitch_std"] > 0
    n_frames = len(np.load(sorted((rd / "native/sup_data/pitch").glob("train_*.npy"))[0]))
    assert n_frames > 10
    curve = read_jsonl(rd / "curve.jsonl")
    assert len(curve) == 16
    assert curve[-1]["train_loss"] < 0.5 * curve[0]["train_loss"], curve
    assert curve[-1]["valid_loss"] < curve[0]["valid_loss"], curve
    assert curve[-1]["train_parts"]["aligner_loss"] < curve[0]["train_parts"]["aligner_loss"], curve
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["model_class"] == "FastSpeech2WithAlignment" and summary["params"] == RECIPE_PARAMS
    assert summary["vocoder"] == "griffin-lim (32 iters)" and Path(summary["exported_model"]).is_file()

    synthesized = synthesized_test_set(rd, tts_corpus)
    hyps = [h for h, _ in synthesized]
    hop_seconds = 0.016
    for h, wav in synthesized:
        # predicted durations: at least a word, at most 30 frames per character (a tiny model is not yet exact)
        assert 0.2 < h["duration"] <= 30 * len(h["text"]) * hop_seconds, (h["id"], h["duration"], h["text"])
        assert h["synth_time"] > 0 and Path(h["ref_audio"]).exists()
    speed = json.loads((rd / "speed.json").read_text())
    assert speed["audio_seconds"] == pytest.approx(sum(h["duration"] for h in hyps))
    assert "griffin-lim" in speed["clock"] and speed["batch_size"] == 1

    scores = json.loads((rd / "metrics.json").read_text())
    print("speechbrain fastspeech2", {k: v for k, v in scores.items() if isinstance(v, (int, float))})
    assert 1 <= scores["dnsmos_ovrl"] <= 5 and 1 <= scores["distillmos"] <= 5
    assert scores["mcd"] > 0 and scores["synthesis_rtf"] > 0 and len(scores["per_utt"]) == len(hyps)

    # fine-tune one epoch from the trained run: it starts from the trained model's loss, not from scratch; it speaks
    # through a SpeechBrain HiFi-GAN folder (tts.vocoder) instead of Griffin-Lim
    hifigan = untrained_speechbrain_hifigan(tmp_path / "hifigan")
    ft = render(fastspeech2_spec(tts_corpus, *TRAIN_OVERRIDES, "training.epochs=1", f"init_from={rd.path}",
                                 f"tts.vocoder={hifigan}"), tmp_path / "fine-tune")
    execute(ft)
    ft_curve = read_jsonl(ft / "curve.jsonl")
    assert len(ft_curve) == 1 and ft_curve[0]["train_loss"] < 0.5 * curve[0]["train_loss"], (ft_curve, curve[0])
    assert json.loads((ft / "train_summary.json").read_text())["init_from"] == summary["exported_model"]
    assert json.loads((ft / "speed.json").read_text())["vocoder"] == str(hifigan)
    for h in read_jsonl(ft / "hyps.jsonl"):
        wav, sr = sf.read(h["audio"])
        assert sr == 16000 and len(wav) > 0.2 * sr and np.isfinite(wav).all()

    # its export carries the HiFi-GAN generator as the vocoder graph, which makes the toolkit's waveform (the export
    # step called in-process on 2 sentences: `spx export` wants a scored run, and this one skipped scoring)
    import torch

    from spx.adapters.speechbrain.steps.tts_export import export
    from spx.adapters.speechbrain.steps.tts_synth import load_for_synthesis
    from spx.deploy.engine import TtsEngine

    info = export(str(ft.path), str(tmp_path / "ft-onnx"), "onnx", None, parity_utterances=2)
    assert info["parity"]["passed"], info["parity"]
    vocoder = json.loads((tmp_path / "ft-onnx" / "vocoder.json").read_text())
    assert (vocoder["kind"], vocoder["model_file"], vocoder["source"]) == ("graph", "vocoder.onnx", str(hifigan))
    engine = TtsEngine(tmp_path / "ft-onnx")
    mel = engine.mel("door black stop yellow")
    toolkit_vocoder = load_for_synthesis(ft.path, "cpu")[-1]
    with torch.no_grad():
        toolkit_wav = toolkit_vocoder(torch.from_numpy(mel.T.copy())).numpy()
    assert len(toolkit_wav) == len(mel) * 256 and np.abs(engine.vocoder(mel) - toolkit_wav).max() < 1e-4


@pytest.mark.slow
def test_served_fastspeech2_run_synthesizes(sb_fastspeech2_run, tmp_path):
    # FastSpeech2 in eval mode is deterministic: the served sentence has the run's own length
    rd = sb_fastspeech2_run.path
    assert_served_synthesizes(rd, rd, tmp_path / "server.log", same_length=True, min_symbols=2)


# ------------------------------------------------------------------ slow: spx export of the shared run
def _export(rd: Path, out: Path, fmt: str, *quantize: str) -> dict:
    run_spx("export", rd, "--format", fmt, *(("--quantize", *quantize) if quantize else ()), "--out", out,
            check=True, timeout=900)
    info = json.loads((out / "export.json").read_text())
    print(f"speechbrain fastspeech2 {fmt}{'-' + quantize[0] if quantize else ''}: {info['parity']['summary']}; "
          f"RTFx torch {info['speed']['torch_rtfx']:.1f}, export {info['speed']['export_rtfx']:.1f}, "
          f"sizes {info['sizes']}")
    return info


@pytest.mark.slow
def test_fastspeech2_onnx_export_passes_parity_and_serves(sb_fastspeech2_run, tmp_path):
    """fp32 ONNX: the toolkit's token ids, frame counts and log-mels (within MEL_TOLERANCE) on every test sentence;
    the export served alone (no toolkit) speaks the run's sentence with the run's own length (the same frames, the
    same Griffin-Lim centring)."""
    from spx.deploy.parity import MEL_TOLERANCE

    rd = sb_fastspeech2_run.path
    out = tmp_path / "onnx"
    info = _export(rd, out, "onnx")
    parity = info["parity"]
    assert parity["passed"] and parity["utterances"] == 8 and parity["max_abs_mel_diff"] <= MEL_TOLERANCE, parity
    assert not parity["frames_differ"] and not parity["id_mismatch"]
    assert info["task"] == "tts" and info["family"] == "fastspeech2" and info["opset"] == 17
    assert info["inputs"] == {"ids": "ids"} and info["outputs"] == {"mel": "mel", "frames": "frames"}
    vocoder = json.loads((out / "vocoder.json").read_text())
    assert vocoder["kind"] == "griffin_lim" and (vocoder["power"], vocoder["log"]) == (1.0, {"base": "e",
                                                                                                "floor": 1e-5})
    assert np.load(out / "vocoder.npz")["mel_basis"].shape == (80, 513)
    assert info["speed"]["torch_rtfx"] > 0 and info["speed"]["export_rtfx"] > 0
    assert_served_synthesizes(out, rd, tmp_path / "server.log", same_length=True, min_symbols=2)


@pytest.mark.slow
def test_bench_variants_speak_with_the_toolkit_and_the_int8_export(sb_fastspeech2_run, tts_corpus, tmp_path):
    """`spx bench --variants torch,onnx-int8` on the shared run as a finished cell (copied: the bench skips it):
    the int8 export passes its parity rule, both variants speak every test sentence (the toolkit through its
    load_synthesizer, the export through its engine), are scored by the cell's judge and DNSMOS, one table."""
    import shutil

    from spx.deploy.parity import INT8_MAX_FRAME_CHANGE, INT8_MAX_MEL_MAE

    out = tmp_path / "bench"
    cell = out / "runs" / "fastpitch-speechbrain"  # the bench's name for recipe fastpitch.yaml on speechbrain
    shutil.copytree(sb_fastspeech2_run.path, cell, ignore=shutil.ignore_patterns("export", "variants"))
    overrides = [f"data.{s}={tts_corpus / f'{s}.jsonl'}" for s in ("train", "valid", "test")] + TRAIN_OVERRIDES
    proc = run_spx("bench", RECIPE, "--backends", "speechbrain", "--out", out, "--variants", "torch,onnx-int8",
                   *[a for o in overrides for a in ("-o", o)], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "finished earlier, skipped" in proc.stderr  # the cell was not trained again
    info = json.loads((cell / "export" / "onnx-int8" / "export.json").read_text())
    parity = info["parity"]
    assert parity["passed"] and parity["worst_frame_change"] <= INT8_MAX_FRAME_CHANGE, parity
    assert parity["mean_abs_mel_diff"] <= INT8_MAX_MEL_MAE and parity["waveform"]["rms"] > 1e-3, parity
    assert info["quantize"] == "int8" and info["sizes"]["int8_model_bytes"] < info["sizes"]["fp32_model_bytes"]
    v = json.loads((cell / "variants.json").read_text())
    assert v["metric"] == "cer" and list(v["variants"]) == ["torch", "onnx-int8"], v
    hyps = read_jsonl(cell / "hyps.jsonl")
    for name, variant in v["variants"].items():
        assert "error" not in variant, variant
        assert 0 <= variant["cer"] and variant["dnsmos_ovrl"] > 0 and variant["rtfx"] > 0, variant
        spoken = sorted((cell / "variants" / name).glob("*.wav"))
        assert [p.stem for p in spoken] == sorted(h["id"] for h in hyps)
    table = (out / "report.md").read_text().split("## Deployment variants", 1)[1].split("\n## ", 1)[0]
    assert "| fastpitch | speechbrain | onnx-int8 | CER |" in table and "DNSMOS" in table, table


@pytest.mark.parametrize("recipe, family, reason", [
    ("hifigan.yaml", "hifigan", "a HiFi-GAN run is a vocoder"),
])
def test_speechbrain_tts_families_without_an_export_say_why(tts_multi_corpus, recipe, family, reason):
    from spx.adapters import get_adapter

    spec = fastspeech2_spec(tts_multi_corpus, recipe=REPO / "recipes" / recipe)
    assert spec.model.family == family
    with pytest.raises(SpxError, match=f"spx cannot export speechbrain {family} models: {reason}"):
        get_adapter("speechbrain").export_module(spec)
