"""Child-process side shared by train and decode: load the generated hyperpyyaml, the tokenizer, a pretrained
model (SpeechBrain Pretrainer), freezing, and the greedy/beam CTC transcription of a batch of waveforms."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml

import speechbrain as sb
from spx.adapters.speechbrain.conformer_ctc import EXPORT_INFO
from spx.rundir import RunDir
from spx.spec import Spec

MODULE_FILES = ("CNN", "Transformer", "ctc_lin", "normalizer")


def load_hparams(rd: RunDir, path: Path | None = None) -> dict[str, Any]:
    """The run's native hparams.yaml (a file spx generated) with backends.speechbrain applied as overrides."""
    native = rd / "native"
    overrides = yaml.safe_load((native / "overrides.yaml").read_text()) or {}
    with open(path or native / "hparams.yaml", encoding="utf-8") as fh:
        return load_hyperpyyaml(fh, overrides)


def module_map(hparams: dict[str, Any]) -> dict[str, torch.nn.Module]:
    """Checkpoint file name -> module (the same names the Checkpointer uses)."""
    return {"CNN": hparams["CNN"], "Transformer": hparams["Transformer"], "ctc_lin": hparams["ctc_lin"],
            "normalizer": hparams["normalize"]}


class Tokenizer:
    """Text <-> CTC label ids. char: SpeechBrain CTCTextEncoder (blank 0); bpe: SpeechBrain SentencePiece."""

    def __init__(self, kind: str, encoder: Any = None, spm: Any = None, tokens: list[str] | None = None):
        self.kind = kind
        self.encoder = encoder
        self.spm = spm
        self.tokens = tokens

    def encode(self, text: str) -> list[int]:
        if self.kind == "char":
            return self.encoder.encode_sequence(list(text))
        return self.spm.encode_as_ids(text)

    def decode(self, ids: list[int]) -> str:
        if self.kind == "char":
            return "".join(self.encoder.decode_ndim(ids))
        return self.spm.decode_ids([int(i) for i in ids])

    def vocab_list(self) -> list[str]:
        if self.kind == "char":
            return [self.encoder.ind2lab[i] for i in range(len(self.encoder))]
        return [self.spm.id_to_piece(i) for i in range(self.spm.get_piece_size())]


def char_tokenizer(tokens: list[str], label_file: Path) -> Tokenizer:
    enc = sb.dataio.encoder.CTCTextEncoder()
    label_file.parent.mkdir(parents=True, exist_ok=True)
    enc.load_or_create(path=str(label_file), from_iterables=[[tokens]], sequence_input=True,
                       special_labels={"blank_label": 0})
    enc.expect_len(len(tokens) + 1)  # the characters + the CTC blank: catches a label file of another vocabulary
    return Tokenizer("char", encoder=enc, tokens=tokens)


def make_tokenizer(hparams: dict[str, Any], spec: Spec, init_dir: Path | None, load_head: bool) -> Tokenizer:
    tok_dir = Path(hparams["tokenizer_dir"])
    tok_dir.mkdir(parents=True, exist_ok=True)
    if hparams["tokenizer_type"] == "char":
        tokens = [json.loads(line) for line in Path(hparams["tokens_file"]).read_text(encoding="utf-8").splitlines() if line]
        return char_tokenizer(tokens, tok_dir / "label_encoder.txt")
    from speechbrain.tokenizers.SentencePiece import SentencePiece

    vocab = int(hparams["vocab_size"])
    if init_dir is not None and load_head:
        # fine-tuning keeps the pretrained tokenizer so the pretrained CTC head still means the same pieces
        info = json.loads((init_dir / EXPORT_INFO).read_text())
        for f in info["tokenizer_files"]:
            if not (tok_dir / f).exists():
                shutil.copy2(init_dir / f, tok_dir / f)
    sp = SentencePiece(model_dir=str(tok_dir), vocab_size=vocab, annotation_train=hparams["train_csv"],
                       annotation_read="wrd", model_type="unigram", character_coverage=1.0, annotation_format="csv")
    return Tokenizer("bpe", spm=sp.sp)


