"""Child step `tokenizer`: train the sentencepiece model NeMo's EncDecCTCModelBPE reads from a tokenizer dir
(tokenizer.model, tokenizer.vocab, vocab.txt: the layout NeMo's process_asr_text_tokenizer.py writes)."""
from __future__ import annotations

import os
import shutil
import tempfile

from spx.adapters.common.child import load_run, main_guard

SPECIAL = {"<s>", "</s>", "<pad>", "<unk>"}


def train_tokenizer(run_dir: str) -> None:
    import sentencepiece as spm

    spec, rd = load_run(run_dir)
    native = rd / "native"
    out = native / "tokenizer"
    tmp = tempfile.mkdtemp(dir=native, prefix=".tokenizer.")
    try:
        spm.SentencePieceTrainer.train(
            input=str(native / "tokenizer_text.txt"), model_prefix=os.path.join(tmp, "tokenizer"),
            vocab_size=spec.tokenizer.vocab_size, model_type="bpe", character_coverage=1.0,
            bos_id=-1, eos_id=-1, hard_vocab_limit=False, shuffle_input_sentence=False,  # deterministic
            num_threads=1,
        )
        tokens = []
        with open(os.path.join(tmp, "tokenizer.vocab"), encoding="utf-8") as fh:
            for line in fh:
                piece = line.split("\t")[0]
                if piece in SPECIAL:
                    continue
                token = piece[1:] if piece.startswith("\u2581") else f"##{piece}"
                if token:
                    tokens.append(token)
        with open(os.path.join(tmp, "vocab.txt"), "w", encoding="utf-8") as fh:
            fh.write("\n".join(tokens) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"sentencepiece bpe tokenizer: {len(tokens)} pieces -> {out}", flush=True)


if __name__ == "__main__":
    main_guard(train_tokenizer)
