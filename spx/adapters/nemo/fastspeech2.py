"""NeMo FastPitch with its internal aligner (`task: tts`, `model.family: fastspeech2`): the spec becomes NeMo's own
FastPitch recipe: one OmegaConf config in the layout of NeMo's `fastpitch_align_*.yaml` (`learn_alignment: true`,
`nemo.collections.tts.data.dataset.TTSDataset` with `align_prior_matrix` + `pitch` supplementary data, NeMo's
`EnglishCharsTokenizer`: characters, no g2p, nothing downloaded), trained by `FastPitchModel` on a Lightning Trainer
with exp_manager, then synthesized with Griffin-Lim (or a HiFiGAN `.nemo` named by tts.vocoder).

render writes run_dir/native/:
  tts_config.yaml   the FastPitch config (model / trainer / exp_manager / spx); pitch_mean/pitch_std are filled in by
                    the tts_prepare step from the training data
  tts_train.json, tts_valid.json   NeMo TTS manifests (audio_filepath, duration, text, normalized_text: cleaned text)
  sup_data/         NeMo's supplementary data dir (pitch contours, cached by tts_prepare)
  tts_info.json     mel settings, vocoder, init_from (what the tts_train / tts_synth steps read)
Steps: tts_prepare, tts_train, tts_synth (spx.adapters.nemo.steps.tts_*). Nothing here imports torch or NeMo.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from spx.adapters.common.child import clean_transcript
from spx.adapters.nemo.helpers import TTS_CONFIG, TTS_INFO, TTS_SCHEDULERS, check_no_duration_teacher, \
    check_tts_early_stopping, mel_settings, optim_config, resolve_tts_init, tts_config, tts_steps, \
    tts_trainer_and_exp_manager, write_config, write_whole_file_manifest
from spx.errors import SpxError
from spx.manifests import Utterance
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import atomic_write_json, read_json

TASK = "tts"
NAME = "fastspeech2"
PRECISIONS = ("fp32",)  # TTS trains in fp32 in spx, on any device
CPU_PRECISIONS = ("fp32",)
FREEZE = False  # every weight trains; init_from alone fine-tunes
INIT_FROM = "a FastPitch .nemo (a nemo fastspeech2 run's checkpoints/model.nemo) or that run dir"
INFERENCE = "spx.adapters.nemo.steps.tts_synth"  # load_synthesizer (spx serve)
EXPORT = "spx.adapters.nemo.steps.tts_export"  # ONNX through NeMo's Exportable.export (+ int8), TorchScript

# librosa.pyin's range as in NeMo's FastPitch recipes (C2..C7)
PITCH_FMIN, PITCH_FMAX = 65.40639132514966, 2093.004522404789
# the characters NeMo's EnglishCharsTokenizer speaks (a-z, apostrophe, space, punctuation); clean_transcript may keep
# digits, which it drops
TOKENIZER = "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers.EnglishCharsTokenizer"


def check(spec: Spec) -> None:
    """What NeMo's FastPitch cannot render (the shared checks ran before: nodes, CPU precision, freeze, init_from's
    backend and family)."""
    check_no_duration_teacher(spec)
    t, mel = spec.training, mel_settings(spec)
    if spec.tts.multi_speaker:
        raise SpxError("tts.multi_speaker is not rendered for NeMo FastPitch in spx yet (it needs speaker ids in the "
                       "manifests and NeMo's speaker embedding table)", where="tts.multi_speaker",
                       hint="set tts.multi_speaker: false, or use the espnet/speechbrain tacotron2 backends")
    if mel["win_length"] != 4 * mel["hop_length"]:
        # NeMo computes pitch with librosa.pyin(frame_length=win_length) and pyin's default hop (frame_length // 4):
        # the pitch frames line up with the mel frames only when hop = win / 4
        raise SpxError(f"NeMo FastPitch needs features.hop_length_ms = win_length_ms / 4 (pitch frames must match mel "
                       f"frames), got win {spec.features.win_length_ms} ms, hop {spec.features.hop_length_ms} ms",
                       where="features.hop_length_ms", hint="e.g. win_length_ms: 64.0, hop_length_ms: 16.0")
    if t.batch_size is None:
        raise SpxError("TTS jobs batch by utterances", where="training.batch_size", hint="set training.batch_size")
    if t.scheduler.name not in TTS_SCHEDULERS:
        raise SpxError(f"training.scheduler {t.scheduler.name!r} is not mapped for TTS on nemo",
                       where="training.scheduler.name", hint="use cosine (with warmup_steps) or constant")
    if spec.resources.devices * spec.resources.nodes > 1:
        raise SpxError("NeMo FastPitch runs as one process in spx (its pitch cache is written on the fly)",
                       where="resources.devices", hint="set resources.devices: 1 and resources.nodes: 1")
    check_tts_early_stopping(spec)
    resolve_vocoder(spec)
    if spec.init_from:
        resolve_tts_init(spec.init_from, "FastPitch")


def resolve_vocoder(spec: Spec) -> str | None:
    """tts.vocoder as a HifiGanModel .nemo path (None: Griffin-Lim)."""
    voc = spec.tts.vocoder
    if voc is None:
        return None
    p = Path(voc).expanduser()
    if p.is_dir():  # an spx nemo hifigan run: its train_summary.json names the exported .nemo
        summary = read_json(p / "train_summary.json") or {}
        exported = summary.get("exported_model")
        if summary.get("model_class") != "HifiGanModel" or not exported or not Path(exported).is_file():
            raise SpxError(f"tts.vocoder {voc!r} is not a finished spx nemo hifigan run (no exported HifiGanModel "
                           ".nemo in its train_summary.json)", where="tts.vocoder",
                           hint="finish that vocoder run first (spx run --backend nemo recipes/hifigan.yaml), or "
                                "give its checkpoints/model.nemo")
        p = Path(exported)
    if p.suffix != ".nemo" or not p.is_file():
        raise SpxError(f"tts.vocoder {voc!r} is not a NeMo HiFiGAN .nemo file", where="tts.vocoder",
                       hint="give a local HifiGanModel .nemo or an spx nemo hifigan run dir (its mel settings must "
                            "match tts.n_mels/sample_rate and features:), or leave tts.vocoder unset for Griffin-Lim")
    return str(p.resolve())


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    lower = spec.tokenizer.lowercase
    _manifest(spec.data.train, native / "tts_train.json", lower, spec.data.min_duration, spec.data.max_duration)
    _manifest(spec.data.valid, native / "tts_valid.json", lower)
    cfg = write_config(spec, run_dir / TTS_CONFIG, native_config(spec, run_dir))
    vocoder = resolve_vocoder(spec)
    atomic_write_json(run_dir / TTS_INFO, {
        "model": "FastPitchModel (learn_alignment)", "mel": mel_settings(spec), "vocoder": vocoder,
        "vocoder_name": vocoder or f"griffin-lim ({spec.tts.griffin_lim_iters} iters)",
        "griffin_lim_iters": spec.tts.griffin_lim_iters, "init_from": cfg["spx"]["init_from"],
    })
    return tts_steps(run_dir, prepare=True)


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {"native_config": str(run_dir / TTS_CONFIG)}


def _manifest(src: str, dst: Path, lowercase: bool, lo: float | None = None, hi: float | None = None) -> int:
    def row(u: Utterance) -> dict[str, Any]:
        text = clean_transcript(u.text or "", lowercase)
        if not text:
            raise SpxError(f"row {u.id!r} has no text to speak", where=src, hint="drop it or give it a transcript")
        return {"text": text, "normalized_text": text, "utt_id": u.id}

    return write_whole_file_manifest(src, dst, row, "TTSDataset", "empty manifest, or all filtered by "
                                     "data.min/max_duration", "check the manifest and data.min_duration/max_duration",
                                     lo, hi)


def native_config(spec: Spec, rd: RunDir) -> dict[str, Any]:
    m, t, mel = spec.model, spec.training, mel_settings(spec)
    native = rd / "native"
    d_head = m.d_model // m.heads

    def dataset(manifest: Path, train: bool) -> dict[str, Any]:
        ds: dict[str, Any] = {
            "_target_": "nemo.collections.tts.data.dataset.TTSDataset",
            "manifest_filepath": str(manifest),
            "sample_rate": mel["sample_rate"],
            "sup_data_path": str(native / "sup_data"),
            "sup_data_types": ["align_prior_matrix", "pitch"],
            "n_fft": mel["n_fft"],
            "win_length": mel["win_length"],
            "hop_length": mel["hop_length"],
            "window": "hann",
            "n_mels": mel["n_mels"],
            "lowfreq": 0,
            "highfreq": int(mel["f_max"]),
            "max_duration": spec.data.max_duration,
            "min_duration": spec.data.min_duration,
            "ignore_file": None,
            "trim": False,
            "pitch_fmin": "${model.pitch_fmin}",
            "pitch_fmax": "${model.pitch_fmax}",
            "pitch_norm": True,
            "pitch_mean": "${model.pitch_mean}",
            "pitch_std": "${model.pitch_std}",
            "use_beta_binomial_interpolator": True,
        }
        return {"dataset": ds, "dataloader_params": {"drop_last": False, "shuffle": train, "batch_size": t.batch_size,
                                                     "num_workers": t.num_workers}}

    def fft(target: str, layers: int, **extra: Any) -> dict[str, Any]:
        return {"_target_": f"nemo.collections.tts.modules.transformer.{target}", "n_layer": layers, "n_head": m.heads,
                "d_model": m.d_model, "d_head": d_head, "d_inner": 4 * m.d_model, "kernel_size": 3, "dropout": 0.1,
                "dropatt": 0.1, "dropemb": 0.0, **extra}

    predictor = {"_target_": "nemo.collections.tts.modules.fastpitch.TemporalPredictor", "input_size": m.d_model,
                 "kernel_size": 3, "filter_size": m.d_model, "dropout": 0.1, "n_layers": 2}
    model: dict[str, Any] = {
        "learn_alignment": True,
        "bin_loss_warmup_epochs": max(1, (t.epochs or 100) // 2),
        "n_speakers": 1,
        "max_token_duration": 75,
        "symbols_embedding_dim": m.d_model,
        "pitch_embedding_kernel_size": 3,
        "pitch_fmin": PITCH_FMIN,
        "pitch_fmax": PITCH_FMAX,
        "pitch_mean": None,  # filled in by tts_prepare from the training data (voiced frames)
        "pitch_std": None,
        "sample_rate": mel["sample_rate"],
        "n_mel_channels": mel["n_mels"],
        "n_window_size": mel["win_length"],
        "n_window_stride": mel["hop_length"],
        "n_fft": mel["n_fft"],
        "lowfreq": 0,
        "highfreq": int(mel["f_max"]),
        "window": "hann",
        "text_tokenizer": {"_target_": TOKENIZER, "punct": True, "apostrophe": True, "pad_with_space": True},
        "train_ds": dataset(native / "tts_train.json", True),
        "validation_ds": dataset(native / "tts_valid.json", False),
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "features": "${model.n_mel_channels}",
            "lowfreq": "${model.lowfreq}",
            "highfreq": "${model.highfreq}",
            "n_fft": "${model.n_fft}",
            "n_window_size": "${model.n_window_size}",
            "window_size": False,
            "n_window_stride": "${model.n_window_stride}",
            "window_stride": False,
            "pad_to": 1,
            "pad_value": 0,
            "sample_rate": "${model.sample_rate}",
            "window": "${model.window}",
            "normalize": None,
            "preemph": None,
            "dither": 0.0,
            "frame_splicing": 1,
            "log": True,
            "log_zero_guard_type": "add",
            "log_zero_guard_value": 1e-05,
            "mag_power": 1.0,
        },
        "input_fft": fft("FFTransformerEncoder", m.encoder_layers, d_embed=m.d_model),
        "output_fft": fft("FFTransformerDecoder", m.decoder_layers),
        "alignment_module": {
            "_target_": "nemo.collections.tts.modules.aligner.AlignmentEncoder",
            "n_mel_channels": mel["n_mels"], "n_text_channels": m.d_model, "n_att_channels": mel["n_mels"],
        },
        "duration_predictor": dict(predictor),
        "pitch_predictor": dict(predictor),
        "optim": optim_config(t),
    }
    return tts_config(spec, rd, model, *tts_trainer_and_exp_manager(spec, rd),
                      resolve_tts_init(spec.init_from, "FastPitch") if spec.init_from else None)
