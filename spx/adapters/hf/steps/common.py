"""What the hf train and decode steps share (child process: torch, transformers, datasets, peft imported here).

Training is Transformers' own loop: Trainer / Seq2SeqTrainer over TrainingArguments(**native/training_args.json).
spx adds, through the Trainer's documented hooks only: the optimizer's parameter groups (pretrained part vs new head,
training.optimizer.pretrained_lr), the pretrained part's warm-up hold (finetune.freeze_pretrained_steps, a zero
multiplier on its lr), and callbacks that write the normalized records (curve.jsonl, progress lines) and mark every
checkpoint complete once the Trainer has written it (resume takes only complete ones).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import TrainerCallback

from spx.adapters.common import child
from spx.manifests import Utterance

RANK = int(os.environ.get("RANK", "0"))
WORLD = int(os.environ.get("WORLD_SIZE", "1"))
COMPLETE = "spx_complete"
EXPORT_INFO = "spx_export.json"


def log(msg: str) -> None:
    print(f"spx[rank {RANK}/{WORLD}]: {msg}", flush=True)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def native_settings(rd) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TrainingArguments kwargs, spx_hf.json) of the run."""
    return read_json(rd / "native" / "training_args.json"), read_json(rd / "native" / "spx_hf.json")


# ---------------------------------------------------------------- data
def dataset(rows_path: Path, sample_rate: int, encode: Callable[[dict[str, Any], np.ndarray], dict[str, Any]]):
    """A datasets.Dataset of the rendered rows ({id, audio, offset, duration, text}); audio is decoded on access
    (with_transform) through the audio contract's one decoder, so a large manifest never sits in memory as audio."""
    import datasets

    rows = [json.loads(line) for line in rows_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    ds = datasets.Dataset.from_list(rows)

    def transform(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {}
        for i in range(len(batch["id"])):
            utt = Utterance(id=batch["id"][i], audio=batch["audio"][i], duration=float(batch["duration"][i]),
                            offset=float(batch["offset"][i] or 0.0))
            row = {k: batch[k][i] for k in batch}
            for k, v in encode(row, child.load_audio(utt, sample_rate)).items():
                out.setdefault(k, []).append(v)
        return out

    return ds.with_transform(transform)


# ---------------------------------------------------------------- model parts
def count(params) -> int:
    return int(sum(p.numel() for p in params))


def freeze_parameters(model, freeze: list[str], encoder_layers, feature_extractor: Callable[[], None],
                      encoder: torch.nn.Module) -> int:
    """spec freeze: items; returns the number of frozen parameter tensors."""
    before = sum(1 for p in model.parameters() if not p.requires_grad)
    for item in freeze:
        if item == "feature_extractor":
            feature_extractor()
        elif item == "encoder":
            for p in encoder.parameters():
                p.requires_grad_(False)
        elif item.startswith("encoder.layers:"):
            n = int(item.split(":", 1)[1])
            if n > len(encoder_layers):
                raise RuntimeError(f"freeze {item!r}: the pretrained encoder has {len(encoder_layers)} layers")
            for layer in list(encoder_layers)[:n]:
                for p in layer.parameters():
                    p.requires_grad_(False)
    return sum(1 for p in model.parameters() if not p.requires_grad) - before


def apply_lora(model, settings: dict[str, Any]):
    """peft LoRA on the target modules; the base weights stay frozen and untouched, the head (modules_to_save)
    trains in full."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(**settings["lora_config"]))


def is_head(name: str, head: tuple[str, ...]) -> bool:
    return any(part in head for part in name.split("."))


def make_trainer_class(base, opt: dict[str, Any], head: tuple[str, ...], hold_steps: int):
    """`base` (Trainer or Seq2SeqTrainer) with the spec's optimizer: parameter groups by (pretrained | head) x
    (decay | no decay, as Trainer groups them), pretrained_lr on the pretrained part, and its lr held at zero for
    the first `hold_steps` optimizer steps."""

    class SpxTrainer(base):
        def create_optimizer(self, model=None):
            if self.optimizer is not None:
                return self.optimizer
            model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(model))
            groups: dict[tuple[bool, bool], list] = {}
            for n, p in model.named_parameters():
                if p.requires_grad:
                    groups.setdefault((is_head(n, head), n in decay), []).append(p)
            pretrained_lr = opt["pretrained_lr"] or opt["lr"]
            param_groups = [{"params": ps, "weight_decay": opt["weight_decay"] if dec else 0.0,
                             "lr": opt["lr"] if is_h else pretrained_lr, "spx_pretrained": not is_h}
                            for (is_h, dec), ps in sorted(groups.items())]
            cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[opt["name"]]
            kwargs = {"lr": opt["lr"]} if opt["name"] == "sgd" else {"lr": opt["lr"], "betas": tuple(opt["betas"])}
            self.optimizer = cls(param_groups, **kwargs)
            return self.optimizer

        def _save(self, output_dir=None, state_dict=None):
            """LoRA checkpoints: the adapter (+ head) only, without embedding layers (peft#1569: the "auto" check
            asks the base for its input embeddings, which speech encoders do not have, and the vocabulary changed)."""
            from peft import PeftModel

            if not isinstance(self.model, PeftModel):
                return super()._save(output_dir, state_dict)
            output_dir = output_dir or self.args.output_dir
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                self.model.save_pretrained(output_dir, save_embedding_layers=False)
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
                torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

        def create_scheduler(self, num_training_steps, optimizer=None):
            sched = super().create_scheduler(num_training_steps, optimizer)
            if hold_steps and hasattr(sched, "lr_lambdas"):
                opt_ = optimizer or self.optimizer
                for i, group in enumerate(opt_.param_groups):
                    if group.get("spx_pretrained"):
                        f = sched.lr_lambdas[i]
                        sched.lr_lambdas[i] = lambda step, f=f: 0.0 if step < hold_steps else f(step)
                        group["lr"] = sched.base_lrs[i] * sched.lr_lambdas[i](sched.last_epoch)
                sched._last_lr = [g["lr"] for g in opt_.param_groups]
            return sched

    return SpxTrainer


def feature_extractor(source: str):
    """The checkpoint's own feature extractor; a folder without preprocessor_config.json gets Wav2Vec2FeatureExtractor
    defaults (16 kHz, normalized input), and the log says so."""
    from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor

    try:
        return AutoFeatureExtractor.from_pretrained(source)
    except OSError:
        log(f"{source} has no preprocessor_config.json: Wav2Vec2FeatureExtractor defaults (normalized input)")
        return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                        return_attention_mask=True)


def prepare_model(model, settings: dict[str, Any], describe: dict[str, Any], source: str, model_type: str,
                  encoder: torch.nn.Module, encoder_layers, freeze_feature_extractor: Callable[[], None],
                  after_lora: Callable[[Any], None] | None = None):
    """What every hf train step does to the loaded model before the Trainer gets it: the spec's freeze items,
    peft LoRA (finetune.method lora), the family's own step (`after_lora`: ssl_ctc's attention adapters), and the
    parameter counts in `describe` (train_summary.json). Returns the model (a PeftModel with LoRA)."""
    frozen = freeze_parameters(model, settings["freeze"], encoder_layers, freeze_feature_extractor, encoder)
    if frozen:
        log(f"frozen: {frozen} parameter tensors ({', '.join(settings['freeze'])})")
    lora = settings["method"] == "lora"
    if lora:
        model = apply_lora(model, settings)
    if after_lora is not None:
        after_lora(model)
    describe.update(param_report(model, lora), model_type=model_type, frozen_parameters=frozen)
    log(f"{model_type} from {source}: {describe['params']} parameters, {describe['trainable_params']} trainable"
        + (f" ({describe['lora_params']} LoRA)" if lora else ""))
    return model


def build_trainer(trainer_cls, args_cls, args_kw: dict[str, Any], settings: dict[str, Any], head: tuple[str, ...],
                  model, records: "RecordsCallback", rd, sample_rate: int,
                  encode: Callable[[dict[str, Any], np.ndarray], dict[str, Any]], collate, **kwargs):
    """The Trainer set-up of every hf family: `args_cls(**native/training_args.json)`, spx's Trainer subclass
    (parameter groups, held pretrained part, LoRA saving), the records and early-stopping callbacks, and the
    datasets of native/train.jsonl and valid.jsonl. `kwargs` go to the Trainer (processing_class, compute_metrics,
    preprocess_logits_for_metrics)."""
    from transformers import EarlyStoppingCallback

    args = args_cls(**args_kw)
    cls = make_trainer_class(trainer_cls, settings["optimizer"], head, settings["freeze_pretrained_steps"])
    callbacks: list = [records]
    if settings["early_stopping"]:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings["early_stopping"]["patience"]))
    train = dataset(rd / "native" / "train.jsonl", sample_rate, encode)
    valid = dataset(rd / "native" / "valid.jsonl", sample_rate, encode)
    return cls(model=model, args=args, data_collator=collate, train_dataset=train, eval_dataset=valid,
               callbacks=callbacks, **kwargs)


def export_model(rd, trainer, settings: dict[str, Any], source: str, info: dict[str, Any],
                 save_extra: Callable[[Path], None]) -> Path:
    """checkpoints/export, written whole or not at all: the full model (Trainer.save_model), or for LoRA the adapter
    weights and the new head (modules_to_save) apart from the base, which spx_export.json names (no embedding
    layers: peft#1569, the base's vocabulary or classes differ from the new head's), plus merged/ when
    backends.hf.merge_lora. `save_extra` writes the feature extractor / processor / tokenizer beside it."""
    out = rd / "checkpoints" / "export"
    tmp = rd / "checkpoints" / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info = {**info, "method": settings["method"], "source": source}
    if settings["method"] == "lora":
        trainer.model.save_pretrained(str(tmp / "adapter"), save_embedding_layers=False)
        info["base_model"] = str(Path(source).resolve()) if Path(source).exists() else source
        info["adapter"] = "adapter"
        if settings["merge_lora"]:
            import copy

            copy.deepcopy(trainer.model).merge_and_unload().save_pretrained(str(tmp / "merged"))
            info["merged"] = "merged"
    else:
        trainer.save_model(str(tmp))
    save_extra(tmp)
    export_info(tmp, info)
    return replace_dir(tmp, out)


def param_report(model, lora: bool) -> dict[str, int]:
    total = count(model.parameters())
    trainable = count(p for p in model.parameters() if p.requires_grad)
    out = {"params": total, "trainable_params": trainable, "frozen_params": total - trainable}
    if lora:
        out["lora_params"] = count(p for n, p in model.named_parameters() if "lora_" in n)
    return out


# ---------------------------------------------------------------- callbacks
class RecordsCallback(TrainerCallback):
    """curve.jsonl rows and progress lines at every evaluation (once per epoch), and the completeness mark on
    every checkpoint the Trainer has finished writing."""

    def __init__(self, rd, planned_epochs: float, prior_seconds: float):
        self.rd, self.planned, self.t0, self.prior = rd, planned_epochs, time.time(), prior_seconds
        self.batches = 0
        self.updates = 0

    def on_step_end(self, args, state, control, **kw):
        self.updates += 1
        self.batches += args.gradient_accumulation_steps

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        metrics = metrics or {}
        logs = [h for h in state.log_history if "loss" in h]
        train_loss = logs[-1]["loss"] if logs else None
        lr = logs[-1].get("learning_rate") if logs else None
        epoch = max(1, math.ceil((state.epoch or 0) - 1e-6))  # the epoch this evaluation ends (or is inside)
        row = {"epoch": epoch, "step": state.global_step, "train_loss": train_loss,
               "valid_loss": metrics.get("eval_loss"), "lr": lr, "time": round(time.time() - self.t0 + self.prior, 2)}
        if "eval_wer" in metrics:
            row["valid_wer"] = metrics["eval_wer"]
        if "eval_accuracy" in metrics:  # classification
            row["valid_acc"] = metrics["eval_accuracy"]
        child.append_curve(self.rd, row)
        child.progress(epoch=epoch, epochs=self.planned, step=state.global_step, train_loss=train_loss,
                       valid_loss=row["valid_loss"], **{k: row[k] for k in ("valid_wer", "valid_acc") if k in row})

    def on_save(self, args, state, control, **kw):
        if RANK == 0:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                (ckpt / COMPLETE).touch()


def quarantine_incomplete(ckpt_dir: Path) -> None:
    """A process killed while the Trainer saved leaves a checkpoint folder without spx's completeness mark: moved
    aside (not deleted) so that resume never loads half a checkpoint."""
    for d in sorted(ckpt_dir.glob("checkpoint-*")):
        if d.is_dir() and not (d / COMPLETE).exists():
            dest = ckpt_dir / "incomplete" / d.name
            dest.parent.mkdir(exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(d, dest)
            log(f"moved incomplete checkpoint {d.name} (killed while saving) to {dest}")


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    done = [d for d in ckpt_dir.glob("checkpoint-*") if (d / COMPLETE).exists()]
    return max(done, key=lambda d: int(d.name.split("-")[1])) if done else None


def base_digest(model, head: tuple[str, ...]) -> str:
    """sha256 over the pretrained weights that LoRA must leave untouched (everything but the adapters and the head)."""
    import hashlib

    h = hashlib.sha256()
    for n, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "lora_" not in n and not is_head(n, head):
            h.update(n.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def wer(hyps: list[str], refs: list[str]) -> float:
    import jiwer

    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])) if pairs else 0.0


def train_with(rd, spec, make_trainer: Callable[[dict[str, Any], Path | None], Any], export: Callable[[Any], Path],
               describe: dict[str, Any], head: tuple[str, ...]) -> None:
    """The shared train flow: resume point, Trainer.train, rank counts, export, train_summary.json."""
    import transformers

    t_start = time.time()
    threads = child.set_threads(spec)
    ckpt_dir = rd / "checkpoints"
    if RANK == 0:
        quarantine_incomplete(ckpt_dir)
    resume = last_checkpoint(ckpt_dir)
    prior = 0.0
    resumed_step = 0
    if resume is not None:
        state = read_json(resume / "trainer_state.json")
        resumed_step = int(state["global_step"])
        if RANK == 0:
            rows = child.keep_curve_through(rd, int(round(state.get("epoch") or 0)))
            prior = float(rows[-1]["time"]) if rows and rows[-1].get("time") is not None else 0.0
        log(f"resuming from checkpoint {resume} (optimizer step {resumed_step})")
    if WORLD > 1 and not torch.cuda.is_available() and not read_json(rd / "native" / "training_args.json").get(
            "ddp_backend"):
        raise RuntimeError("several processes on CPU need training_args ddp_backend gloo: set resources.accelerator: "
                           "cpu (spx renders gloo then)")
    records = RecordsCallback(rd, spec.training.epochs or 0, prior)
    trainer = make_trainer({"records": records}, resume)
    device = str(trainer.args.device)
    log(f"device {device}, {threads} threads, world size {WORLD}, transformers {transformers.__version__}")
    lora = describe.get("finetune_method") in ("lora", "adapter")
    before = base_digest(trainer.model, head) if lora else None
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if lora:  # the proof that LoRA / adapters left the pretrained weights as they were (bit for bit)
        describe.update(base_weights_sha256_before=before, base_weights_sha256_after=base_digest(trainer.model, head))
    ranks = child.gather_rank_counts(records.batches, records.updates)
    log(f"done: {records.batches} batches, {records.updates} updates on this rank")
    if RANK == 0:
        exported = export(trainer)
        st = trainer.state
        args = trainer.args
        last = last_checkpoint(ckpt_dir)
        child.write_train_summary(
            rd, wall_seconds=round(time.time() - t_start, 2), epochs=max(1, math.ceil((st.epoch or 0) - 1e-6)), steps=st.global_step,
            peak_memory_mb=round(child.peak_memory_mb(device), 1), last_checkpoint=str(last) if last else None,
            best_checkpoint=st.best_model_checkpoint, exported_model=str(exported),
            effective_batch=args.per_device_train_batch_size * WORLD * args.gradient_accumulation_steps,
            world_size=WORLD, ranks=ranks, resumed_from_step=resumed_step, device=device, threads=threads,
            distributed_backend=(args.ddp_backend or "nccl") if WORLD > 1 else None,
            early_stopped=bool(st.global_step < st.max_steps), transformers=transformers.__version__, **describe)
    if WORLD > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def export_info(path: Path, info: dict[str, Any]) -> None:
    (path / EXPORT_INFO).write_text(json.dumps(info, indent=2))


def replace_dir(tmp: Path, final: Path) -> Path:
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final
