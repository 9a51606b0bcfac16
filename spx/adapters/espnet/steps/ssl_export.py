"""Child step `export` (`spx export`) of ESPnet ssl_ctc: a finished run's ESPnetASRModel (its `frontend: s3prl` =
s3prl's hf_wav2vec2_custom / hf_hubert_custom expert around Transformers' Wav2Vec2Model / HubertModel + s3prl's
Featurizer, then ESPnet's normalize / preencoder / encoder and the CTC head; LoRA runs as ESPnet loads them, whose
loralib layers merge their adapters into the weights in eval mode) -> ONNX (torch.onnx.export, dynamo=False) or
TorchScript (torch.jit.trace) from the waveform: normalised waveform [B, samples] + sample counts [B] -> CTC log-probs
[B, frames, vocab] + frame counts [B].

The graph runs the model's own modules (S3prlFrontend.forward, its Featurizer, the preencoder, the encoder, the CTC
head) with two of their functions swapped while it is traced (unittest.mock.patch.object):
  S3PRLUpstream.forward   cuts the padded batch into a Python list, and its expert runs Transformers' feature
      extractor in numpy on each utterance: the tracer would freeze all of it. Swapped for the same computation on
      the padded batch: the numpy frontend normalises each utterance over its own samples as the feature extractor
      does (spx.deploy.features.WaveformFrontend); the graph builds the attention mask from the sample counts, runs
      the Transformers model, and brings each layer to s3prl's ceil(samples / 320) frames (the last frame repeated,
      as S3PRLUpstream._match_length) with s3prl's frame counts.
  make_pad_mask of the encoder's module: sized by a tensor (spx.adapters.espnet.steps.export.traceable_pad_masks).
The reference is the toolkit's own model.encode on one waveform (the real s3prl path) and spx's decode step's text.
s3prl pads utterances under 50 ms (800 samples) with zeros before its expert; the graph does not (no run decodes
audio that short: the feature encoder's receptive field is 400 samples).

`python -m spx.adapters.espnet.steps.ssl_export RUN_DIR OUT_DIR --format onnx|torchscript [--quantize int8]`
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock  # patch.object: swap a toolkit function while the graph is traced, restore after

from spx.adapters.common import child
from spx.adapters.common.export import (Exporter, export_run, main, sample_mask, trace_waveform_graph,
                                       waveform_frontend)
from spx.adapters.espnet.steps.decode import load_speech2text
from spx.adapters.espnet.steps.export import _tokens, asr_reference, encoder_ctc, traceable_pad_masks

OUTPUTS = {"log_probs": ["batch", "out_frames", "vocab"], "out_lengths": ["batch"]}


def traceable_upstream():
    """S3PRLUpstream.forward on the padded batch of normalised waveforms (what the numpy frontend gives), with every
    shape taken from tensors so that the graph keeps batch and samples dynamic."""
    import torch
    import torch.nn.functional as F
    from s3prl.nn.upstream import S3PRLUpstream

    def forward(self, wavs, wavs_len):
        model = self.upstream.model  # the expert's Transformers model (Wav2Vec2Model / HubertModel)
        if wavs.dim() == 3:
            wavs = wavs.squeeze(-1)
        hidden = model(wavs, attention_mask=sample_mask(wavs, wavs_len), output_hidden_states=True).hidden_states
        max_len = wavs_len.max()
        last = model._get_feat_extract_output_lengths(max_len) - 1  # the model's last frame of the longest utterance
        all_hs, all_lens = [], []
        for h, stride in zip(hidden, self.downsample_rates):
            # s3prl: len(range(0, max_len, stride)) frames, missing ones copies of the last, extra ones cut
            frames = torch.arange((max_len - 1) // stride + 1, device=h.device)
            h = h.index_select(1, torch.minimum(frames, last))
            if self.normalize:
                h = F.layer_norm(h, h.shape[-1:])
            all_hs.append(h)
            all_lens.append(torch.div(wavs_len - 1, stride, rounding_mode="floor") + 1)
        return all_hs, all_lens

    return mock.patch.object(S3PRLUpstream, "forward", forward)


def export(run_dir: str, out_dir: str, fmt: str, quantize: str | None, opset: int = 17,
           parity_utterances: int = 0) -> dict[str, Any]:
    out_dir = str(Path(out_dir).resolve())
    spec, rd = child.load_run(run_dir)
    os.chdir(rd.path)  # as the conformer exporter: the ESPnet config may name files relative to the run dir
    s2t, transcribe = load_speech2text(run_dir, "cpu")  # applies the s3prl shims before espnet2 imports s3prl
    model = s2t.asr_model.eval()
    fe = model.frontend
    expert = getattr(getattr(fe, "upstream", None), "upstream", None)
    if type(fe).__name__ != "S3prlFrontend" or not hasattr(expert, "extracter") or not hasattr(expert, "model"):
        raise SystemExit(f"spx export: the ESPnet ssl_ctc frontend {type(fe).__name__} is not s3prl's hf_*_custom "
                         "expert (a Transformers model behind Wav2Vec2FeatureExtractor), the only one spx exports")
    frontend = waveform_frontend(expert.extracter)
    frontend.settings.update(attention_mask=True,  # s3prl's expert always asks the extractor for the mask
                             toolkit=f"s3prl {type(expert).__module__} (Wav2Vec2FeatureExtractor); the Transformers "
                             "model, s3prl's frame count convention and Featurizer, ESPnet's encoder and CTC head are "
                             "in the graph")

    def write_graph(path: Path, fmt: str, opset: int, int8: bool) -> dict[str, Any]:
        with traceable_upstream(), traceable_pad_masks(model.encoder):
            io = trace_waveform_graph(encoder_ctc(model, with_frontend=True), path, fmt, opset, int8, OUTPUTS)
        return {**io, "outputs": {"log_probs": "log_probs", "lengths": "out_lengths"}}

    exporter = Exporter(backend="espnet", route="torch.onnx.export (TorchScript exporter, dynamo=False) of "
                        f"ESPnetASRModel.encode from the waveform ({type(expert.model).__name__} through s3prl's "
                        "S3PRLUpstream and Featurizer, preencoder, encoder) + CTC log-softmax, output lengths",
                        write_graph=write_graph, frontend=frontend, tokens=_tokens(s2t),
                        reference=asr_reference(model, transcribe))
    return export_run(run_dir, out_dir, fmt, quantize, opset, exporter, parity_utterances=parity_utterances)


if __name__ == "__main__":
    main(export)
