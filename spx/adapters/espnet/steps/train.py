"""Child step `train`: ESPnet's `espnet2.bin.asr_train` (ASRTask.main) with the argv render wrote, plus what only
run time knows (device/ngpu, distributed options, init_param for the token list built by `prepare`).

A single process first runs the preparation (steps.prepare: tokenize_text, collect_stats,
aggregate_stats_dirs) when native/prepared.json is missing, so espnet2 is imported once for both (~20 s of imports
on 2 idle cores, 40 s and more on a busy machine). It runs once per rank under torchrun when resources.devices > 1
(ESPnet's external-launcher mode: --multiprocessing_distributed false, RANK/WORLD_SIZE/MASTER_* from the
environment, gloo on CPU); the preparation is then the `prepare` step before it.
The resume is ESPnet's own (--resume true: checkpoints/checkpoint.pth). spx only listens: a logging handler
turns ESPnet's per-epoch "N epoch results" line into curve.jsonl rows and progress lines.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from spx.adapters.common import child
from spx.adapters.espnet.helpers import ASR_COMMANDS, ASR_CONF, TOKENS, check_init_architecture, resolve_init
from spx.adapters.espnet.steps.common import counting_task, run_native, start
from spx.adapters.espnet.steps.prepare import is_prepared, prepare
from spx.yamlio import atomic_write_json, read_jsonl

EPOCH_LINE = re.compile(r"^(\d+)epoch results: (.*)$", re.S)
SECTION = re.compile(r"\[(\w+)\] (.*?)(?=, \[\w+\] |$)", re.S)


def parse_epoch_results(message: str) -> tuple[int, dict[str, dict[str, float]]] | None:
    """ESPnet Reporter.log_message(): '3epoch results: [train] loss=1.2, ..., [valid] loss=..., cer_ctc=...'."""
    m = EPOCH_LINE.match(message)
    if not m:
        return None
    sections: dict[str, dict[str, float]] = {}
    for name, body in SECTION.findall(m.group(2)):
        vals: dict[str, float] = {}
        for item in body.split(", "):
            key, _, raw = item.partition("=")
            try:
                vals[key] = float(raw)
            except ValueError:
                continue  # timedeltas ("1 minute"), not needed
        sections[name] = vals
    return int(m.group(1)), sections


class EpochListener(logging.Handler):
    """Per-epoch curve row + progress line, from ESPnet's own epoch summary log record (rank 0 only). `metric`:
    (the valid value ESPnet reports, its curve-row name), e.g. ("cer_ctc", "valid_cer") for ASR, ("acc",
    "valid_acc") for the classifier."""

    def __init__(self, rd, max_epoch: int, accum: int, counter: dict[str, int], start_step: int,
                 metric: tuple[str, str] = ("cer_ctc", "valid_cer")):
        super().__init__(level=logging.INFO)
        self.rd, self.max_epoch, self.accum, self.counter, self.metric = rd, max_epoch, accum, counter, metric
        self.step = start_step
        self.t0 = time.time()
        self.epochs_here = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            parsed = parse_epoch_results(record.getMessage())
        except Exception:  # a log line we could not read must not break training; the row is simply missing
            return
        if parsed is None:
            return
        epoch, sec = parsed
        tr, va = sec.get("train", {}), sec.get("valid", {})
        self.step += self.counter.pop("iters", 0) // self.accum
        self.epochs_here += 1
        elapsed = time.time() - self.t0
        espnet_key, name = self.metric
        row = {"epoch": epoch, "step": self.step, "train_loss": tr.get("loss"), "valid_loss": va.get("loss"),
               name: va.get(espnet_key), "lr": tr.get("optim0_lr0"), "time": round(elapsed, 2)}
        child.append_curve(self.rd, row)
        eta = elapsed / self.epochs_here * (self.max_epoch - epoch)
        child.progress(epoch=epoch, epochs=self.max_epoch, step=self.step, train_loss=row["train_loss"],
                       valid_loss=row["valid_loss"], **{name: row[name]}, eta_s=round(eta, 1))


def token_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def init_args(spec, rd) -> list[str]:
    """--init_param for init_from; a new CTC head (ESPnet's exclude keys + ignore_init_mismatch) when the
    pretrained token list differs from this run's."""
    import yaml

    from spx.errors import SpxError

    init = resolve_init(spec.init_from)
    if init is None:  # a hub model: the fetch_init step put it here; check its architecture now
        init = json.loads((rd / "native/init/init.json").read_text())
        try:
            check_init_architecture(spec, init, yaml.safe_load((rd / ASR_CONF).read_text()))
        except SpxError as exc:
            raise SystemExit(f"{exc.one_line()} ({exc.hint})") from None
    with open(init["config"], encoding="utf-8") as fh:
        theirs = (yaml.safe_load(fh) or {}).get("token_list")
    if isinstance(theirs, str):  # a path in the pretrained config
        p = Path(theirs)
        theirs = token_list(p if p.is_absolute() else Path(init["config"]).parent / p) if p.exists() or (Path(init["config"]).parent / p).exists() else None
    ours = token_list(rd / TOKENS)
    if theirs == ours:
        return ["--init_param", init["model"]]
    print(f"# spx: init_from vocabulary ({len(theirs or [])} tokens) differs from this run's ({len(ours)}): "
          "new CTC head (ctc.* not loaded)", file=sys.stderr, flush=True)
    return ["--init_param", f"{init['model']}:::ctc.", "--ignore_init_mismatch", "true"]


def pretrained_check(spec, model) -> dict[str, Any] | None:
    """ssl_ctc: the pretrained model it started from, and how many of its tensors are still bit-identical to what
    ESPnet's s3prl frontend loaded (it keeps a copy: S3prlFrontend.pretrained_params); with the upstream frozen
    (freeze: [encoder], finetune.method lora) every one."""
    import torch

    ref = getattr(getattr(model, "frontend", None), "pretrained_params", None)
    if spec.model.family != "ssl_ctc" or ref is None:
        return None
    now = model.frontend.upstream.state_dict()
    same = sum(1 for k, v in ref.items() if k in now and torch.equal(now[k].detach().cpu(), v.cpu()))
    return {"pretrained": spec.model.encoder.pretrained, "pretrained_tensors": len(ref),
            "pretrained_tensors_unchanged": same}


def main(run_dir: str) -> None:
    spec, rd = start(run_dir)
    t_start = time.time()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    threads = child.set_threads(spec)
    device = child.pick_device(spec)
    dtype = child.precision_dtype(spec, device)
    if device == "cpu" and spec.training.precision != "fp32":
        raise SystemExit(f"training.precision {spec.training.precision}: ESPnet's mixed precision uses torch.cuda.amp, "
                         "which does nothing on CPU; use fp32 on CPU")

    import torch
    from espnet2.tasks.asr import ASRTask
    from espnet2.train import trainer as espnet_trainer

    fmt = f"[{socket.gethostname().split('.')[0]}{f':{rank}/{world}' if world > 1 else ''}] %(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s"
    logging.basicConfig(level="INFO" if rank == 0 else "ERROR", format=fmt)  # ESPnet's own basicConfig is then a no-op
    if not is_prepared(rd):
        if world > 1:
            raise SystemExit(f"{rd / 'native/prepared.json'} is missing: with several processes the `prepare` step "
                             "runs before `train` (spx exec runs the steps in order)")
        prepare(spec, rd)

    if spec.training.precision == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise SystemExit("training.precision bf16: this GPU does not support bfloat16; use fp16 or fp32")
        espnet_trainer.autocast_args = {"dtype": torch.bfloat16}
    elif spec.training.precision == "fp16":
        # ESPnet switches amp to bfloat16 by itself wherever the GPU supports it; the spec asked for float16
        espnet_trainer.autocast_args = {"dtype": torch.float16}

    native = json.loads((rd / ASR_COMMANDS).read_text())
    derived = native["derived"]
    argv = list(native["commands"]["asr_train"][1:])
    argv += ["--ngpu", "1" if device == "cuda" else "0"]
    if world > 1:
        argv += ["--multiprocessing_distributed", "false", "--dist_backend", "nccl" if device == "cuda" else "gloo"]
    if spec.init_from:
        argv += init_args(spec, rd)

    # resume: drop curve rows of an epoch that never reached its checkpoint (killed between log and save)
    latest = rd / "checkpoints/latest.pth"
    done_epoch = int(os.readlink(latest).split("epoch")[0]) if latest.is_symlink() else 0
    curve_rows = child.keep_curve_through(rd, done_epoch) if rank == 0 else []
    start_step = curve_rows[-1]["step"] if curve_rows else 0

    counter: dict[str, int] = {}
    info: dict[str, Any] = {}

    def count(module, inputs):  # the training mini-batches this rank runs
        if module.training:
            counter["iters"] = counter.get("iters", 0) + 1
            counter["rank_iters"] = counter.get("rank_iters", 0) + 1

    listener = EpochListener(rd, derived["epochs"], spec.training.grad_accumulation, counter, start_step)
    if rank == 0:
        logging.getLogger().addHandler(listener)

    task = counting_task(ASRTask, info, lambda model: model.register_forward_pre_hook(count))
    run_native(native["commands"]["asr_train"][:1] + argv, task.main, log=rank == 0)

    # every rank says it took part; rank 0 gathers after a barrier
    ranks_dir = rd / "logs/ranks"
    ranks_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ranks_dir / f"rank{rank}.json", {"rank": rank, "world_size": world, "host": socket.gethostname(),
                                                            "pid": os.getpid(), "train_batches": counter.get("rank_iters", 0),
                                                            "device": device, "threads": threads})
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if rank != 0:
        return
    ranks = [json.loads(p.read_text()) for p in sorted(ranks_dir.glob("rank*.json"))]
    ranks = [r for r in ranks if r["world_size"] == world]
    exp = rd / "checkpoints"
    rows = read_jsonl(rd / "curve.jsonl")

    def real(name: str) -> str | None:
        p = exp / name
        return str(p.resolve()) if p.exists() else None

    t = spec.training
    batch = f"{t.batch_size} utterances" if t.batch_size is not None else f"{t.batch_seconds} s of audio"
    child.write_train_summary(
        rd,
        wall_seconds=round(time.time() - t_start, 1),  # this invocation (a resumed run counts from the resume)
        epochs=rows[-1]["epoch"] if rows else 0,
        steps=rows[-1]["step"] if rows else 0,
        params=info.get("params"),
        trainable_params=info.get("trainable"),
        frozen_params=info.get("frozen"),
        lora_params=info.get("lora"),
        init_from=spec.init_from,
        init_details=pretrained_check(spec, info.get("model")),
        peak_memory_mb=round(child.peak_memory_mb(device), 1),
        last_checkpoint=real("checkpoint.pth"),
        best_checkpoint=real("valid.loss.best.pth"),
        exported_model=real("valid.loss.ave.pth") or real("valid.loss.best.pth"),
        config=real("config.yaml"),
        effective_batch=(t.batch_size * world * t.grad_accumulation) if t.batch_size is not None else None,
        effective_batch_desc=f"{batch} x {world} device(s) x {t.grad_accumulation} accumulation",
        world_size=world,
        ranks=ranks,
        resumed_from_epoch=done_epoch or None,
        device=device,
        dtype=dtype,
        toolkit="espnet " + __import__("espnet").__version__,
    )


if __name__ == "__main__":
    child.main_guard(main)
