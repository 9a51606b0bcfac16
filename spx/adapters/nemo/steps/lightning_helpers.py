"""What the NeMo train steps (Conformer-CTC `train`, the TTS families' `tts_train`) share around NeMo's Lightning
loop: the error exit, the Trainer arguments from the rendered config, and the export of the best checkpoint's
weights to checkpoints/model.nemo. Imports torch only inside the functions that need it."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def fail(msg: str) -> None:
    """One error line and exit 2 (a bad run setup, not a crash: no traceback)."""
    print(f"spx nemo: error: {msg}", flush=True)
    sys.exit(2)


def trainer_kwargs(cfg, device: str) -> dict[str, Any]:
    """The rendered `trainer:` block as Lightning Trainer arguments; accelerator auto becomes the picked device's."""
    from omegaconf import OmegaConf

    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if kwargs.get("accelerator") == "auto":
        kwargs["accelerator"] = "gpu" if device == "cuda" else "cpu"
    return kwargs


def export_best(trainer, model, run_dir: Path, exported_model: str) -> dict[str, Any]:
    """Load the best checkpoint's weights (when exp_manager kept one) into `model` and save it atomically as the
    run's .nemo; returns the train_summary.json fields that say which checkpoints there are and what was exported."""
    import torch

    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") or ""
    last = getattr(ckpt_cb, "last_model_path", "") or ""
    if not last:
        lasts = sorted((run_dir / "checkpoints").glob("*last.ckpt"), key=lambda p: p.stat().st_mtime)
        last = str(lasts[-1]) if lasts else ""
    export_from = best if best and Path(best).is_file() else None
    if export_from:
        model.load_state_dict(torch.load(export_from, map_location="cpu", weights_only=False)["state_dict"])
    exported = Path(exported_model)
    tmp = exported.with_name(".model.nemo.tmp")
    model.save_to(str(tmp))
    os.replace(tmp, exported)
    return {"last_checkpoint": last or None, "best_checkpoint": best or None, "exported_model": str(exported),
            "exported_from": export_from or "final weights"}
