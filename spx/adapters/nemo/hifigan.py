"""NeMo HiFi-GAN vocoder as its own spx job (`task: tts`, `model.family: hifigan`): NeMo's `HifiGanModel` (generator +
multi-period and multi-scale discriminators, mel L1 x 45 + adversarial + feature-matching losses) trained on the audio
of the manifests alone, in the layout of NeMo's own `examples/tts/conf/hifigan/hifigan.yaml` (FilterbankFeatures with
the acoustic model's mel settings, `VocoderDataset` random crops), on a Lightning Trainer with exp_manager.

The exported `checkpoints/model.nemo` is what a FastPitch job's `tts.vocoder` names (the run dir or the file).
The test step is copy synthesis: each test recording -> its mel -> the generator -> a waveform, timed by the shared
synthesis protocol and scored like any TTS run (MOS proxies, MCD/F0 against the recording, judge WER).

Writes run_dir/native/: tts_config.yaml (model / trainer / exp_manager / spx), vocoder_train.json, vocoder_valid.json
(NeMo manifests: audio_filepath, duration), tts_info.json. Steps: tts_train, tts_synth
(spx.adapters.nemo.steps.tts_*). No torch or NeMo import here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from spx.adapters.common import hifigan as hifigan_rules
from spx.adapters.nemo.helpers import TTS_CONFIG, TTS_INFO, check_no_duration_teacher, check_tts_early_stopping, \
    mel_settings, optimizer_moments, resolve_tts_init, sched_config, tts_config, tts_steps, \
    tts_trainer_and_exp_manager, write_config, write_whole_file_manifest
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import atomic_write_json

TASK = "tts"
NAME = "hifigan"
PRECISIONS = ("fp32",)  # TTS trains in fp32 in spx, on any device
CPU_PRECISIONS = ("fp32",)
FREEZE = False  # every weight trains; init_from alone fine-tunes
INIT_FROM = "a HifiGanModel .nemo (a nemo hifigan run's checkpoints/model.nemo) or that run dir"
INFERENCE = None  # a vocoder job (audio in, audio out): nothing to serve on /v1/synthesize; its generator serves
# through the FastPitch run whose tts.vocoder names it
EXPORT = None
EXPORT_REFUSED = ("a vocoder job has no text to speak: its generator is exported inside the export of the FastPitch "
                  "run whose tts.vocoder names this run (vocoder.onnx beside model.onnx); export that run")

MODEL_CLASS = "HifiGanModel"
# spec optimizer -> the torch class NeMo's HifiGanModel instantiates (its optim blocks are _target_ configs)
TORCH_OPTIMIZERS = {"adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD"}


def segment_samples(spec: Spec) -> int:
    return hifigan_rules.segment_samples(spec, mel_settings(spec)["hop_length"])


def check(spec: Spec) -> None:
    """What NeMo's HifiGanModel cannot render (the shared checks ran before: nodes, CPU precision, freeze, init_from's
    backend and family)."""
    t = spec.training
    check_no_duration_teacher(spec)
    hifigan_rules.check_hifigan_job(spec, mel_settings(spec), "NeMo")
    if t.grad_clip is not None or t.grad_accumulation != 1:
        raise SpxError("NeMo's HifiGanModel steps its generator and discriminator optimizers by hand (Lightning manual "
                       "optimization), where the Trainer can neither clip gradients nor accumulate them",
                       where="training.grad_clip" if t.grad_clip is not None else "training.grad_accumulation",
                       hint="set training.grad_clip: null and training.grad_accumulation: 1")
    check_tts_early_stopping(spec)
    if spec.init_from:
        resolve_tts_init(spec.init_from, "HiFi-GAN")


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    native = run_dir / "native"
    native.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    seg_seconds = segment_samples(spec) / spec.tts.sample_rate
    lo = max(seg_seconds, spec.data.min_duration or 0.0)
    _audio_manifest(spec.data.train, native / "vocoder_train.json", lo, spec.data.max_duration)
    _audio_manifest(spec.data.valid, native / "vocoder_valid.json", seg_seconds)
    cfg = write_config(spec, run_dir / TTS_CONFIG, native_config(spec, run_dir))
    atomic_write_json(run_dir / TTS_INFO, {
        "model": f"{MODEL_CLASS} (copy synthesis of the test recordings)", "model_class": MODEL_CLASS,
        "mel": mel_settings(spec), "vocoder": None, "vocoder_name": f"hifigan (this run, {MODEL_CLASS})",
        "init_from": cfg["spx"]["init_from"],
    })
    return tts_steps(run_dir, prepare=False)


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {"native_config": str(run_dir / TTS_CONFIG)}


def _audio_manifest(src: str, dst: Path, lo: float | None = None, hi: float | None = None) -> int:
    return write_whole_file_manifest(src, dst, lambda u: {"utt_id": u.id}, "VocoderDataset",
                                     "empty manifest, or all shorter than the training crop / filtered by "
                                     "data.min/max_duration", "check the manifest, model.segment_seconds and "
                                                              "data.min_duration/max_duration", lo, hi)


def native_config(spec: Spec, rd: RunDir) -> dict[str, Any]:
    m, t, mel = spec.model, spec.training, mel_settings(spec)
    native = rd / "native"
    kernels, dilations = hifigan_rules.RESBLOCKS[m.resblock]
    seg = segment_samples(spec)  # validation crops too: equal lengths, so the batched mel L1 compares like with like

    def dataset(manifest: Path, n_segments: int, train: bool) -> dict[str, Any]:
        return {
            "dataset": {"_target_": "nemo.collections.tts.data.dataset.VocoderDataset",
                        "manifest_filepath": str(manifest), "sample_rate": mel["sample_rate"],
                        "n_segments": n_segments, "min_duration": n_segments / mel["sample_rate"],
                        "max_duration": spec.data.max_duration if train else None, "trim": False},
            "dataloader_params": {"drop_last": False, "shuffle": train, "batch_size": t.batch_size,
                                  "num_workers": t.num_workers},
        }

    optim: dict[str, Any] = {"_target_": TORCH_OPTIMIZERS[t.optimizer.name], "lr": t.optimizer.lr,
                             "weight_decay": t.optimizer.weight_decay, **optimizer_moments(t),
                             "sched": sched_config(t)}
    model: dict[str, Any] = {
        # the mel the generator hears: the same settings spx gives NeMo FastPitch (log of slaney mel magnitude, +1e-5);
        # exact_pad as in NeMo's hifigan.yaml, so a crop of k hops has exactly k frames
        "preprocessor": {
            "_target_": "nemo.collections.asr.parts.preprocessing.features.FilterbankFeatures",
            "nfilt": mel["n_mels"], "lowfreq": 0, "highfreq": int(mel["f_max"]), "n_fft": mel["n_fft"],
            "n_window_size": mel["win_length"], "n_window_stride": mel["hop_length"], "pad_to": 0, "pad_value": 0.0,
            "sample_rate": mel["sample_rate"], "window": "hann", "normalize": None, "preemph": None, "dither": 0.0,
            "frame_splicing": 1, "log": True, "log_zero_guard_type": "add", "log_zero_guard_value": 1e-05,
            "mag_power": 1.0, "use_grads": False, "exact_pad": True,
        },
        "generator": {
            "_target_": "nemo.collections.tts.modules.hifigan_modules.Generator",
            "resblock": m.resblock, "upsample_rates": list(m.upsample_rates),
            "upsample_kernel_sizes": [2 * r for r in m.upsample_rates],
            "upsample_initial_channel": m.upsample_initial_channel,
            "resblock_kernel_sizes": kernels, "resblock_dilation_sizes": dilations,
            "initial_input_size": mel["n_mels"],
        },
        "train_ds": dataset(native / "vocoder_train.json", seg, True),
        "validation_ds": dataset(native / "vocoder_valid.json", seg, False),
        "optim": optim,
        "l1_loss_factor": 45,
        "denoise_strength": 0.0025,
    }
    trainer, exp_manager = tts_trainer_and_exp_manager(spec, rd)
    trainer["gradient_clip_val"] = None  # manual optimization (checked in check)
    if t.max_steps:
        # Lightning counts both optimizers' steps in global_step: one batch = 2; the schedule counts batches
        trainer["max_steps"] = 2 * t.max_steps
        model["max_steps"] = t.max_steps
    else:
        model["max_epochs"] = trainer["max_epochs"]
    return tts_config(spec, rd, model, trainer, exp_manager,
                      resolve_tts_init(spec.init_from, "HiFi-GAN") if spec.init_from else None,
                      model_class=MODEL_CLASS)
