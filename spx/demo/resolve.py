"""`spx-demo://` data paths: demo corpora spx makes itself, in a cache folder, on first use.

A recipe's `data: {train: spx-demo://tts/train.jsonl, ...}` names the flite TTS demo corpus
(spx/demo/tts_corpus.py defaults: voice slt, 100/10/10 sentences). Loading a recipe only maps the name to its
folder (`spx spec show` stays instant); rendering a run (`spx run`, `spx bench`) makes the corpus when it is missing.
The folder is `$XDG_CACHE_HOME/spx/tts-demo-v<N>` (default `~/.cache/spx/...`): one copy for every checkout and
every recipe copy, outside the run folders users clean up.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from spx.errors import SpxError

SCHEME = "spx-demo://"
TTS_DEMO_VERSION = 1  # bump when spx.demo.tts_corpus makes different audio: a new folder, made afresh
SPLITS = ("train.jsonl", "valid.jsonl", "test.jsonl")
TTS_DEMO = {"voices": ("slt",), "n_train": 100, "n_valid": 10, "n_test": 10}  # spx.demo.tts_corpus settings


def tts_demo_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "spx" / f"tts-demo-v{TTS_DEMO_VERSION}"


def is_demo_path(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


def demo_path(uri: str, key: str) -> str:
    """spx-demo://tts/train.jsonl -> <cache>/spx/tts-demo-v1/train.jsonl. No I/O."""
    corpus, _, name = uri[len(SCHEME):].partition("/")
    if corpus != "tts" or name not in SPLITS:
        raise SpxError(f"{key}: unknown demo corpus path {uri!r}",
                       hint="the demo corpus is spx-demo://tts/train.jsonl, valid.jsonl or test.jsonl")
    return str(tts_demo_dir() / name)


def ensure_demo_data(paths: Iterable[str]) -> None:
    """Make the TTS demo corpus when one of `paths` lies in its folder and it does not exist yet.

    Under a lock (two spx processes make it once) into a temp folder renamed into place at the end (a killed run
    leaves no half corpus), so the folder exists only when complete."""
    folder = tts_demo_dir()
    if folder.is_dir() or not any(Path(p).parent == folder for p in paths):
        return
    import fcntl
    import shutil
    import tempfile

    from spx.demo.tts_corpus import check_tools, generate_tts_corpus

    check_tools()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if folder.is_dir():  # another process made it while this one waited
            return
        sizes = "/".join(str(TTS_DEMO[k]) for k in ("n_train", "n_valid", "n_test"))
        print(f"spx: making the TTS demo corpus (flite voice {','.join(TTS_DEMO['voices'])}, {sizes} sentences) in "
              f"{folder}: first use only", file=sys.stderr, flush=True)
        t0 = time.time()
        tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
        try:
            generate_tts_corpus(tmp, **TTS_DEMO)
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"spx: TTS demo corpus ready ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
