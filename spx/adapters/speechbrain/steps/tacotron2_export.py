"""Child step `export` (`spx export`) of the SpeechBrain tacotron2 family: the best checkpoint's Tacotron2 as three
ONNX graphs (torch.onnx.export, dynamo=False) that spx.deploy.autoregressive loops as SpeechBrain's Decoder.infer
does (gate_threshold, max_decoder_steps, the stop frame dropped after the postnet ran over it):

  encoder       ids [1, N] (+ speaker [1]) -> memory, processed_memory (attention_layer.memory_layer)
  decoder_step  Prenet (its two dropout masks as inputs) + Decoder.decode, one frame per step
  postnet       mel + Postnet(mel), [1, n_mels, L]

with text.json and the vocoder as the fastspeech2 exporter writes them (steps.tts_export). The parity check runs
SpeechBrain's own Tacotron2.infer with the prenet's dropout replaying the engine's masks.

`python -m spx.adapters.speechbrain.steps.tacotron2_export RUN_DIR OUT_DIR --format onnx [--quantize int8]`
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spx.adapters.common.autoregressive_export import (PRENET_SEED, GraphSpec, replay_prenet_dropout,
                                                       write_autoregressive_graphs)
from spx.adapters.common.export import TtsExporter, export_tts_run, main
from spx.adapters.speechbrain.steps.tts_export import text_settings, vocoder_parts
from spx.adapters.speechbrain.steps.tts_model import encode_text
from spx.adapters.speechbrain.steps.tts_synth import load_for_synthesis

ROUTE = ("torch.onnx.export (TorchScript exporter, dynamo=False) of SpeechBrain's Tacotron2 as encoder, decoder step "
         "(prenet dropout masks as inputs) and postnet graphs, looped in numpy as Decoder.infer loops")
STATES = ("attention_hidden", "attention_cell", "decoder_hidden", "decoder_cell", "attention_weights",
          "attention_weights_cum", "attention_context")
PER_TOKEN = ("attention_weights", "attention_weights_cum")  # states of the memory's length
EXAMPLE_TEXT = "an example sentence"


class Encoder(torch.nn.Module):
    """Tacotron2.infer's embedding + Encoder.infer (+ SpeakerTacotron2's speaker embedding) on one unpadded sentence
    (pack_padded_sequence of a full-length batch of 1 is the plain LSTM), and Decoder.initialize_decoder_states'
    processed memory."""

    def __init__(self, model: torch.nn.Module, speakers: bool):
        super().__init__()
        self.model, self.speakers = model, speakers

    def forward(self, ids, speaker=None):
        m = self.model
        x = m.embedding(ids).transpose(1, 2)
        for conv in m.encoder.convolutions:
            x = F.relu(conv(x))  # its dropout is off in eval
        memory, _ = m.encoder.lstm(x.transpose(1, 2))
        if self.speakers:
            memory = memory + m.speaker_embedding(speaker).unsqueeze(1)
        return memory, m.decoder.attention_layer.memory_layer(memory)


class DecoderStep(torch.nn.Module):
    """One iteration of Decoder.infer: Prenet with the given masks in place of F.dropout's random ones, then
    Decoder.decode (no padding in one sentence: an all-False mask) -> frame, sigmoid(gate), next states."""

    def __init__(self, decoder: torch.nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, frame, memory, processed_memory, *states_and_masks):
        d = self.decoder
        states = dict(zip(STATES, states_and_masks[: len(STATES)]))
        x = frame
        for linear, mask in zip(d.prenet.layers, states_and_masks[len(STATES):]):
            x = F.relu(linear(x)) * mask
        states["attention_weights_cum"] = states["attention_weights_cum"].clone()  # decode adds to it in place
        pad = torch.zeros_like(states["attention_weights"], dtype=torch.bool)
        mel, gate, *new = d.decode(x, *(states[s] for s in STATES), memory, processed_memory, pad)
        return (mel.reshape(-1, d.n_mel_channels), torch.sigmoid(gate).reshape(-1), *new)


class Postnet(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, mel):
        return mel + self.model.postnet(mel)


def write_graphs(model: torch.nn.Module, speakers: bool, example_ids: list[int], path: Path, fmt: str, opset: int,
                 int8: bool) -> dict[str, Any]:
    """The three graphs of a (Speaker)Tacotron2 beside `path`, traced on one sentence's ids -> export.json's io
    (graphs, and the loop's settings under "autoregressive")."""
    d = model.decoder
    units = [layer.linear_layer.out_features for layer in d.prenet.layers]
    ids = torch.tensor([example_ids])
    enc_example = (ids,) + ((torch.tensor([0]),) if speakers else ())
    with torch.no_grad():
        memory, processed = Encoder(model, speakers)(*enc_example)
    tokens = memory.shape[1]
    sizes = {"attention_hidden": d.attention_rnn_dim, "attention_cell": d.attention_rnn_dim,
             "decoder_hidden": d.decoder_rnn_dim, "decoder_cell": d.decoder_rnn_dim,
             "attention_weights": tokens, "attention_weights_cum": tokens,
             "attention_context": memory.shape[2]}
    masks = [f"prenet_mask_{i}" for i in range(len(units))]
    step_example = (torch.zeros(1, d.n_mel_channels), memory, processed,
                    *(torch.zeros(1, sizes[s]) for s in STATES), *(torch.ones(1, u) for u in units))
    token_axes = {n: {1: "tokens"} for n in ("memory", "processed_memory", *PER_TOKEN,
                                             *(f"next_{s}" for s in PER_TOKEN))}
    graphs = write_autoregressive_graphs({
        "encoder": GraphSpec(Encoder(model, speakers), enc_example, ["ids"] + (["speaker"] if speakers else []),
                             ["memory", "processed_memory"],
                             {"ids": {1: "tokens"}, "memory": {1: "tokens"}, "processed_memory": {1: "tokens"}}),
        "decoder_step": GraphSpec(DecoderStep(d), step_example, ["frame", "memory", "processed_memory",
                                                                  *STATES, *masks],
                                  ["mel", "stop_prob", *(f"next_{s}" for s in STATES)], token_axes),
        "postnet": GraphSpec(Postnet(model), (torch.zeros(1, d.n_mel_channels, 40),), ["decoded"], ["mel"],
                             {"decoded": {2: "frames"}, "mel": {2: "frames"}}),
    }, path, fmt, opset, int8)
    states = {s: {"shape": [1, "tokens" if s in PER_TOKEN else sizes[s]], "fill": 0.0} for s in STATES}
    return {"acoustic": "autoregressive", "graphs": graphs,
            "inputs": {"ids": "ids", **({"speaker": "speaker"} if speakers else {})},
            "autoregressive": {
                "source": "speechbrain.lobes.models.Tacotron2.Decoder.infer",
                "n_mels": d.n_mel_channels, "threshold": float(d.gate_threshold), "compare": ">",
                "max_steps": int(d.max_decoder_steps), "max_length_ratio": None, "min_length_ratio": 0.0,
                "stop_frame": "dropped", "memory": ["memory", "processed_memory"], "states": states,
                "speaker_input": speakers,
                "prenet": {"rate": float(d.prenet.dropout), "units": units, "seed": PRENET_SEED}}}


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    if fmt != "onnx":  # before the model loads
        raise SystemExit("spx export: a SpeechBrain Tacotron2 run exports to --format onnx only (optionally --quantize "
                         "int8): torch.jit.trace of its encoder's LSTM fails (\"Couldn't find method: 'forward__0' on "
                         "class ...LSTM\"); the ESPnet Tacotron2 exports to TorchScript")
    spec, rd, _device, info, model, vocoder = load_for_synthesis(run_dir, "cpu")
    symbols, lowercase = info["symbols"], spec.tokenizer.lowercase
    d = model.decoder
    if d.n_frames_per_step != 1 or not d.early_stopping:
        raise SystemExit(f"spx export: SpeechBrain Tacotron2 with n_frames_per_step={d.n_frames_per_step}, "
                         f"early_stopping={d.early_stopping} is not exported (1 and True are)")
    speakers = {str(k): int(v) for k, v in (info["speakers"] or {}).items()}
    units = [layer.linear_layer.out_features for layer in d.prenet.layers]
    rate = float(d.prenet.dropout)

    def toolkit_ids(text: str) -> list[int]:
        return encode_text(text, symbols, lowercase)

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        return write_graphs(model, bool(speakers), toolkit_ids(EXAMPLE_TEXT), path, fmt, opset, int8)

    @torch.no_grad()
    def reference(text: str, speaker: str | None) -> np.ndarray:
        ids = torch.tensor([toolkit_ids(text)])
        args = (ids, torch.tensor([ids.size(1)]))
        if speakers:
            args += (torch.tensor([speakers[speaker or sorted(speakers)[0]]]),)
        with replay_prenet_dropout(rate) as drawn:
            out, mel_lengths, _ = model.infer(*args)
        if drawn["masks"] != len(units) * out.shape[2]:
            raise RuntimeError(f"the reference drew {drawn['masks']} prenet masks for {out.shape[2]} decoder steps")
        return out[0, :, : int(mel_lengths[0])].T.float().numpy()

    vocoder_json, arrays, write_vocoder = vocoder_parts(vocoder, info, fmt)
    exporter = TtsExporter(backend="speechbrain", route=ROUTE, write_graph=write_graph,
                           text=text_settings(symbols, lowercase), toolkit_ids=toolkit_ids, reference=reference,
                           vocoder=vocoder_json, vocoder_arrays=arrays, write_vocoder=write_vocoder, speakers=speakers)
    return export_tts_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