def load_exported(export_dir: Path, hparams: dict[str, Any], load_head: bool) -> list[str]:
    """Load an spx-exported SpeechBrain model's modules with the native Pretrainer; the CTC head only when
    the vocabulary is the same. Returns the module names loaded."""
    from speechbrain.utils.parameter_transfer import Pretrainer

    mods = module_map(hparams)
    names = [n for n in MODULE_FILES if load_head or n != "ctc_lin"]
    pre = Pretrainer(collect_in=str(Path(hparams["output_folder"]) / "pretrained"),
                     loadables={n: mods[n] for n in names},
                     paths={n: str(export_dir / f"{n}.ckpt") for n in names})
    pre.collect_files()
    pre.load_collected()
    return names


def apply_freeze(hparams: dict[str, Any], freeze: list[str]) -> list[str]:
    """Freeze what the spec asks; returns the parameter names frozen (prefixed by module name)."""
    targets: list[tuple[str, torch.nn.Module]] = []
    for item in freeze:
        if item == "encoder":
            targets += [("CNN", hparams["CNN"]), ("Transformer", hparams["Transformer"])]
        elif item == "feature_extractor":
            targets.append(("CNN", hparams["CNN"]))
        elif item.startswith("encoder.layers:"):
            n = int(item.split(":", 1)[1])
            for i, layer in enumerate(hparams["Transformer"].encoder.layers[:n]):
                targets.append((f"Transformer.encoder.layers.{i}", layer))
    frozen = []
    for prefix, module in targets:
        for name, p in module.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{prefix}.{name}")
    return sorted(set(frozen))


def ctc_decoder(hparams: dict[str, Any], tokenizer: Tokenizer) -> Callable[[torch.Tensor, torch.Tensor], list[str]]:
    """log-probs [B, T, V] + relative lengths -> texts, greedy or CTC prefix beam search (SpeechBrain)."""
    blank = int(hparams["blank_index"])
    if hparams["decoding"] == "beam":
        from speechbrain.decoders.ctc import CTCPrefixBeamSearcher

        vocab = tokenizer.vocab_list()
        searcher = CTCPrefixBeamSearcher(blank_index=blank, vocab_list=vocab, beam_size=int(hparams["beam_size"]),
                                         space_token=" ")

        def beam(log_probs: torch.Tensor, lens: torch.Tensor) -> list[str]:
            hyps = searcher(log_probs.float(), lens)
            out = []
            for nbest in hyps:
                text = nbest[0].text
                out.append(" ".join(text.replace("▁", " ").split()))
            return out

        return beam

    def greedy(log_probs: torch.Tensor, lens: torch.Tensor) -> list[str]:
        seqs = sb.decoders.ctc_greedy_decode(log_probs, lens, blank_id=blank)
        return [tokenizer.decode(s) for s in seqs]

    return greedy


def encode_log_probs(modules: Any, hparams: dict[str, Any], wavs: torch.Tensor, wav_lens: torch.Tensor,
                     epoch: int | None = None, train_augment: bool = False) -> torch.Tensor:
    """The forward pass shared by training and decoding: Fbank -> normalize -> [SpecAugment] -> CNN -> Conformer -> CTC."""
    feats = hparams["compute_features"](wavs)
    feats = modules.normalize(feats, wav_lens, epoch=epoch)
    if train_augment and hparams.get("fea_augment") is not None:
        feats, _ = hparams["fea_augment"](feats, wav_lens)
    src = modules.CNN(feats)
    enc = modules.enc(src, wav_lens)
    return hparams["log_softmax"](modules.ctc_lin(enc))


def transcriber(modules: Any, hparams: dict[str, Any], tokenizer: Tokenizer, device: str, dtype: str
                ) -> Callable[[list[np.ndarray]], list[str]]:
    decode = ctc_decoder(hparams, tokenizer)
    autocast_dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    dev_type = "cuda" if device.startswith("cuda") else "cpu"

    @torch.no_grad()
    def transcribe_batch(audio: list[np.ndarray]) -> list[str]:
        lens = torch.tensor([len(a) for a in audio], dtype=torch.float32)
        batch = torch.zeros(len(audio), int(lens.max()))
        for i, a in enumerate(audio):
            batch[i, : len(a)] = torch.from_numpy(a)
        batch = batch.to(device)
        rel = (lens / lens.max()).to(device)
        with torch.autocast(dev_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            lp = encode_log_probs(modules, hparams, batch, rel)
        return decode(lp.float(), rel)

    return transcribe_batch
