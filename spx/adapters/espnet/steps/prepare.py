"""Token list (+ sentencepiece model), feature statistics and shape files, by ESPnet's own entry points
(tokenize_text, asr_train --collect_stats, aggregate_stats_dirs) run in one process with the argv lists render wrote
to native/commands.json (one import of espnet2 instead of three).

A single-process run does this inside its `train` step, before training (one espnet2 import for both); a run with
several processes (torchrun, Slurm nodes) has this module as its own `prepare` step first, so the statistics are
collected once, not once per rank. native/prepared.json says it finished (a step killed half-way redoes it).
"""
from __future__ import annotations

import json

from spx.adapters.common import child
from spx.adapters.espnet.helpers import ASR_COMMANDS, BPE_PREFIX, DATA, TOKENS
from spx.adapters.espnet.steps.common import run_native, start
from spx.adapters.espnet.steps.lazy_imports import defer_unused_imports
from spx.yamlio import atomic_write_json

DONE = "native/prepared.json"


def train_sentencepiece(rd, spec) -> None:
    """ESPnet's asr.sh trains sentencepiece with the library's trainer; the same here, on the cleaned texts."""
    import sentencepiece as spm

    texts = [line.split(" ", 1)[1].strip() if " " in line else ""
             for line in (rd / f"{DATA}/train/text").read_text(encoding="utf-8").splitlines()]
    prefix = rd / BPE_PREFIX
    prefix.parent.mkdir(parents=True, exist_ok=True)
    plain = prefix.parent / "train_texts.txt"
    plain.write_text("\n".join(t for t in texts if t) + "\n", encoding="utf-8")
    try:
        spm.SentencePieceTrainer.train(input=str(plain), model_prefix=str(prefix), vocab_size=spec.tokenizer.vocab_size,
                                       model_type="bpe", character_coverage=1.0, input_sentence_size=100000000)
    except RuntimeError as exc:
        raise SystemExit(f"sentencepiece could not train a {spec.tokenizer.vocab_size}-token model on "
                         f"{len(texts)} training texts: {exc}. Lower tokenizer.vocab_size.") from None


def is_prepared(rd) -> bool:
    return (rd / DONE).exists() or "prepare" in rd.completed_steps()  # the latter: a run dir from an older spx


def prepare(spec, rd) -> None:
    """Run the preparation in this process (cwd must be the run dir: the native argv lists are relative to it)."""
    cmds = json.loads((rd / ASR_COMMANDS).read_text())["commands"]
    if spec.tokenizer.type == "bpe":
        train_sentencepiece(rd, spec)
        child.progress(phase="prepare", done="sentencepiece")

    defer_unused_imports()
    for name in ("tokenize_text", "collect_stats", "aggregate_stats_dirs"):  # espnet2.bin.<entry>, module first
        run_native(cmds[name])
        child.progress(phase="prepare", done=name)
    n_tokens = sum(1 for _ in (rd / TOKENS).open(encoding="utf-8"))
    atomic_write_json(rd / DONE, {"commands": ["tokenize_text", "collect_stats", "aggregate_stats_dirs"],
                                  "tokens": n_tokens})
    child.progress(phase="prepare", tokens=n_tokens)


def main(run_dir: str) -> None:
    spec, rd = start(run_dir)
    prepare(spec, rd)


if __name__ == "__main__":
    child.main_guard(main)
