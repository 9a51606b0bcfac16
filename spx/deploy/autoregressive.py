"""An autoregressive TTS acoustic model (Tacotron2) exported as three graphs, run by a numpy loop that mirrors the
toolkit's own inference loop (export.json "autoregressive" holds its rule, taken from the run):

  encoder       ids [1, N] int64 (+ speaker [1]) -> memory [1, T, D] and processed_memory [1, T, A]
  decoder_step  frame [1, n_mels], the prenet's dropout masks, the decoder states, memory, processed_memory
                -> mel [r, n_mels] (this step's frames), stop_prob [r], next_<state> for every state
  postnet       decoded [1, n_mels, L] -> mel [1, n_mels, L] (postnet residual + the toolkit's denormalisation)

The loop stops when a stop probability crosses the threshold (`compare` ">" for SpeechBrain, ">=" for ESPnet) or at
the step limit (a fixed max_steps and/or max_length_ratio x T), never before min_length_ratio x T; SpeechBrain drops
the frame its gate stopped on (after the postnet ran over it), ESPnet keeps it.

Both toolkits keep the prenet's dropout on at inference (Tacotron2 needs it): the masks are graph inputs drawn here,
per step and prenet layer in order, from a numpy Generator seeded per request (the export's seed unless the caller
names one), so one text gives one mel, and the export's parity check replays the same masks inside the toolkit
(dropout_mask is the one draw both sides use). Numpy only: the graphs come in as objects with run_named(feeds)."""
from __future__ import annotations

from typing import Any

import numpy as np

GRAPH_ROLES = ("encoder", "decoder_step", "postnet")


def dropout_mask(rng: np.random.Generator, units: int, rate: float) -> np.ndarray:
    """One prenet layer's inverted-dropout mask [1, units] float32: 0 (dropped) or 1 / (1 - rate) (kept)."""
    keep = rng.random(units) >= rate
    return (keep.astype(np.float32) / np.float32(1.0 - rate)).reshape(1, units)


def step_limits(settings: dict[str, Any], tokens: int) -> tuple[int, int]:
    """(max frames, min frames) for a memory of `tokens` positions, as the toolkit sizes them (SpeechBrain: its
    max_decoder_steps of one frame; ESPnet: int(tokens * maxlenratio), int(tokens * minlenratio))."""
    limits = []
    if settings.get("max_steps") is not None:
        limits.append(int(settings["max_steps"]))
    if settings.get("max_length_ratio") is not None:
        limits.append(int(tokens * float(settings["max_length_ratio"])))
    if not limits:
        raise ValueError("export.json autoregressive: neither max_steps nor max_length_ratio bounds the decoder")
    return max(min(limits), 1), int(tokens * float(settings.get("min_length_ratio") or 0.0))


def stops(stop_prob: np.ndarray, threshold: float, compare: str) -> bool:
    p = np.asarray(stop_prob, dtype=np.float32).reshape(-1)
    if compare == ">":
        return bool((p > threshold).any())
    if compare == ">=":
        return bool((p >= threshold).any())
    raise ValueError(f"export.json autoregressive: unknown stop compare {compare!r}")


class AutoregressiveAcoustic:
    """mel_of_ids(ids, speaker id or None, seed) -> mel [frames, n_mels] with the export's three graphs."""

    def __init__(self, graphs: dict[str, Any], settings: dict[str, Any]):
        missing = [r for r in GRAPH_ROLES if r not in graphs]
        if missing:
            raise ValueError(f"export.json graphs: missing {missing}")
        self.encoder, self.step, self.postnet = (graphs[r] for r in GRAPH_ROLES)
        self.s = settings
        self.prenet = settings["prenet"]

    def initial_states(self, tokens: int) -> dict[str, np.ndarray]:
        states = {}
        for name, init in self.s["states"].items():
            shape = tuple(tokens if d == "tokens" else int(d) for d in init["shape"])
            fill = 1.0 / tokens if init["fill"] == "uniform" else float(init["fill"])
            states[name] = np.full(shape, fill, dtype=np.float32)
        return states

    def decode(self, memory: dict[str, np.ndarray], seed: int | None = None) -> tuple[list[np.ndarray], int]:
        """The decoder loop on the encoder's outputs -> (every decoded step's frames, how many frames to keep)."""
        rng = np.random.default_rng(self.prenet["seed"] if seed is None else seed)
        tokens = int(next(iter(memory.values())).shape[1])
        max_steps, min_steps = step_limits(self.s, tokens)
        states = self.initial_states(tokens)
        frame = np.zeros((1, int(self.s["n_mels"])), dtype=np.float32)
        frames: list[np.ndarray] = []
        decoded, stopped = 0, False  # frames so far (ESPnet counts its limits in frames: r per step)
        while True:
            feeds = {"frame": frame, **memory, **states}
            for i, units in enumerate(self.prenet["units"]):
                feeds[f"prenet_mask_{i}"] = dropout_mask(rng, int(units), float(self.prenet["rate"]))
            out = self.step.run_named(feeds)
            mel = np.asarray(out["mel"], dtype=np.float32).reshape(-1, frame.shape[1])
            frames.append(mel)
            decoded += len(mel)
            frame = mel[-1:]
            states = {name: np.asarray(out[f"next_{name}"], dtype=np.float32) for name in states}
            stopped = stops(out["stop_prob"], float(self.s["threshold"]), self.s["compare"])
            if stopped or decoded >= max_steps:
                if decoded < min_steps:  # ESPnet: a stop before the minimum length decodes on
                    continue
                break
        keep = decoded - len(frames[-1]) if stopped and self.s["stop_frame"] == "dropped" else decoded
        return frames, keep

    def mel_of_ids(self, ids: list[int], speaker: int | None = None, seed: int | None = None) -> np.ndarray:
        feeds = {"ids": np.asarray([ids], dtype=np.int64)}
        if self.s.get("speaker_input"):
            feeds["speaker"] = np.asarray([0 if speaker is None else speaker], dtype=np.int64)
        enc = self.encoder.run_named(feeds)
        memory = {name: np.asarray(enc[name], dtype=np.float32) for name in self.s["memory"]}
        frames, keep = self.decode(memory, seed)
        decoded = np.concatenate(frames, axis=0)  # [L, n_mels]
        post = self.postnet.run_named({"decoded": np.ascontiguousarray(decoded.T[None])})
        mel = np.asarray(post["mel"], dtype=np.float32)[0].T  # the postnet sees every decoded frame, as the toolkit's
        return np.ascontiguousarray(mel[:keep])
