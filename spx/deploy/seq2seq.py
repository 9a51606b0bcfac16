"""Run an encoder-decoder (Whisper) export dir: numpy log-mel -> the encoder graph -> the decoder-step graph in a
numpy search loop (greedy or beam, as the run's toolkit decodes) -> the run's tokenizer -> text.

export.json `search` holds everything the loop needs, read from the toolkit's own decoding objects at export time:
  style            "transformers" (generate: log-softmax, then the suppression; finished hypotheses scored
                   sum / generated_len ** length_penalty) or "speechbrain" (S2SWhisper searchers: suppression, then
                   log-softmax; scores normalised by the step count, the eos threshold)
  prompt           the decoder prompt: <|startoftranscript|> <|lang|> <|task|> <|notimestamps|> as the run decodes
  eos, num_beams, max_new_tokens, suppress (always -inf), begin_suppress (-inf at the first generated position),
  and each style's own settings (length_penalty/early_stopping; eos_threshold/length_normalization/temperature).
The decoder graph takes the whole prefix at every step (no KV cache: the decodes are a few dozen tokens).
Imports onnxruntime when an engine is made, transformers (the tokenizer) too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from spx.deploy.features import load_frontend
from spx.deploy.graph import Graph

TOKENIZER_DIR = "tokenizer"
NEG = np.float32(-1e9)  # transformers' "cannot be chosen" offset


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    m = np.max(x, axis=-1, keepdims=True)
    return (x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))).astype(np.float32)


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (ties: the lower index first)."""
    return np.argsort(-values, kind="stable")[:k]


