"""Issue 13's audio contract, per backend: the features the toolkit's own data path computes for an utterance given in
any form (8/22.05/48 kHz WAV, MP3, FLAC, Opus, stereo, Kaldi segments, piped wav.scp of FLAC and NIST SPHERE;
tests/audio_forms.py) equal those it computes for the same utterance given as a 16 kHz mono WAV.

Each test renders a run whose training set is the forms and whose validation set is their references, then a child
process reads the native data files spx rendered with the toolkit's own loader and feature extractor:
  NeMo         native/config.yaml's train_ds/validation_ds through NeMo's AudioToCharDataset (AudioSegment), then
               its AudioToMelSpectrogramPreprocessor from the rendered config (eval mode: no dither)
  SpeechBrain  the rendered CSVs through a DynamicItemDataset with the train step's audio pipeline, then the
               rendered hparams' Fbank (compute_features)
  ESPnet       the data the rendered asr_train command names (--train/valid_data_path_and_name_and_type) through
               ESPnetDataset, then DefaultFrontend from the rendered conf/train_asr.yaml's frontend_conf

The reference of a lossless 16 kHz form (FLAC, stereo whose channel mean is the utterance, segments, pipes) is the
utterance's own samples. A resampled or lossy form has no independent sample-exact reference (two good resamplers
differ by ~-40 dB, which moves the log-mel bins above the source's Nyquist by several nats), so its reference is
spx's own decoding of it at 16 kHz mono (the contract: every backend reads audio decoded once, the same way), and
that decoding is checked against an independent one (soundfile + soxr, tests/audio_forms.py) to be the same audio.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import RECIPE, REPO

BACKENDS = ("nemo", "speechbrain", "espnet")
# Same int16 samples in, float32 features out: the only differences left are float32 rounding (the stereo mean in
# float, FFT summation order), ~1e-6 relative in power, i.e. ~1e-6 in log-mel; near the log floor of a silent bin a
# relative error is amplified, hence 1e-3 (a wrong rate, channel or segment moves features by whole units).
FEATURE_ATOL = 1e-3
# spx's decoding of a resampled/lossy form against the independent one: measured 57-76 dB (spx: soxr HQ; reference:
# soxr VHQ; Opus identical); torchaudio's sinc resampler against soxr gives 35-47 dB on this corpus, so 25 dB admits
# any good resampler, while a wrong rate changes the length (checked first) and another channel or utterance is ~0 dB
MIN_DECODE_SNR_DB = 25.0


def _reference_manifest(audio_forms: Path, out: Path) -> Path:
    """reference.jsonl with the resampled/lossy rows replaced by spx's own 16 kHz mono decoding of the form (checked
    against the independent decoding on the way)."""
    from spx.manifests import read_manifest, write_manifest
    from spx.manifests.materialize import decode_utterance

    index = json.loads((audio_forms / "index.json").read_text())
    forms = {u.id: u for u in read_manifest(audio_forms / "forms.jsonl")}
    rows, snrs = [], {}
    out.mkdir(parents=True, exist_ok=True)
    for ref in read_manifest(audio_forms / "reference.jsonl"):
        independent = sf.read(ref.audio, dtype="float32")[0]
        decoded = np.asarray(decode_utterance(forms[ref.id], 16000), dtype=np.float32)
        if index[ref.id]["exact"]:
            assert np.array_equal(np.round(decoded * 32768), np.round(independent * 32768)), \
                f"{ref.id}: spx decodes other samples than the utterance's own"
        else:
            n = min(len(decoded), len(independent))
            assert abs(len(decoded) - len(independent)) <= 2, f"{ref.id}: {len(decoded)} vs {len(independent)} samples"
            noise = np.sum((independent[:n] - decoded[:n]) ** 2)  # 0 where both decoded without resampling
            snrs[ref.id] = 10 * np.log10(np.sum(independent[:n] ** 2) / noise) if noise else np.inf
            assert snrs[ref.id] >= MIN_DECODE_SNR_DB, f"{ref.id}: spx's decoding is {snrs[ref.id]:.1f} dB off the audio"
            path = out / f"{ref.id}.wav"
            sf.write(path, decoded, 16000, subtype="PCM_16")
            ref = replace(ref, audio=str(path), duration=len(decoded) / 16000)
        rows.append(ref)
    print("spx decoding vs independent decoding, SNR dB:", {k: round(float(v), 1) for k, v in snrs.items()})
    write_manifest(out / "reference.jsonl", rows)
    return out / "reference.jsonl"


@pytest.mark.parametrize("backend", BACKENDS)
def test_toolkit_features_equal_across_audio_forms(backend, audio_forms, tmp_path):
    from spx.runner import render_run
    from spx.spec import load_spec

    reference = _reference_manifest(audio_forms, tmp_path / "reference")
    spec = load_spec(RECIPE, [f"data.train={audio_forms / 'forms.jsonl'}", f"data.valid={reference}",
                              f"data.test={reference}"])
    rd = render_run(spec, backend, tmp_path / "run", force=True)
    out = tmp_path / "features.npz"
    proc = subprocess.run([sys.executable, __file__, backend, str(rd.path), str(out)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, f"{backend} data path failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    feats = np.load(out)
    index = json.loads((audio_forms / "index.json").read_text())
    worst = {}
    for uid, row in index.items():
        form, ref = feats[f"forms/{uid}"], feats[f"reference/{uid}"]
        assert form.shape == ref.shape, f"{backend} {uid} ({row['form']}): features {form.shape} vs {ref.shape}"
        worst[uid] = float(np.abs(form - ref).max())
    print(f"{backend}: max |features(form) - features(16 kHz mono WAV)| per row:", worst)
    bad = {uid: d for uid, d in worst.items() if not d <= FEATURE_ATOL}
    assert not bad, f"{backend}: features differ from the 16 kHz mono WAV's beyond {FEATURE_ATOL}: {bad}"


# ---------------------------------------------------------------- child process: the toolkit's own data path
def _nemo_features(rd: Path) -> dict[str, np.ndarray]:
    import torch
    from omegaconf import OmegaConf

    from nemo.collections.asr.data.audio_to_text_dataset import get_char_dataset
    from nemo.core.classes.modelPT import ModelPT

    cfg = OmegaConf.load(rd / "native" / "config.yaml").model
    preprocessor = ModelPT.from_config_dict(cfg.preprocessor).eval()
    out = {}
    for split, key in (("forms", "train_ds"), ("reference", "validation_ds")):
        ds_cfg = OmegaConf.to_container(cfg[key])
        ds_cfg.pop("augmentor", None)  # speed perturbation: random by design, not the data path under test
        rows = [json.loads(line) for line in Path(ds_cfg["manifest_filepath"]).read_text().splitlines() if line]
        dataset = get_char_dataset(ds_cfg, augmentor=None)
        assert len(dataset) == len(rows), f"NeMo kept {len(dataset)} of {len(rows)} {split} rows"
        for i, row in enumerate(rows):
            audio, length = dataset[i][:2]
            with torch.no_grad():
                mel, _ = preprocessor(input_signal=audio[None], length=length[None])
            out[f"{split}/{row['utt_id']}"] = mel[0].T.numpy()
    return out


def _speechbrain_features(rd: Path) -> dict[str, np.ndarray]:
    import torch
    import speechbrain as sb
    from speechbrain.dataio.dataset import DynamicItemDataset

    from spx.adapters.speechbrain.steps.model import load_hparams
    from spx.adapters.speechbrain.steps.train import audio_pipeline
    from spx.rundir import RunDir

    hparams = load_hparams(RunDir(rd))
    out = {}
    for split, key in (("forms", "train_csv"), ("reference", "valid_csv")):
        dataset = DynamicItemDataset.from_csv(csv_path=hparams[key])
        sb.dataio.dataset.add_dynamic_item([dataset], audio_pipeline(hparams["sample_rate"]))
        dataset.set_output_keys(["id", "sig"])
        for item in dataset:
            with torch.no_grad():
                out[f"{split}/{item['id']}"] = hparams["compute_features"](item["sig"][None].float())[0].numpy()
    return out


def _espnet_features(rd: Path) -> dict[str, np.ndarray]:
    import torch
    import yaml

    from espnet2.asr.frontend.default import DefaultFrontend
    from espnet2.train.dataset import ESPnetDataset

    config = yaml.safe_load((rd / "native" / "conf" / "train_asr.yaml").read_text())
    assert config["frontend"] == "default", config["frontend"]
    frontend = DefaultFrontend(**config["frontend_conf"]).eval()
    train = json.loads((rd / "native" / "commands.json").read_text())["commands"]["asr_train"]
    out = {}
    for split, flag in (("forms", "--train_data_path_and_name_and_type"),
                        ("reference", "--valid_data_path_and_name_and_type")):
        path, name, kind = train[train.index(flag) + 1].split(",")
        data = rd / path  # as asr_train reads it (its paths are relative to the run dir)
        dataset = ESPnetDataset([(str(data), name, kind)])
        original_id = dict(line.split() for line in (data.parent / "spx_id_map").read_text().splitlines())
        for uid in dataset.loader_dict[name].keys():
            speech = torch.from_numpy(np.asarray(dataset[uid][1][name], dtype=np.float32))
            with torch.no_grad():
                feats, _ = frontend(speech[None], torch.tensor([speech.shape[0]]))
            out[f"{split}/{original_id[uid]}"] = feats[0].numpy()
    return out


def _child(backend: str, run_dir: str, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    feats = {"nemo": _nemo_features, "speechbrain": _speechbrain_features, "espnet": _espnet_features}[backend](
        Path(run_dir))
    np.savez(out, **feats)


if __name__ == "__main__":
    _child(*sys.argv[1:4])
