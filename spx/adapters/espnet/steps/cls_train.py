"""Child step `train` of the ESPnet kws_classifier: ESPnet's `espnet2.bin.cls_train` (CLSTask.main) with the argv
render wrote, plus what only run time knows (--ngpu, --init_param of init_from).

Resume is ESPnet's own (--resume true: checkpoints/checkpoint.pth). spx only listens: a logging handler turns
ESPnet's per-epoch "N epoch results" line into curve.jsonl rows and progress lines. Fine-tuning: --init_param (the
decoder left out, --ignore_init_mismatch, when the class list differs), --freeze_param from freeze.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from spx.adapters.common import child
from spx.adapters.espnet.steps.lazy_imports import defer_unused_imports
from spx.adapters.espnet.steps.train import EpochListener
from spx.yamlio import read_jsonl


def main(run_dir: str) -> None:
    defer_unused_imports()  # before anything imports espnet2
    spec, rd = child.load_run(run_dir)
    os.chdir(rd.path)
    t_start = time.time()
    threads = child.set_threads(spec)
    device = child.pick_device(spec)
    dtype = child.precision_dtype(spec, device)

    import yaml
    from espnet2.tasks.cls import CLSTask

    logging.basicConfig(level="INFO", format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    native = json.loads((rd / "native/commands.json").read_text())
    argv = list(native["commands"]["cls_train"][1:]) + ["--ngpu", "1" if device == "cuda" else "0"]
    init = native["init_from"]
    if init:
        theirs = (yaml.safe_load((Path(init).parent / "config.yaml").read_text(encoding="utf-8")) or {})
        if list(theirs.get("token_list") or []) == [*native["classes"], "<unk>"]:
            argv += ["--init_param", init]
        else:
            print("# spx: init_from has other classes: new class layer (decoder.* not loaded)", file=sys.stderr,
                  flush=True)
            argv += ["--init_param", f"{init}:::decoder.", "--ignore_init_mismatch", "true"]
    print("# native: python -m espnet2.bin.cls_train " + " ".join(argv), file=sys.stderr, flush=True)

    latest = rd / "checkpoints/latest.pth"  # a resumed run: drop rows of an epoch that never reached its checkpoint
    done_epoch = int(os.readlink(latest).split("epoch")[0]) if latest.is_symlink() else 0
    rows = child.keep_curve_through(rd, done_epoch)
    counter: dict[str, int] = {}
    info: dict[str, int] = {}

    class SpxCLSTask(CLSTask):
        """ESPnet's CLSTask; spx only counts parameters and the training mini-batches."""

        @classmethod
        def build_model(cls, args):
            model = super().build_model(args)
            info["params"] = sum(p.numel() for p in model.parameters())

            def count(module, inputs):
                if module.training:
                    if "trainable" not in info:  # ESPnet applies --freeze_param after build_model
                        info["trainable"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
                    counter["iters"] = counter.get("iters", 0) + 1
                    counter["here"] = counter.get("here", 0) + 1

            model.register_forward_pre_hook(count)
            return model

    cfg = yaml.safe_load((rd / "native/conf/train_cls.yaml").read_text())
    listener = EpochListener(rd, cfg["max_epoch"], spec.training.grad_accumulation, counter,
                             rows[-1]["step"] if rows else 0, metric=("acc", "valid_acc"))
    logging.getLogger().addHandler(listener)
    if done_epoch:
        print(f"spx: resuming from checkpoints/checkpoint.pth after epoch {done_epoch}", flush=True)
    SpxCLSTask.main(cmd=argv)

    exp = rd / "checkpoints"
    rows = read_jsonl(rd / "curve.jsonl")

    def real(name: str) -> str | None:
        p = exp / name
        return str(p.resolve()) if p.exists() else None

    # the exported model: the n-best average by valid loss (ESPnet's inference default), with config.yaml beside it
    child.write_train_summary(
        rd, wall_seconds=round(time.time() - t_start, 1), epochs=rows[-1]["epoch"] if rows else 0,
        steps=rows[-1]["step"] if rows else 0, params=info.get("params"), trainable_params=info.get("trainable"),
        peak_memory_mb=round(child.peak_memory_mb(device), 1), last_checkpoint=real("checkpoint.pth"),
        best_checkpoint=real("valid.loss.best.pth"),
        exported_model=str(exp / "valid.loss.ave.pth") if (exp / "valid.loss.ave.pth").exists()
        else real("valid.loss.best.pth"),
        config=real("config.yaml"), effective_batch=(spec.training.batch_size or 16) * spec.training.grad_accumulation,
        world_size=1, train_batches_this_process=counter.get("here", 0), resumed_from_epoch=done_epoch or None,
        device=device, dtype=dtype, threads=threads, toolkit="espnet " + __import__("espnet").__version__)


if __name__ == "__main__":
    child.main_guard(main)
