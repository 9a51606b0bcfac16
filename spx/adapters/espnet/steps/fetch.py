"""Child step `fetch_init`: an `init_from` hub name (e.g. 'espnet/owner_model') -> a local ESPnet model.

ESPnet models on Hugging Face hold exp/<...>/config.yaml and a *.pth beside it (what Speech2Text.from_pretrained
loads). The files go to the Hugging Face cache; native/init/init.json names them for the train step."""
from __future__ import annotations

from pathlib import Path

import yaml

from spx.adapters.common import child
from spx.yamlio import atomic_write_json


def main(run_dir: str) -> None:
    spec, rd = child.load_run(run_dir)
    from huggingface_hub import snapshot_download

    try:
        root = Path(snapshot_download(repo_id=spec.init_from))
    except Exception as exc:  # network, auth, unknown name: say which and stop
        raise SystemExit(f"init_from {spec.init_from!r}: could not download it from Hugging Face ({type(exc).__name__}: {exc})")
    for cfg in sorted(root.rglob("config.yaml")):
        conf = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
        if "encoder" not in conf:
            continue
        models = sorted(cfg.parent.glob("*.pth"), key=lambda p: ("ave" not in p.name, "best" not in p.name, p.name))
        if models:
            atomic_write_json(rd / "native/init/init.json", {"model": str(models[0].resolve()), "config": str(cfg.resolve()),
                                                             "source": spec.init_from})
            child.progress(phase="fetch_init", model=models[0].name)
            return
    raise SystemExit(f"init_from {spec.init_from!r}: no ESPnet ASR model (config.yaml with an encoder + *.pth) in {root}")


if __name__ == "__main__":
    child.main_guard(main)
