"""NeMo backend: renders an OmegaConf config for EncDecCTCModel / EncDecCTCModelBPE (ConformerEncoder,
Lightning trainer, exp_manager) plus NeMo JSONL manifests; `task: tts` (fastspeech2 = NeMo FastPitch) is
rendered by spx.adapters.nemo.tts. No torch or NeMo import here: the toolkit is imported only by the child
modules (prep, train, decode, tts_*) that the run's steps start."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from spx.adapters.base import BackendAdapter  # CLS-WIRING
from spx.adapters.base import collect_normalized, unsupported
from spx.adapters.common.spec_helpers import check_cpu_precision, check_fine_tuning, check_nodes, deep_merge
from spx.errors import SpxError
from spx.manifests import iter_manifest
from spx.manifests.exporters import export_nemo
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import read_json

NATIVE_CONFIG = "native/config.yaml"

# spec scheduler -> NeMo scheduler (nemo.core.optim.lr_scheduler). All reach the spec's lr after warmup.
SCHEDULERS = {
    "cosine": "CosineAnnealing",            # warmup, cosine decay to min_lr
    "noam": "InverseSquareRootAnnealing",   # warmup, lr / sqrt(step / warmup) (Noam shape, peak = lr)
    "constant": "WarmupPolicy",             # warmup, then constant lr
    "linear": "WarmupAnnealing",            # warmup, linear decay to min_lr
}
PRECISION = {"fp32": 32, "fp16": "16-mixed", "bf16": "bf16-mixed"}


def _speed_rates(rates: list[float]) -> dict[str, Any]:
    """NeMo's SpeedPerturbation draws from `num_rates` evenly spaced rates in [min, max]."""
    rates = sorted(rates)
    if any(r <= 0 for r in rates):
        raise SpxError(f"augmentation.speed_perturb {rates}: rates must be > 0", where="augmentation.speed_perturb",
                       hint="e.g. [0.9, 1.0, 1.1]")
    n = len(rates)
    grid = [rates[0] + i * (rates[-1] - rates[0]) / (n - 1) for i in range(n)] if n > 1 else rates
    if any(abs(a - b) > 1e-6 for a, b in zip(grid, rates)):
        raise SpxError(f"augmentation.speed_perturb {rates}: NeMo's speed perturbation uses evenly spaced rates",
                       where="augmentation.speed_perturb", hint="use evenly spaced rates such as [0.9, 1.0, 1.1]")
    return {"min_speed_rate": rates[0], "max_speed_rate": rates[-1], "num_rates": n}


_CLS = BackendAdapter(name="nemo", families={"classification": {"kws_classifier": "kws_classifier"}})  # CLS-WIRING


