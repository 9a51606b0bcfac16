"""Child step `export` (`spx export`) of the ESPnet tacotron2 family: the run's Tacotron2 (Text2Speech's model) as
three ONNX graphs (torch.onnx.export, dynamo=False) that spx.deploy.autoregressive loops as ESPnet's
Decoder.inference does (Text2Speech's threshold, minlenratio and maxlenratio; every decoded frame kept):

  encoder       ids [1, N] (+ speaker [1]) -> memory (<sos/eos> appended, Encoder + speaker id embedding) and the
                attention's pre-computed mlp_enc(memory)
  decoder_step  AttLoc (its cached encoder projection given back) + Prenet (its dropout masks as inputs) + the
                ZoneOut LSTM cells + feat_out / prob_out, reduction_factor frames per step
  postnet       decoded + Postnet(decoded), then GlobalMVN's inverse (Text2Speech's feat_gen_denorm)

text.json and vocoder.json as the fastspeech2 exporter writes them (steps.tts_export). The attention state is the
cumulative weights starting at zero: at the first step AttLoc takes the uniform 1/T it draws itself when given no
previous weights, after it the running sum (cumulate_att_w), exactly Decoder.inference's prev_att_w. The parity
check runs Text2Speech itself with the prenet's dropout replaying the engine's masks.

TorchScript (torch.jit.trace of the same three modules) works too.

`python -m spx.adapters.espnet.steps.tacotron2_export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8]`
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spx.adapters.common.autoregressive_export import (PRENET_SEED, GraphSpec, replay_prenet_dropout,
                                                       write_autoregressive_graphs)
from spx.adapters.common.export import TtsExporter, export_tts_run, main
from spx.adapters.espnet.steps.tts_export import load_tts_for_export, mvn_inverse
from spx.textclean import clean_transcript

ROUTE = ("torch.onnx.export (TorchScript exporter, dynamo=False) of ESPnet's Tacotron2 as encoder, decoder step "
         "(prenet dropout masks as inputs) and postnet + GlobalMVN inverse graphs, looped in numpy as "
         "Decoder.inference loops")
EXAMPLE_TEXT = "the export traces one sentence; every length stays dynamic"


def _modules(t2: Any, mvn: Any, speakers: bool):
    import torch
    import torch.nn.functional as F

    dec = t2.dec
    n_layers = len(dec.lstm)

    class Encoder(torch.nn.Module):
        """Tacotron2.inference up to the decoder on one sentence: <sos/eos> appended, Encoder.forward without packing
        (a full-length batch of 1), the speaker id's embedding added; and AttLoc's pre_compute_enc_h."""

        def __init__(self):
            super().__init__()
            self.t2 = t2

        def forward(self, ids, speaker=None):
            enc = self.t2.enc
            xs = enc.embed(F.pad(ids, [0, 1], "constant", self.t2.eos)).transpose(1, 2)
            for conv in enc.convs:
                xs = xs + conv(xs) if enc.use_residual else conv(xs)
            hs = xs.transpose(1, 2) if enc.blstm is None else enc.blstm(xs.transpose(1, 2))[0]
            if speaker is not None:
                hs = hs + self.t2.sid_emb(speaker.view(-1)).unsqueeze(1)
            return hs, self.t2.dec.att.mlp_enc(hs)

    class DecoderStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dec = dec

        def forward(self, frame, memory, processed_memory, att_prev, *states_and_masks):
            d, att = self.dec, self.dec.att
            z = list(states_and_masks[0: 2 * n_layers: 2])
            c = list(states_and_masks[1: 2 * n_layers: 2])
            masks = states_and_masks[2 * n_layers:]
            # AttLoc's cached per-utterance state, as its first call in Decoder.inference leaves it
            att.enc_h, att.h_length, att.pre_compute_enc_h = memory, memory.size(1), processed_memory
            att.mask = torch.zeros_like(att_prev, dtype=torch.bool)
            uniform = torch.ones_like(att_prev) / memory.size(1)
            att_in = torch.where(att_prev.sum() > 0, att_prev, uniform)
            att_c, att_w = att(memory, None, z[0], att_in)
            x = frame
            for layer, mask in zip(d.prenet.prenet, masks):
                x = layer(x) * mask
            z[0], c[0] = d.lstm[0](torch.cat([att_c, x], dim=1), (z[0], c[0]))
            for i in range(1, n_layers):
                z[i], c[i] = d.lstm[i](z[i - 1], (z[i], c[i]))
            zcs = torch.cat([z[-1], att_c], dim=1) if d.use_concate else z[-1]
            out = d.feat_out(zcs).view(1, d.odim, -1)  # [1, odim, r]
            prob = torch.sigmoid(d.prob_out(zcs))[0]
            next_att = att_prev + att_w if d.cumulate_att_w else att_w
            states = [s for pair in zip(z, c) for s in pair]
            return (out[0].transpose(0, 1), prob, next_att, *states)

    class Postnet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dec = dec
            if mvn is not None:
                self.register_buffer("mvn_scale", mvn[0].view(1, -1, 1))
                self.register_buffer("mvn_shift", mvn[1].view(1, -1, 1))
            else:
                self.mvn_scale = self.mvn_shift = None

        def forward(self, decoded):
            outs = decoded if self.dec.postnet is None else decoded + self.dec.postnet(decoded)
            if self.mvn_scale is not None:
                outs = outs * self.mvn_scale + self.mvn_shift
            return outs

    return Encoder().eval(), DecoderStep().eval(), Postnet().eval()


def write_graphs(t2: Any, mvn: Any, speakers: bool, conf: dict[str, Any], example_ids: list[int], path: Path,
                 fmt: str, opset: int, int8: bool) -> dict[str, Any]:
    """The three graphs of an ESPnet Tacotron2 (with the GlobalMVN inverse `mvn`, or None) beside `path`, traced on
    one sentence's ids -> export.json's io (graphs, and the loop's settings from Text2Speech's decode_conf)."""
    import torch

    dec = t2.dec
    n_layers = len(dec.lstm)
    units = [layer[0].out_features for layer in dec.prenet.prenet]
    encoder, step, postnet = _modules(t2, mvn, speakers)
    ids = torch.tensor([example_ids], dtype=torch.long)
    enc_example = (ids,) + ((torch.tensor([0]),) if speakers else ())
    with torch.no_grad():
        memory, processed = encoder(*enc_example)
    lstm_states = [f"{kind}_{i}" for i in range(n_layers) for kind in ("z", "c")]
    masks = [f"prenet_mask_{i}" for i in range(len(units))]
    step_example = (torch.zeros(1, dec.odim), memory, processed, torch.zeros(1, memory.shape[1]),
                    *(torch.zeros(1, dec.lstm[i // 2].hidden_size) for i in range(2 * n_layers)),
                    *(torch.ones(1, u) for u in units))
    token_axes = {n: {1: "tokens"} for n in ("memory", "processed_memory", "att_prev", "next_att_prev")}
    graphs = write_autoregressive_graphs({
        "encoder": GraphSpec(encoder, enc_example, ["ids"] + (["speaker"] if speakers else []),
                             ["memory", "processed_memory"],
                             {"ids": {1: "tokens"}, "memory": {1: "tokens"}, "processed_memory": {1: "tokens"}}),
        "decoder_step": GraphSpec(step, step_example, ["frame", "memory", "processed_memory", "att_prev",
                                                       *lstm_states, *masks],
                                  ["mel", "stop_prob", "next_att_prev", *(f"next_{s}" for s in lstm_states)],
                                  token_axes),
        "postnet": GraphSpec(postnet, (torch.zeros(1, dec.odim, 40),), ["decoded"], ["mel"],
                             {"decoded": {2: "frames"}, "mel": {2: "frames"}}),
    }, path, fmt, opset, int8)
    states = {"att_prev": {"shape": [1, "tokens"], "fill": 0.0},
              **{s: {"shape": [1, dec.lstm[int(s.split("_")[1])].hidden_size], "fill": 0.0} for s in lstm_states}}
    return {"acoustic": "autoregressive", "graphs": graphs,
            "inputs": {"ids": "ids", **({"speaker": "speaker"} if speakers else {})},
            "autoregressive": {
                "source": "espnet.nets.pytorch_backend.tacotron2.decoder.Decoder.inference via Text2Speech",
                "n_mels": int(dec.odim), "threshold": float(conf["threshold"]), "compare": ">=",
                "max_steps": None, "max_length_ratio": float(conf["maxlenratio"]),
                "min_length_ratio": float(conf["minlenratio"]), "reduction_factor": int(dec.reduction_factor),
                "stop_frame": "kept", "memory": ["memory", "processed_memory"], "states": states,
                "speaker_input": speakers,
                "prenet": {"rate": float(dec.prenet.dropout_rate), "units": units, "seed": PRENET_SEED}}}


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    out_dir = str(Path(out_dir).resolve())
    p = load_tts_for_export(run_dir)
    import torch

    tts, speakers, lowercase = p.tts, p.speakers, p.lowercase
    model = tts.model.eval()
    t2, conf = model.tts, dict(tts.decode_conf)
    if type(t2).__name__ != "Tacotron2":
        raise SystemExit(f"spx export: an ESPnet {type(t2).__name__} model is not a Tacotron2")
    dec = t2.dec
    unsupported = [name for name, on in (
        ("global style tokens", t2.use_gst), ("language ids", t2.langs), ("speaker embeddings", t2.spk_embed_dim),
        ("an attention other than AttLoc", type(dec.att).__name__ != "AttLoc"),
        ("an output activation", dec.output_activation_fn is not None), ("no prenet", dec.prenet is None),
        ("the attention constraint", conf.get("use_att_constraint")),
        ("teacher forcing", conf.get("use_teacher_forcing"))) if on]
    if unsupported:
        raise SystemExit(f"spx export: ESPnet Tacotron2 with {', '.join(unsupported)} is not exported yet")
    if bool(t2.spks) != bool(speakers):
        raise SystemExit(f"spx export: the model has {t2.spks or 'no'} speaker ids, the run "
                         f"{'names speakers' if speakers else 'names none'}")
    rate = float(dec.prenet.dropout_rate)
    units = [layer[0].out_features for layer in dec.prenet.prenet]

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        return write_graphs(t2, mvn_inverse(model), bool(speakers), conf, p.toolkit_ids(EXAMPLE_TEXT), path, fmt,
                            opset, int8)

    @torch.no_grad()
    def reference(sentence: str, speaker: str | None) -> np.ndarray:
        kwargs = {"sids": np.array(speakers[speaker or sorted(speakers)[0]])} if speakers else {}
        with replay_prenet_dropout(rate) as drawn:
            out = tts(clean_transcript(sentence, lowercase), **kwargs)
        mel = out["feat_gen_denorm"].float().numpy()
        if drawn["masks"] != len(units) * (len(mel) // int(dec.reduction_factor)):
            raise RuntimeError(f"the reference drew {drawn['masks']} prenet masks for {len(mel)} frames")
        return mel

    exporter = TtsExporter(backend="espnet", route=ROUTE, write_graph=write_graph, text=p.text,
                           toolkit_ids=p.toolkit_ids, reference=reference, vocoder=p.vocoder, vocoder_arrays=p.arrays,
                           speakers=speakers)
    return export_tts_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
