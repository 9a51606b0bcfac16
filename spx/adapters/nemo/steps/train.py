"""Child step `train`: NeMo's own training loop (Lightning Trainer + exp_manager) on native/config.yaml.

Runs as one process, or one per device under torchrun (Lightning reads the torchelastic env vars).
Resume is NeMo's: exp_manager resume_if_exists picks up checkpoints/*last.ckpt.
"""
from __future__ import annotations

import json
import os
import time

from spx.adapters.common import child
from spx.adapters.nemo.steps.lightning_helpers import export_best, fail, trainer_kwargs


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _frozen_modules(model, items: list[str]) -> list[tuple[str, object]]:
    """spec freeze items -> NeMo modules. 'feature_extractor' = the preprocessor + the conv subsampling
    front end (encoder.pre_encode); 'encoder.layers:N' = that front end and the first N Conformer blocks."""
    out: list[tuple[str, object]] = []
    for item in items:
        if item == "encoder":
            out.append(("encoder", model.encoder))
        elif item == "feature_extractor":
            out += [("preprocessor", model.preprocessor), ("encoder.pre_encode", model.encoder.pre_encode)]
        else:
            n = int(item.split(":", 1)[1])
            out.append(("encoder.pre_encode", model.encoder.pre_encode))
            out += [(f"encoder.layers.{i}", model.encoder.layers[i]) for i in range(n)]
    seen, unique = set(), []
    for name, mod in out:
        if name not in seen:
            seen.add(name)
            unique.append((name, mod))
    return unique


def _vocabulary(model) -> list[str]:
    if hasattr(model, "tokenizer"):
        tok = model.tokenizer
        return [tok.ids_to_tokens([i])[0] for i in range(tok.vocab_size)]
    return list(model.decoder.vocabulary)


def _init_from(model, source: str, device: str) -> dict:
    """Load the source model's weights (NeMo .nemo or a pretrained name); new CTC head if the vocabulary differs."""
    from nemo.collections.asr.models import ASRModel

    try:
        if source.endswith(".nemo"):
            src = ASRModel.restore_from(source, map_location="cpu")
        else:
            src = ASRModel.from_pretrained(source, map_location="cpu")
    except Exception as exc:  # a missing hub model, a corrupt file: say which and stop
        fail(f"init_from {source!r} could not be loaded: {type(exc).__name__}: {exc}")
    same_vocab = _vocabulary(src) == _vocabulary(model)
    src_state = src.state_dict()
    own = model.state_dict()
    take, mismatched = {}, []
    for k, v in src_state.items():
        if not same_vocab and k.startswith("decoder."):
            continue
        if k not in own:
            continue
        if own[k].shape != v.shape:
            mismatched.append(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}")
            continue
        take[k] = v
    if mismatched:
        fail(f"init_from {source!r} has a different architecture than the spec: " + "; ".join(mismatched[:4])
              + " (set model.encoder / features to the source model's sizes)")
    missing = [k for k in own if k not in take and not k.startswith("decoder.")]
    if missing:
        fail(f"init_from {source!r} lacks {len(missing)} encoder/preprocessor tensors, e.g. {missing[:3]}")
    model.load_state_dict(take, strict=False)
    info = {"source": source, "tensors_loaded": len(take), "new_ctc_head": not same_vocab}
    if not same_vocab:
        info["source_vocabulary_size"] = len(_vocabulary(src))
        print(f"spx: vocabulary differs from {source} ({len(_vocabulary(src))} -> {len(_vocabulary(model))} tokens): "
              "new CTC head, encoder weights loaded", flush=True)
    del src
    return info


