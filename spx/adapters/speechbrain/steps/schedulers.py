"""Per-update LR schedules SpeechBrain has no class for: linear warmup, then cosine decay to min_lr or constant.
Same interface as speechbrain.nnet.schedulers.NoamScheduler (called with the optimizer after each update,
checkpointable), so the Brain treats every schedule alike and resume continues the schedule."""
from __future__ import annotations

import math

import torch
from speechbrain.utils import checkpoints


@checkpoints.register_checkpoint_hooks
class WarmupAnnealing:
    def __init__(self, shape: str, lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0):
        if shape not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule shape {shape!r}")
        self.shape = shape
        self.lr0 = lr
        self.warmup_steps = warmup_steps
        self.total_steps = max(1, total_steps)
        self.min_lr = min_lr
        self.n_steps = 0

    def lr_at(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr0 * (step + 1) / self.warmup_steps
        if self.shape == "constant":
            return self.lr0
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.lr0 - self.min_lr) * (1 + math.cos(math.pi * t))

    def set_initial(self, opt) -> None:
        """LR of the first update (call once before training starts)."""
        for group in opt.param_groups:
            group["lr"] = self.lr_at(self.n_steps)

    def __call__(self, opt):
        current = opt.param_groups[0]["lr"]
        self.n_steps += 1
        lr = self.lr_at(self.n_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        return current, lr

    @checkpoints.mark_as_saver
    def save(self, path):
        torch.save({"n_steps": self.n_steps}, path)

    @checkpoints.mark_as_loader
    def load(self, path, end_of_epoch=False):
        del end_of_epoch
        self.n_steps = torch.load(path)["n_steps"]
