"""`spx-demo://` data paths: demo corpora spx makes itself, in a cache folder, on first use.

A recipe's `data: {train: spx-demo://tts/train.jsonl, ...}` names the flite TTS demo corpus
(spx/demo/tts_corpus.py defaults: voice slt, 100/10/10 sentences); `spx-demo://kws/...` the keyword-spotting one
(spx/demo/kws_corpus.py defaults: 12 classes, 20/4/6 clips per class). Loading a recipe only maps the name to its
folder (`spx spec show` stays instant); rendering a run (`spx run`, `spx bench`) makes the corpus when it is missing.
The folder is `$XDG_CACHE_HOME/spx/<corpus>-demo-v<N>` (default `~/.cache/spx/...`): one copy for every checkout and
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
KWS_DEMO_VERSION = 1  # the same for spx.demo.kws_corpus
SPLITS = ("train.jsonl", "valid.jsonl", "test.jsonl")
TTS_DEMO = {"voices": ("slt",), "n_train": 100, "n_valid": 10, "n_test": 10}  # spx.demo.tts_corpus settings
KWS_DEMO = {"per_class": 20, "valid_per_class": 4, "test_per_class": 6}  # spx.demo.kws_corpus settings
VERSIONS = {"tts": TTS_DEMO_VERSION, "kws": KWS_DEMO_VERSION}


def demo_dir(corpus: str) -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "spx" / f"{corpus}-demo-v{VERSIONS[corpus]}"


def tts_demo_dir() -> Path:
    return demo_dir("tts")


def kws_demo_dir() -> Path:
    return demo_dir("kws")


def is_demo_path(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


def demo_path(uri: str, key: str) -> str:
    """spx-demo://tts/train.jsonl -> <cache>/spx/tts-demo-v1/train.jsonl. No I/O."""
    corpus, _, name = uri[len(SCHEME):].partition("/")
    if corpus not in VERSIONS or name not in SPLITS:
        raise SpxError(f"{key}: unknown demo corpus path {uri!r}",
                       hint="the demo corpora are spx-demo://tts/ and spx-demo://kws/ with train.jsonl, valid.jsonl "
                            "or test.jsonl")
    return str(demo_dir(corpus) / name)


def ensure_demo_data(paths: Iterable[str]) -> None:
    """Make each demo corpus one of `paths` lies in when it does not exist yet.

    Under a lock (two spx processes make it once) into a temp folder renamed into place at the end (a killed run
    leaves no half corpus), so the folder exists only when complete."""
    paths = list(paths)
    for corpus in VERSIONS:
        folder = demo_dir(corpus)
        if not folder.is_dir() and any(Path(p).parent == folder for p in paths):
            (_make_tts if corpus == "tts" else _make_kws)(folder)


def _make_kws(folder: Path) -> None:
    from spx.demo.kws_corpus import CLASSES, check_tools, generate_kws_corpus

    check_tools()
    sizes = "/".join(str(KWS_DEMO[k]) for k in ("per_class", "valid_per_class", "test_per_class"))
    _make(folder, f"the keyword-spotting demo corpus ({len(CLASSES)} classes, {sizes} clips per class, espeak-ng "
                  "and flite voices)", lambda tmp: generate_kws_corpus(tmp, **KWS_DEMO))


def _make_tts(folder: Path) -> None:
    from spx.demo.tts_corpus import check_tools, generate_tts_corpus

    check_tools()
    sizes = "/".join(str(TTS_DEMO[k]) for k in ("n_train", "n_valid", "n_test"))
    _make(folder, f"the TTS demo corpus (flite voice {','.join(TTS_DEMO['voices'])}, {sizes} sentences)",
          lambda tmp: generate_tts_corpus(tmp, **TTS_DEMO))


def _make(folder: Path, what: str, generate) -> None:
    import fcntl
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if folder.is_dir():  # another process made it while this one waited
            return
        print(f"spx: making {what} in {folder}: first use only", file=sys.stderr, flush=True)
        t0 = time.time()
        tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
        try:
            generate(tmp)
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"spx: {what.split(' (')[0].removeprefix('the ')} ready ({time.time() - t0:.0f} s)", file=sys.stderr,
              flush=True)