def main(run_dir: str, extra_callbacks: list | None = None) -> None:
    """Train the run dir's native config; extra_callbacks (Lightning) are for in-process tools (benchmarks)."""
    t_start = time.time()
    spec, rd = child.load_run(run_dir)
    threads = child.set_threads(spec)
    device = child.pick_device(spec)
    try:
        child.precision_dtype(spec, device)
    except RuntimeError as exc:
        fail(str(exc))

    import lightning.pytorch as pl
    import torch
    from omegaconf import OmegaConf, open_dict

    from nemo.collections.asr.models import EncDecCTCModel, EncDecCTCModelBPE
    from nemo.utils.exp_manager import exp_manager

    cfg = OmegaConf.load(rd / "native" / "config.yaml")
    spx_cfg = cfg.pop("spx")
    pl.seed_everything(spx_cfg.seed, workers=True)

    trainer_args = trainer_kwargs(cfg, device)
    world = int(trainer_args["devices"]) * int(trainer_args.get("num_nodes", 1))
    if world > 1 and trainer_args.get("strategy") == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        # CPU processes exchange gradients over gloo; GPUs over nccl
        trainer_args["strategy"] = DDPStrategy(process_group_backend="gloo" if device == "cpu" else "nccl")

    rank_batches = {"batches": 0, "samples": 0}
    frozen: list[tuple[str, object]] = []

    class SpxProgress(pl.Callback):
        """curve.jsonl row + progress line per epoch; keeps frozen modules in eval mode."""

        def __init__(self) -> None:
            # summed on the loss's device and read once per epoch: a float() per step would make the host
            # wait for the GPU every step, which a plain NeMo run does not do
            self.loss_sum = None
            self.loss_count = 0
            self.t0 = time.time()
            self.first_epoch = 0

        def on_train_start(self, trainer, pl_module) -> None:
            self.first_epoch = trainer.current_epoch
            self.t0 = time.time()
            print(f"spx: rank {trainer.global_rank}/{trainer.world_size} starts training at epoch "
                  f"{trainer.current_epoch + 1} (global step {trainer.global_step}), "
                  f"{trainer.num_training_batches} batches per epoch on this rank", flush=True)
            if trainer.global_rank == 0:
                child.keep_curve_through(rd, trainer.current_epoch)
                if trainer.current_epoch > 0:
                    print(f"spx: resumed from checkpoint at epoch {trainer.current_epoch} "
                          f"(step {trainer.global_step})", flush=True)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.loss_sum, self.loss_count = None, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            for _, mod in frozen:
                mod.eval()  # frozen: no dropout, no batch-norm statistics updates

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None:
                loss = loss.detach().float()  # fp32 sum under bf16/fp16 too
                self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
                self.loss_count += 1
            rank_batches["batches"] += 1
            rank_batches["samples"] += int(batch[0].shape[0])

        def on_validation_end(self, trainer, pl_module) -> None:
            # runs before ModelCheckpoint saves (Lightning calls checkpoint callbacks last), so a
            # checkpoint never holds an epoch whose curve row is missing
            if trainer.sanity_checking:
                return
            m = trainer.callback_metrics
            epoch = trainer.current_epoch + 1
            row = {
                "epoch": epoch,
                "step": trainer.global_step,
                "train_loss": float(self.loss_sum) / self.loss_count if self.loss_count else 0.0,
                "valid_loss": float(m["val_loss"]) if "val_loss" in m else None,
                "valid_wer": float(m["val_wer"]) if "val_wer" in m else None,
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "time": round(time.time() - t_start, 2),
            }
            child.append_curve(rd, row)
            done = epoch - self.first_epoch
            total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
            eta = (time.time() - self.t0) / done * (total - epoch) if total and done else None
            child.progress(epoch=epoch, epochs=total, step=trainer.global_step, train_loss=row["train_loss"],
                           valid_loss=row["valid_loss"], valid_wer=row["valid_wer"],
                           eta_s=round(eta, 1) if eta is not None else None)

    callback = SpxProgress()
    trainer = pl.Trainer(**trainer_args, callbacks=[callback, *(extra_callbacks or [])])
    exp_manager(trainer, cfg.get("exp_manager"))

    bpe = spx_cfg.tokenizer.type == "bpe"
    model_cls = EncDecCTCModelBPE if bpe else EncDecCTCModel
    model = model_cls(cfg=cfg.model, trainer=trainer)

    init_info = None
    if spx_cfg.init_from:
        source = cfg.get("init_from_nemo_model") or cfg.get("init_from_pretrained_model")
        init_info = _init_from(model, str(source), device)
    frozen = _frozen_modules(model, list(spx_cfg.freeze))
    for _, mod in frozen:
        for p in mod.parameters():
            p.requires_grad_(False)
    n_frozen = sum(p.numel() for _, mod in frozen for p in mod.parameters())
    if frozen:
        print(f"spx: frozen {', '.join(n for n, _ in frozen)} ({n_frozen} parameters)", flush=True)

    # keep the exact native config next to the checkpoints, as NeMo's example scripts do
    if _rank() == 0:
        with open_dict(cfg):
            cfg.model = model.cfg
        OmegaConf.save(cfg, rd / "native" / "config.resolved.yaml")

    trainer.fit(model)

    # one record per rank of what it trained on (proves every rank took part)
    per_rank = [dict(rank_batches)]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, dict(rank_batches))
        per_rank = gathered
    print(f"spx: rank {trainer.global_rank} done: {rank_batches['batches']} batches, "
          f"{rank_batches['samples']} utterances", flush=True)
    if trainer.global_rank != 0:
        return

    export = export_best(trainer, model, rd.path, spx_cfg.exported_model)
    tr = spec.training
    eff = (tr.batch_size or 0) * world * tr.grad_accumulation if tr.batch_size and not tr.batch_seconds else None
    child.write_train_summary(
        rd,
        wall_seconds=round(time.time() - t_start, 2),
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        params=child.count_params(model),
        trainable_params=int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        frozen_params=n_frozen,
        frozen_modules=[n for n, _ in frozen],
        peak_memory_mb=round(child.peak_memory_mb(device), 1),
        **export,
        effective_batch=eff if eff is not None else f"{tr.batch_seconds * world * tr.grad_accumulation}s of audio",
        world_size=trainer.world_size,
        per_rank=per_rank,
        device=device,
        threads=threads,
        precision=str(trainer_args["precision"]),
        init_from=init_info and init_info["source"],
        init_details=init_info,
        resumed=callback.first_epoch > 0,
        started_at_epoch=callback.first_epoch + 1,
        model_class=model_cls.__name__,
    )
    summary = {"class": model_cls.__name__, "params": child.count_params(model),
               "vocabulary_size": len(_vocabulary(model))}
    (rd / "native" / "model_summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    child.main_guard(main)