class NemoAdapter:
    name = "nemo"
    tasks = {"asr": {"conformer_ctc"}, "tts": {"fastspeech2", "hifigan"},  # CLS-WIRING
             "classification": {"kws_classifier"}}  # CLS-WIRING

    # ------------------------------------------------------------------ contract
    def supports(self, spec: Spec) -> None:
        if spec.task == "classification":  # CLS-WIRING
            return _CLS.supports(spec)  # CLS-WIRING
        why = unsupported(spec, self.name, self.tasks)
        if why:
            raise SpxError(f"{why}; this job is task {spec.task!r}, model.family {spec.model.family!r}",
                           where="task" if spec.task not in self.tasks else "model.family",
                           hint="run it on a backend that has it; nemo has task: asr with family: conformer_ctc "
                                "and task: tts with family: fastspeech2 (FastPitch) or hifigan (a vocoder job)")
        if spec.task == "tts" and spec.model.family == "hifigan":  # a vocoder job
            from spx.adapters.nemo.vocoder import check_vocoder_job

            check_vocoder_job(spec)
            return
        if spec.task == "tts":
            from spx.adapters.nemo.tts import check_tts

            check_tts(spec)
            return
        check_cpu_precision(spec, "nemo", ("fp32", "bf16"))
        check_fine_tuning(spec, "a .nemo file (a run's exported_model)")
        if spec.augmentation.speed_perturb:
            _speed_rates(spec.augmentation.speed_perturb)
        init = Path(spec.init_from) if spec.init_from else None
        looks_like_path = init is not None and ("/" in str(init) or init.exists())
        is_run_dir = init is not None and init.is_dir() and (init / "train_summary.json").exists()
        if looks_like_path and not str(init).endswith(".nemo") and not is_run_dir:  # a run dir uses its exported_model
            raise SpxError(f"init_from {spec.init_from!r} is not a .nemo file", where="init_from",
                           hint="pass a .nemo file (a run's train_summary.json names it as exported_model), "
                                "an spx nemo run dir, or a pretrained NeMo model name")
        if init is not None and (str(init).endswith(".nemo") or is_run_dir):
            self._resolve_init(str(init))  # missing file / unfinished run: say so before anything is written
        check_nodes(spec)

    def render(self, spec: Spec, run_dir: RunDir) -> list[Step]:
        if spec.task == "classification":  # CLS-WIRING
            return _CLS.render(spec, run_dir)  # CLS-WIRING
        if spec.task == "tts" and spec.model.family == "hifigan":
            from spx.adapters.nemo.vocoder import render_vocoder_job

            return render_vocoder_job(spec, run_dir)
        if spec.task == "tts":
            from spx.adapters.nemo.tts import render_tts

            return render_tts(spec, run_dir)
        self.supports(spec)
        from omegaconf import OmegaConf

        from spx.adapters.common.child import char_vocabulary, clean_transcript

        native = run_dir / "native"
        native.mkdir(parents=True, exist_ok=True)
        lower = spec.tokenizer.lowercase

        def cleaned(path: str):
            for u in iter_manifest(path):
                if u.text is not None:
                    u.text = clean_transcript(u.text, lower)
                yield u

        export_nemo(cleaned(spec.data.train), native / "train.json")
        export_nemo(cleaned(spec.data.valid), native / "valid.json")
        for t in spec.test_sets:
            export_nemo(cleaned(t), native / f"test_{Path(t).stem}.json")
        texts = [u.text or "" for u in cleaned(spec.data.train)]
        durations = [u.duration for u in iter_manifest(spec.data.train)]
        if not texts:
            raise SpxError("the training manifest has no utterances", where=spec.data.train, hint="check data.train")

        steps: list[Step] = []
        py = sys.executable
        if spec.tokenizer.type == "bpe":
            (native / "tokenizer_text.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
            steps.append(Step("tokenizer", [py, "-m", "spx.adapters.nemo.prep", str(run_dir)]))

        cfg = self.native_config(spec, run_dir, char_vocabulary(texts), durations)
        extra = spec.backends.get("nemo") or {}
        if extra:
            cfg = deep_merge(cfg, extra)
        OmegaConf.save(OmegaConf.create(cfg), native / "config.yaml")

        steps.append(Step("train", [py, "-m", "spx.adapters.nemo.train", str(run_dir)], launch="tasks", log="train.log"))
        steps.append(Step("decode", [py, "-m", "spx.adapters.nemo.decode", str(run_dir)], timed=True))
        return steps

    def collect(self, run_dir: RunDir) -> dict[str, Any]:
        if run_dir.spec.task == "classification":  # CLS-WIRING
            return _CLS.collect(run_dir)  # CLS-WIRING
        if (run_dir / "native" / "tts_info.json").exists():
            from spx.adapters.nemo.tts import collect_tts

            return collect_tts(run_dir)
        out = collect_normalized(run_dir)
        out["native_config"] = str(run_dir / NATIVE_CONFIG)
        out["model_summary"] = read_json(run_dir / "native" / "model_summary.json")
        return out

    # ------------------------------------------------------------------ native config
    def native_config(self, spec: Spec, run_dir: RunDir, labels: list[str], durations: list[float]) -> dict[str, Any]:
        enc, feat, tr, aug = spec.model.encoder, spec.features, spec.training, spec.augmentation
        native = run_dir / "native"
        ckpt_dir = run_dir / "checkpoints"
        bpe = spec.tokenizer.type == "bpe"
        devices, nodes = spec.resources.devices, spec.resources.nodes
        world = devices * nodes

        def ds(manifest: Path, train: bool) -> dict[str, Any]:
            d: dict[str, Any] = {
                "manifest_filepath": str(manifest),
                "sample_rate": feat.sample_rate,
                "batch_size": tr.batch_size or 16,
                "shuffle": train,
                "num_workers": tr.num_workers,
                "pin_memory": False,
                "trim_silence": False,
                "normalize_transcripts": False,  # spx already cleaned the transcripts (same on every backend)
            }
            if not bpe:
                d["labels"] = labels
                d["parser"] = "base"
            if train:
                if spec.data.max_duration:
                    d["max_duration"] = spec.data.max_duration
                if spec.data.min_duration:
                    d["min_duration"] = spec.data.min_duration
                augmentor: dict[str, Any] = {}
                if aug.speed_perturb:
                    augmentor["speed"] = {"prob": 1.0, "sr": feat.sample_rate, "resample_type": "fft",
                                          **_speed_rates(aug.speed_perturb)}
                if aug.noise:
                    noise_manifest = native / "noise.json"
                    export_nemo(iter_manifest(aug.noise.manifest), noise_manifest)
                    augmentor["noise"] = {"prob": aug.noise.prob, "manifest_path": str(noise_manifest),
                                          "min_snr_db": aug.noise.snr_db[0], "max_snr_db": aug.noise.snr_db[1]}
                if augmentor:
                    d["augmentor"] = augmentor
                if tr.batch_seconds:
                    # NeMo's native dynamic batching: Lhotse sampler with a per-device audio-seconds budget
                    d.update({"use_lhotse": True, "batch_duration": tr.batch_seconds, "batch_size": None,
                              "shuffle": True, "seed": tr.seed, "drop_last": False})
                    d.pop("augmentor", None)
                    if aug.speed_perturb:
                        if sorted(aug.speed_perturb) != [0.9, 1.0, 1.1]:
                            raise SpxError("with training.batch_seconds NeMo (Lhotse) speed perturbation is fixed "
                                           "to [0.9, 1.0, 1.1]", where="augmentation.speed_perturb",
                                           hint="use [0.9, 1.0, 1.1], or training.batch_size instead of batch_seconds")
                        d["perturb_speed"] = True
                    if aug.noise:
                        raise SpxError("augmentation.noise with training.batch_seconds is not supported on nemo",
                                       where="augmentation.noise", hint="use training.batch_size with noise")
            return d

        optim: dict[str, Any] = {
            "name": tr.optimizer.name,
            "lr": tr.optimizer.lr,
            "weight_decay": tr.optimizer.weight_decay,
            "sched": {"name": SCHEDULERS[tr.scheduler.name], "warmup_steps": tr.scheduler.warmup_steps,
                      "min_lr": tr.scheduler.min_lr},
        }
        if tr.optimizer.name == "sgd":
            optim["momentum"] = 0.9
        else:
            optim["betas"] = list(tr.optimizer.betas)
        if tr.scheduler.name == "constant":
            optim["sched"].pop("min_lr")
        if tr.batch_seconds and not tr.max_steps:
            # a Lhotse loader has no length: give the schedule its length from the manifest durations
            per_epoch = math.ceil(sum(durations) / tr.batch_seconds / world / tr.grad_accumulation)
            optim["sched"]["max_steps"] = max(1, per_epoch * (tr.epochs or 1))

        decoding: dict[str, Any] = {"strategy": "greedy_batch"}
        if spec.decoding.strategy == "beam":
            decoding = {"strategy": "beam_batch", "beam": {"beam_size": spec.decoding.beam_size,
                                                           "return_best_hypothesis": True}}

        model: dict[str, Any] = {
            "sample_rate": feat.sample_rate,
            "log_prediction": False,
            "ctc_reduction": "mean_batch",
            "skip_nan_grad": False,
            "train_ds": ds(native / "train.json", True),
            "validation_ds": ds(native / "valid.json", False),
            "test_ds": ds(native / f"test_{Path(spec.test_sets[0]).stem}.json", False),
            "preprocessor": {
                "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                "sample_rate": feat.sample_rate,
                "normalize": "per_feature",
                "window_size": feat.win_length_ms / 1000.0,
                "window_stride": feat.hop_length_ms / 1000.0,
                "window": "hann",
                "features": feat.n_mels,
                "n_fft": feat.n_fft,
                "log": True,
                "frame_splicing": 1,
                "dither": 1e-5,
                "pad_to": 0,
                "pad_value": 0.0,
            },
            "spec_augment": None,
            "encoder": {
                "_target_": "nemo.collections.asr.modules.ConformerEncoder",
                "feat_in": feat.n_mels,
                "feat_out": -1,
                "n_layers": enc.layers,
                "d_model": enc.d_model,
                "subsampling": "striding",
                "subsampling_factor": enc.subsampling,
                "subsampling_conv_channels": -1,
                "causal_downsampling": False,
                "ff_expansion_factor": enc.ff_expansion,
                "self_attention_model": "rel_pos",
                "n_heads": enc.heads,
                "att_context_size": [-1, -1],
                "xscaling": True,
                "untie_biases": True,
                "pos_emb_max_len": 5000,
                "conv_kernel_size": enc.conv_kernel,
                "conv_norm_type": "batch_norm",
                "dropout": enc.dropout,
                "dropout_pre_encoder": enc.dropout,
                "dropout_emb": 0.0,
                "dropout_att": enc.dropout,
            },
            "decoder": {
                "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
                "feat_in": enc.d_model,
                "num_classes": -1,
                "vocabulary": [] if bpe else labels,
            },
            "decoding": decoding,
            "optim": optim,
        }
        if bpe:
            model["tokenizer"] = {"dir": str(native / "tokenizer"), "type": "bpe"}
        else:
            model["labels"] = labels
        if aug.spec_augment:
            sa = aug.spec_augment
            model["spec_augment"] = {
                "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
                "freq_masks": sa.freq_masks, "freq_width": sa.freq_width,
                "time_masks": sa.time_masks, "time_width": sa.time_width, "rect_masks": 0,
            }

        accelerator = {"auto": "auto", "cpu": "cpu", "gpu": "gpu"}[spec.resources.accelerator]
        trainer: dict[str, Any] = {
            "devices": devices,
            "num_nodes": nodes,
            "accelerator": accelerator,
            # CPU processes talk over gloo; GPUs over nccl (the child picks when accelerator is auto)
            "strategy": "auto" if world == 1 else "ddp",
            "max_epochs": -1 if tr.max_steps else tr.epochs,
            "max_steps": tr.max_steps or -1,
            "accumulate_grad_batches": tr.grad_accumulation,
            "gradient_clip_val": tr.grad_clip or 0.0,
            "precision": PRECISION[tr.precision],
            "log_every_n_steps": 10,
            "check_val_every_n_epoch": 1,
            "num_sanity_val_steps": 0,
            "enable_checkpointing": False,  # exp_manager adds its own ModelCheckpoint
            "logger": False,                # exp_manager decides the loggers
            "enable_progress_bar": False,
            "enable_model_summary": True,
            "benchmark": False,
            "use_distributed_sampler": not tr.batch_seconds,
        }
        monitor = {"valid_loss": ("val_loss", "min"), "valid_wer": ("val_wer", "min")}
        mon, mode = monitor[tr.early_stopping.monitor if tr.early_stopping else "valid_loss"]
        exp_manager: dict[str, Any] = {
            # not the checkpoint dir: on resume exp_manager moves the log dir's old files into run_N/
            "explicit_log_dir": str(run_dir / "logs" / "nemo"),
            "resume_if_exists": True,
            "resume_ignore_no_checkpoint": True,
            "create_tensorboard_logger": False,
            "create_wandb_logger": False,
            "log_step_timing": False,
            "log_tflops_per_sec_per_gpu": False,
            "create_preemption_callback": False,
            "seconds_to_sleep": 0,
            "create_checkpoint_callback": True,
            "checkpoint_callback_params": {
                "dirpath": str(ckpt_dir),
                "filename": "{epoch}-{step}-{" + mon + ":.4f}",
                "monitor": mon,
                "mode": mode,
                "save_top_k": tr.keep_checkpoints,
                "save_last": True,
                "always_save_nemo": False,
                "save_nemo_on_train_end": False,  # spx exports the final .nemo itself (model.nemo)
                "every_n_epochs": 1,
                # save after the whole epoch (validation included), so a resumed run starts a fresh epoch
                "save_on_train_epoch_end": True,
            },
            "create_early_stopping_callback": tr.early_stopping is not None,
        }
        if tr.early_stopping:
            exp_manager["early_stopping_callback_params"] = {
                "monitor": mon, "mode": mode, "patience": tr.early_stopping.patience, "min_delta": 0.0,
                "check_finite": True, "verbose": True,
            }
        cfg: dict[str, Any] = {
            "name": spec.name,
            "model": model,
            "trainer": trainer,
            "exp_manager": exp_manager,
            # spx-run settings NeMo has no config key for (read by spx.adapters.nemo.train)
            "spx": {
                "seed": tr.seed,
                "freeze": list(spec.freeze),
                "init_from": spec.init_from,
                "threads": spec.resources.threads,
                "exported_model": str(ckpt_dir / "model.nemo"),
                "tokenizer": {"type": spec.tokenizer.type, "vocab_size": spec.tokenizer.vocab_size},
                "batch_size": tr.batch_size,
                "batch_seconds": tr.batch_seconds,
            },
        }
        if spec.init_from:
            # NeMo's own fine-tuning keys (ModelPT.maybe_init_from_pretrained_checkpoint)
            src = self._resolve_init(spec.init_from)
            if src.endswith(".nemo"):
                cfg["init_from_nemo_model"] = src
            else:
                cfg["init_from_pretrained_model"] = src
        return cfg

    @staticmethod
    def _resolve_init(init_from: str) -> str:
        p = Path(init_from)
        if p.is_dir():
            summary = read_json(p / "train_summary.json") or {}
            exported = summary.get("exported_model")
            if not exported or not Path(exported).is_file():
                raise SpxError(f"init_from {init_from!r}: the run has no exported .nemo model", where="init_from",
                               hint="finish that run first, or pass a .nemo file")
            return str(Path(exported).resolve())
        if init_from.endswith(".nemo"):
            if not p.is_file():
                raise SpxError(f"init_from {init_from!r}: file not found", where="init_from",
                               hint="pass an existing .nemo file (a run's checkpoints/model.nemo)")
            return str(p.resolve())
        return init_from


ADAPTER = NemoAdapter()