class Seq2SeqEngine:
    """An encoder-decoder ASR export dir as transcribe(wavs) (the interface of ExportEngine), plus the pieces the
    export's parity check compares: encode(wav), step_logits(prefixes, encoder states), search(encoder states)."""

    def __init__(self, export_dir: str | Path, threads: int | None = None):
        self.dir = Path(export_dir)
        self.info: dict[str, Any] = json.loads((self.dir / "export.json").read_text())
        if self.info["format"] != "onnx":
            raise ValueError(f"{self.dir}: an encoder-decoder export is ONNX only, not {self.info['format']!r}")
        self.format = "onnx"
        self.frontend = load_frontend(self.dir)
        self.sample_rate = self.frontend.sample_rate
        self.search_settings: dict[str, Any] = self.info["search"]
        graphs = self.info["graphs"]
        self.encoder = Graph(self.dir, {"model_file": graphs["encoder"], "format": "onnx"}, threads)
        self.decoder = Graph(self.dir, {"model_file": graphs["decoder"], "format": "onnx"}, threads)
        import transformers

        tok = self.info["tokenizer"]
        self.tokenizer = getattr(transformers, tok["class"]).from_pretrained(str(self.dir / tok["dir"]))

    # ------------------------------------------------------------ graphs
    def encode(self, wav: np.ndarray) -> np.ndarray:
        """One waveform -> encoder states [1, frames, d_model]."""
        feats, _ = self.frontend(wav)
        return self.encoder.run_named({"input_features": feats[None]})["encoder_hidden_states"]

    def step_logits(self, prefixes: np.ndarray, enc: np.ndarray) -> np.ndarray:
        """Token prefixes [B, n] (one encoder state [1, ...] shared, or one each) -> the last position's logits
        [B, vocab] float32."""
        if enc.shape[0] != len(prefixes):
            enc = np.repeat(enc, len(prefixes), axis=0)
        return self.decoder.run_named({"input_ids": prefixes.astype(np.int64), "encoder_hidden_states": enc})["logits"]

    def first_logits(self, wav: np.ndarray) -> np.ndarray:
        """The decoder's logits after the prompt [vocab] (the parity check's comparison of the graphs)."""
        prompt = np.asarray([self.search_settings["prompt"]], dtype=np.int64)
        return self.step_logits(prompt, self.encode(wav))[0]

    # ------------------------------------------------------------ search
    def _suppress(self, scores: np.ndarray, first: bool) -> np.ndarray:
        s = self.search_settings
        if s["suppress"]:
            scores[:, s["suppress"]] = -np.inf
        if first and s["begin_suppress"]:
            scores[:, s["begin_suppress"]] = -np.inf
        return scores

    def search(self, enc: np.ndarray) -> list[int]:
        """Encoder states [1, frames, d] -> the generated token ids (prompt excluded) the toolkit's search keeps."""
        s = self.search_settings
        if int(s["num_beams"]) == 1:
            return self._greedy(enc)
        return self._beam_transformers(enc) if s["style"] == "transformers" else self._beam_speechbrain(enc)

    def _greedy(self, enc: np.ndarray) -> list[int]:
        """argmax after the suppression until eos or max_new_tokens (generate's greedy search and
        S2SWhisperGreedySearcher at temperature 0 alike: the eos itself is not kept)."""
        s = self.search_settings
        tokens = list(s["prompt"])
        out: list[int] = []
        for step in range(int(s["max_new_tokens"])):
            logits = self._suppress(self.step_logits(np.asarray([tokens]), enc), first=step == 0)
            best = int(np.argmax(logits[0]))
            if best == s["eos"]:
                break
            out.append(best)
            tokens.append(best)
        return out

    def _beam_transformers(self, enc: np.ndarray) -> list[int]:
        """generate's beam search (transformers' GenerationMixin._beam_search, one batch item): top 2*beams of
        running score + log-softmax (suppressed after it); the top `beams` of them that end (eos, or max length)
        compete for the finished set by sum / generated_len ** length_penalty; stop when no running beam can beat
        the worst finished one (early_stopping False: judged at the current length) or every candidate ended."""
        s = self.search_settings
        beams, prompt, eos = int(s["num_beams"]), list(s["prompt"]), int(s["eos"])
        lp, early = float(s["length_penalty"]), s["early_stopping"]
        p_len = len(prompt)
        max_length = p_len + int(s["max_new_tokens"])
        keep = 2 * beams
        running = [list(prompt) for _ in range(beams)]
        running_scores = np.zeros(beams, dtype=np.float32)
        running_scores[1:] = NEG
        fin_seqs: list[list[int]] = [list(prompt) for _ in range(beams)]
        fin_scores = np.full(beams, NEG, dtype=np.float32)
        fin_flags = np.zeros(beams, dtype=bool)
        improvable = True
        cur_len = p_len
        while True:
            logp = self._suppress(log_softmax(self.step_logits(np.asarray(running), enc)), first=cur_len == p_len)
            acc = (logp + running_scores[:, None]).reshape(-1)
            idx = top_k(acc, keep)
            top_scores = acc[idx]
            vocab = logp.shape[1]
            cands = [running[i // vocab] + [int(i % vocab)] for i in idx]
            hits = np.array([c[-1] == eos or cur_len + 1 >= max_length for c in cands])
            run_scores = top_scores + hits.astype(np.float32) * NEG
            nxt = top_k(run_scores, beams)
            running, running_scores = [cands[i] for i in nxt], run_scores[nxt]
            norm = top_scores / np.float32((cur_len + 1 - p_len) ** lp)
            if early is True and fin_flags.all():
                norm = norm + NEG
            if not improvable:
                norm = norm + NEG
            just_finished = hits & (np.arange(keep) < beams)
            norm = norm + (~just_finished).astype(np.float32) * NEG
            merged_scores = np.concatenate([fin_scores, norm.astype(np.float32)])
            merged_seqs = fin_seqs + cands
            merged_flags = np.concatenate([fin_flags, just_finished])
            best = top_k(merged_scores, beams)
            fin_seqs, fin_scores, fin_flags = [merged_seqs[i] for i in best], merged_scores[best], merged_flags[best]
            cur_len += 1
            length = (max_length if early == "never" and lp > 0 else cur_len) - p_len
            best_possible = running_scores[0] / np.float32(length ** lp)
            worst = np.where(fin_flags, fin_scores.min(), NEG)
            improvable = improvable and bool(np.any(best_possible > worst))
            if not improvable or (fin_flags.all() and early is True) or hits.all():
                break
        return [t for t in fin_seqs[0][p_len:] if t != eos]

    def _beam_speechbrain(self, enc: np.ndarray) -> list[int]:
        """S2SWhisperBeamSearcher (SpeechBrain's S2SBeamSearcher, one batch item): log-softmax of the suppressed
        logits / temperature; eos allowed only above eos_threshold x the best log-prob; top `beams` of running +
        step scores (divided by the step count with length_normalization); a beam that emits eos is kept with its
        normalised score until `beams` have ended; at max steps the running ones fill the rest; the best one loses
        its last token (the searcher's length is len - 1, whether it ended in eos or not)."""
        s = self.search_settings
        beams, prompt, eos = int(s["num_beams"]), list(s["prompt"]), int(s["eos"])
        minus_inf = np.float32(s["minus_inf"])
        norm_len = bool(s["length_normalization"])
        alive: list[list[int]] = [[] for _ in range(beams)]
        seq_scores = np.full(beams, minus_inf, dtype=np.float32)
        seq_scores[0] = 0.0
        finished: list[tuple[list[int], float]] = []
        scores = seq_scores
        for step in range(int(s["max_decode_steps"])):
            if len(finished) >= beams:
                break
            prefixes = np.asarray([prompt + a for a in alive])
            logits = self._suppress(self.step_logits(prefixes, enc).astype(np.float32), first=step == 0)
            logp = log_softmax(logits) / np.float32(s["temperature"])
            if s["using_eos_threshold"]:
                allowed = logp[:, eos] > np.float32(s["eos_threshold"]) * logp.max(axis=-1)
                logp[~allowed, eos] = minus_inf
            total = seq_scores[:, None] + logp
            if norm_len:
                total = total / np.float32(step + 1)
            flat = total.reshape(-1)
            idx = top_k(flat, beams)
            scores = flat[idx]
            vocab = logp.shape[1]
            alive = [alive[i // vocab] + [int(i % vocab)] for i in idx]
            seq_scores = scores * np.float32(step + 1) if norm_len else scores.copy()
            for i, a in enumerate(alive):
                if a[-1] == eos and len(finished) < beams:
                    finished.append((a, float(scores[i])))
            seq_scores[[a[-1] == eos for a in alive]] = -np.inf
            if len(alive[0]) >= int(s["max_attn_tokens"]) - len(prompt):
                break
        for i, a in enumerate(alive):  # _fill_alived_hyps_with_eos_token
            if len(finished) < beams:
                finished.append((a, float(scores[i])))
        best = max(range(len(finished)), key=lambda i: (finished[i][1], -i))
        return finished[best][0][:-1]

    # ------------------------------------------------------------ text
    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def transcribe(self, wavs: list[np.ndarray]) -> list[str]:
        return [self.text(self.search(self.encode(w))) for w in wavs]
