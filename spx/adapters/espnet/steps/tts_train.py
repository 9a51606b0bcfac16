"""Child step `tts_train`: first the preparation (tts_prepare: data dirs, FastSpeech2's teacher durations, feature
statistics) unless native/tts_prepared.json says it is done, then espnet2.bin.tts_train (or gan_tts_train for VITS)
with the argv render wrote (native/tts_commands.json), plus what only run time knows (--ngpu); one espnet2 import.
ESPnet resumes from checkpoints/checkpoint.pth (--resume true). Afterwards the per-epoch losses are read from ESPnet's own Reporter (checkpoint.pth) into
curve.jsonl, and train_summary.json records the run."""
from __future__ import annotations

import json
import logging
import re
import time

from spx.adapters.common import child
from spx.adapters.espnet.helpers import TTS_COMMANDS
from spx.adapters.espnet.steps.common import counting_task, run_native, start
from spx.adapters.espnet.steps.tts_prepare import is_prepared, prepare
from spx.yamlio import atomic_write_text

EPOCH_RESULTS = re.compile(r"(\d+)epoch results: (.*)")


class EpochProgress(logging.Handler):
    """Turns ESPnet's '<N>epoch results: [train] ... loss=...' log lines into spx progress lines."""

    def __init__(self, epochs: int, loss_key: str = "loss"):
        super().__init__(level=logging.INFO)
        self.epochs = epochs
        self.loss = re.compile(r"\[(train|valid)\][^\[]*?(?<![\w])" + re.escape(loss_key) + r"=([-\d.e+]+)")

    def emit(self, record: logging.LogRecord) -> None:
        m = EPOCH_RESULTS.search(record.getMessage())
        if not m:
            return
        losses = dict(self.loss.findall(m.group(2)))
        child.progress(phase="train", epoch=int(m.group(1)), of=self.epochs,
                       **{f"{k}_loss": float(v) for k, v in losses.items()})


def curve_from_reporter(rd, loss_key: str = "loss") -> list[dict]:
    """One row per finished epoch from ESPnet's Reporter state in checkpoint.pth. train_loss/valid_loss are
    `loss_key` (VITS: generator_loss); a GAN's discriminator_loss and mel loss are kept beside them."""
    import torch

    ckpt = torch.load(rd / "checkpoints/checkpoint.pth", map_location="cpu", weights_only=False)
    stats = ckpt["reporter"]["stats"]
    rows, step = [], 0
    for epoch in sorted(stats):
        train, valid = stats[epoch].get("train", {}), stats[epoch].get("valid", {})
        step = int(train.get("total_count", step))
        row = {"epoch": int(epoch), "step": step, "train_loss": float(train[loss_key]),
               "valid_loss": float(valid[loss_key]) if loss_key in valid else None,
               "lr": float(train["optim0_lr0"]) if "optim0_lr0" in train else None}
        for extra in ("discriminator_loss", "generator_mel_loss"):
            if extra in train:
                row[f"train_{extra}"] = float(train[extra])
        rows.append(row)
    return rows


def main(run_dir: str) -> None:
    spec, rd = start(run_dir)
    started = time.time()
    threads = child.set_threads(spec)
    device = child.pick_device(spec)
    logging.basicConfig(level="INFO", format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    if not is_prepared(rd):
        prepare(spec, rd)
    native = json.loads((rd / TTS_COMMANDS).read_text())
    argv = native["commands"]["tts_train"] + ["--ngpu", "1" if device == "cuda" else "0"]  # module first

    if argv[0] == "espnet2.bin.gan_tts_train":
        from espnet2.tasks.gan_tts import GANTTSTask as Task
    else:
        from espnet2.tasks.tts import TTSTask as Task

    info: dict = {}
    loss_key = native["loss_key"]

    logging.getLogger().addHandler(EpochProgress(native["derived"]["epochs"], loss_key))
    run_native(argv, counting_task(Task, info).main)

    rows = curve_from_reporter(rd, loss_key)
    atomic_write_text(rd / "curve.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    exp = rd / "checkpoints"
    best = exp / f"valid.{loss_key}.best.pth"
    synth_model = rd / native["synth_model"]
    last = exp / f"{rows[-1]['epoch']}epoch.pth" if rows else None
    child.write_train_summary(
        rd, wall_seconds=round(time.time() - started, 1), epochs=rows[-1]["epoch"] if rows else 0,
        steps=rows[-1]["step"] if rows else 0, params=info.get("params"),
        peak_memory_mb=round(child.peak_memory_mb(device), 1),
        last_checkpoint=str(last.resolve()) if last and last.exists() else None,
        best_checkpoint=str(best.resolve()) if best.exists() else None,
        exported_model=str(synth_model.resolve()) if synth_model.exists() else None,
        effective_batch=spec.training.batch_size * spec.training.grad_accumulation, world_size=1, device=device,
        threads=threads, vocoder=native["vocoder_name"], init_from=native["init_from"],
        native_config=str(exp / "config.yaml"),
        duration_teacher=(native.get("duration_teacher") or {}).get("model"),  # FastSpeech2's durations came from it
    )


if __name__ == "__main__":
    child.main_guard(main)
