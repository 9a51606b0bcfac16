"""Child step `train`: NeMo's own training loop (Lightning Trainer + exp_manager) on native/config.yaml.

Runs as one process, or one per device under torchrun (Lightning reads the torchelastic env vars).
Resume is NeMo's: exp_manager resume_if_exists picks up checkpoints/*last.ckpt.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from spx.adapters.common import child
from spx.adapters.nemo.steps.lightning_helpers import export_best, fail, trainer_kwargs

ADAPTER_NAME = "spx"  # finetune.method adapter: the one adapter spx adds (NeMo's default module: the encoder)
ADAPTERS_FILE = "adapters.pt"  # NeMo's save_adapters file beside the exported model.nemo


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


def _selected(key: str, prefixes: list[str]) -> bool:
    """key is one of the modules named by prefixes (whole module-name components; "" names every module)."""
    return any(p == "" or key == p or key.startswith(p + ".") for p in prefixes)


def _load_source(source: str):
    from nemo.collections.asr.models import ASRModel

    try:
        if source.endswith(".nemo"):
            return ASRModel.restore_from(source, map_location="cpu")
        return ASRModel.from_pretrained(source, map_location="cpu")  # NGC name, or nvidia/<name> on Hugging Face
    except Exception as exc:  # a missing hub model, a corrupt file: say which and stop
        fail(f"init_from {source!r} could not be loaded: {type(exc).__name__}: {exc}")


def _module_report(keys: list[str], loaded: set[str]) -> dict[str, str]:
    """Per top-level module (preprocessor, encoder, decoder): loaded, fresh (its own init), or how many of its tensors
    were loaded."""
    out: dict[str, str] = {}
    for top in dict.fromkeys(k.split(".", 1)[0] for k in keys):
        mine = [k for k in keys if k.split(".", 1)[0] == top]
        n = sum(k in loaded for k in mine)
        out[top] = "loaded" if n == len(mine) else "fresh" if n == 0 else f"{n} of {len(mine)} tensors loaded"
    return out


def _init_from(model, init_cfg, native_dir) -> tuple[dict, set[str]]:
    """NeMo's fine-tuning path: load the source model (a .nemo, or a pretrained name through from_pretrained), give
    it this job's vocabulary with change_vocabulary when its own differs (a new CTC head), and load its tensors into
    the job's model, only those of the modules init_include names and init_exclude does not (prefixes). Returns
    init_details and the names of the state tensors that are new (not trained by the source)."""
    from omegaconf import DictConfig

    from nemo.collections.asr.models import EncDecCTCModel, EncDecCTCModelBPE

    from spx.adapters.nemo.helpers import architecture_differences

    if isinstance(init_cfg, DictConfig):  # NeMo's {name: {path | name, include, exclude}} form
        entry = next(iter(init_cfg.values()))
        source = str(entry.get("path") or entry.get("name"))
        include, exclude = [str(p) for p in entry.include], [str(p) for p in entry.exclude]
    else:
        source, include, exclude = str(init_cfg), [""], []
    src = _load_source(source)
    bpe = isinstance(model, EncDecCTCModelBPE)
    if not isinstance(src, EncDecCTCModel):
        fail(f"init_from {source!r} is a {type(src).__name__}, not a CTC model (EncDecCTCModel / EncDecCTCModelBPE)")
    if isinstance(src, EncDecCTCModelBPE) != bpe:
        theirs = "bpe" if isinstance(src, EncDecCTCModelBPE) else "char"
        fail(f"init_from {source!r} is a {theirs} model and this job's tokenizer.type is {'bpe' if bpe else 'char'}: "
             f"NeMo's change_vocabulary keeps the kind of tokenizer (set tokenizer.type: {theirs})")
    diffs = architecture_differences(model.cfg, src.cfg)
    if diffs:
        fail(f"init_from {source!r} has another architecture than this job: " + "; ".join(diffs[:6])
             + " (set model.encoder / features, or backends.nemo.model.encoder / preprocessor, to the source's values)")
    theirs, ours = _vocabulary(src), _vocabulary(model)
    changed = theirs != ours
    if changed:  # NeMo's own way to a new vocabulary: a new decoder (CTC head) on the source model
        if bpe:
            src.change_vocabulary(new_tokenizer_dir=str(native_dir / "tokenizer"), new_tokenizer_type="bpe")
        else:
            src.change_vocabulary(new_vocabulary=list(model.cfg.labels))
        print(f"spx: vocabulary differs from {source} ({len(theirs)} -> {len(ours)} tokens): change_vocabulary, new "
              "CTC head", flush=True)
    src_state = src.state_dict()
    for key, prefixes in (("init_include", include), ("init_exclude", exclude)):
        unknown = [p for p in prefixes if p and not any(_selected(k, [p]) for k in src_state)]
        if unknown:
            tops = ", ".join(dict.fromkeys(k.split(".", 1)[0] for k in src_state))
            fail(f"finetune.{key} {unknown}: no such module in init_from {source!r} (its modules: {tops}; name "
                 "submodules as encoder.layers.0)")
    own = model.state_dict()
    take = {k: v for k, v in src_state.items() if _selected(k, include) and not (exclude and _selected(k, exclude))}
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in take.items()
                  if k in own and own[k].shape != v.shape]
    if mismatched:
        fail(f"init_from {source!r} has a different architecture than the spec: " + "; ".join(mismatched[:4])
             + " (set model.encoder / features to the source model's sizes)")
    wanted = [k for k in own if _selected(k, include) and not (exclude and _selected(k, exclude))]
    missing = [k for k in wanted if k not in src_state]
    if missing:
        fail(f"init_from {source!r} lacks {len(missing)} tensors of this model, e.g. {missing[:3]}")
    model.load_state_dict(take, strict=False)
    # new: what the source did not train (left out, or the head change_vocabulary made)
    fresh = {k for k in own if k not in take or (changed and k.startswith("decoder."))}
    modules = _module_report(list(own), set(take))
    if changed:
        modules["decoder"] = "new (change_vocabulary)"
    info = {"source": source, "tensors_loaded": len(take), "vocabulary_changed": changed,
            "new_ctc_head": any(k.startswith("decoder.") for k in fresh),
            "source_vocabulary_size": len(theirs), "vocabulary_size": len(ours), "modules": modules}
    if changed:
        info["change_vocabulary"] = "tokenizer" if bpe else "labels"
    if include != [""] or exclude:
        info.update(include=include, exclude=exclude)
    del src
    return info, fresh


def _add_adapter(model, spx_ft, fresh: set[str]) -> None:
    """NeMo's adapter fine-tuning (examples/asr/asr_adapters/train_asr_adapter.py): a LinearAdapter in every
    Conformer block, only it enabled, the whole model frozen, then the enabled adapters unfrozen (batch-norm
    statistics fixed); what init_from did not provide (a new CTC head) trains too."""
    from nemo.collections.common.parts.adapter_modules import LinearAdapterConfig

    model.add_adapter(ADAPTER_NAME, cfg=LinearAdapterConfig(in_features=model.cfg.encoder.d_model,
                                                            dim=int(spx_ft.adapter_dim),
                                                            dropout=float(spx_ft.adapter_dropout)))
    model.set_enabled_adapters(enabled=False)
    model.set_enabled_adapters(ADAPTER_NAME, enabled=True)
    model.freeze()
    model.train()
    model.unfreeze_enabled_adapters()
    for name, p in model.named_parameters():
        if name in fresh:
            p.requires_grad_(True)


def _param_groups(trainer, model) -> list[dict]:
    """The optimizer's parameter groups as trained: which module, how many parameters, the scheduler's peak lr."""
    encoder = {id(p) for p in model.encoder.parameters()}
    return [{"module": "encoder" if any(id(p) in encoder for p in g["params"]) else "rest",
             "params": int(sum(p.numel() for p in g["params"])), "lr": g.get("initial_lr", g["lr"])}
            for g in trainer.optimizers[0].param_groups]


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
    ft_cfg = spx_cfg.get("finetune") or OmegaConf.create({"method": "full"})  # a run rendered before finetune
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

    hold_steps = int(ft_cfg.get("freeze_pretrained_steps", 0))

    class HoldPretrained(pl.Callback):
        """finetune.freeze_pretrained_steps: the encoder's param group (model.optim_param_groups) gets lr 0 for the
        first optimizer steps, so only the head moves; the scheduler sets its lr again after every step."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step >= hold_steps:
                return
            encoder = {id(p) for p in pl_module.encoder.parameters()}
            for group in trainer.optimizers[0].param_groups:
                if any(id(p) in encoder for p in group["params"]):
                    group["lr"] = 0.0

    callback = SpxProgress()
    trainer = pl.Trainer(**trainer_args, callbacks=[callback, *([HoldPretrained()] if hold_steps else []),
                                                    *(extra_callbacks or [])])
    exp_manager(trainer, cfg.get("exp_manager"))

    bpe = spx_cfg.tokenizer.type == "bpe"
    model_cls = EncDecCTCModelBPE if bpe else EncDecCTCModel
    model = model_cls(cfg=cfg.model, trainer=trainer)

    init_info, fresh = None, set()
    if spx_cfg.init_from:
        init_info, fresh = _init_from(model, cfg.get("init_from_nemo_model") or cfg.get("init_from_pretrained_model"),
                                      rd / "native")
    adapter = ft_cfg.method == "adapter"
    if adapter:
        _add_adapter(model, ft_cfg, fresh)
    frozen = _frozen_modules(model, list(spx_cfg.freeze))
    for _, mod in frozen:
        for p in mod.parameters():
            p.requires_grad_(False)
    params = child.count_params(model)
    trainable = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    adapter_params = int(sum(p.numel() for n, p in model.named_parameters() if ".adapter_layer." in n))
    if frozen or adapter:
        print(f"spx: frozen {', '.join(n for n, _ in frozen) or 'all but the adapters and new modules'} "
              f"({params - trainable} parameters); {trainable} trainable"
              + (f", of which {adapter_params} in the adapters" if adapter else ""), flush=True)

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
    if adapter:  # the adapters alone (NeMo's save_adapters), beside the whole model
        adapters = Path(spx_cfg.exported_model).with_name(ADAPTERS_FILE)
        tmp = adapters.with_name(f".{ADAPTERS_FILE}.tmp")
        model.save_adapters(str(tmp))
        os.replace(tmp, adapters)
        export["adapters_file"] = str(adapters)
    tr = spec.training
    eff = (tr.batch_size or 0) * world * tr.grad_accumulation if tr.batch_size and not tr.batch_seconds else None
    child.write_train_summary(
        rd,
        wall_seconds=round(time.time() - t_start, 2),
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        params=params,
        trainable_params=trainable,
        frozen_params=params - trainable,
        adapter_params=adapter_params if adapter else None,
        finetune_method=ft_cfg.method,
        param_groups=_param_groups(trainer, model),
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
