"""Child step `decode`: restore the trained model with ESPnet's inference API (espnet2.bin.asr_inference.Speech2Text)
and decode the test sets through the one spx decoding/timing protocol (child.decode_and_time).

ctc_weight 1.0 and no decoder: CTC-only. Greedy = a batched CTC best path over Speech2Text's model
(encode -> ctc.argmax -> collapse repeats, drop blanks -> Speech2Text's own converter/tokenizer); beam =
Speech2Text's CTC prefix beam search, one utterance at a time (its beam search decodes batch 1).
"""
from __future__ import annotations

import json

from spx.adapters.common import child
from spx.adapters.espnet.steps.lazy_imports import defer_unused_imports


def load_transcriber(run_dir: str, device: str, dtype: str = "float32"):
    """The trained model as `transcribe(list of 16 kHz float arrays) -> texts` (also the TTS judge's entry point)."""
    return load_speech2text(run_dir, device, dtype)[1]


def load_speech2text(run_dir: str, device: str, dtype: str = "float32"):
    """(ESPnet's Speech2Text of the run, its transcribe(list of 16 kHz float arrays) -> texts): the exporters take
    both from one load (the model and the reference text path)."""
    spec, rd = child.load_run(run_dir)
    summary = json.loads((rd / "train_summary.json").read_text())
    model_file = summary["exported_model"]
    if not model_file:
        raise SystemExit(f"no trained ESPnet model in {rd / 'checkpoints'} (train_summary.json has no exported_model)")

    defer_unused_imports()
    if spec.model.family == "ssl_ctc":  # before espnet2 imports s3prl (the model's frontend)
        from spx.adapters.espnet.steps.s3prl_compat import apply

        apply()
    import torch
    from espnet2.bin.asr_inference import Speech2Text

    beam = spec.decoding.strategy == "beam"
    s2t = Speech2Text(asr_train_config=summary["config"], asr_model_file=model_file, device=device, dtype=dtype,
                      beam_size=spec.decoding.beam_size if beam else 1, ctc_weight=1.0, lm_weight=0.0, nbest=1)
    model = s2t.asr_model  # already in eval mode, on device/dtype
    blank = model.blank_id

    def detok(ids: list[int]) -> str:
        tokens = s2t.converter.ids2tokens(ids)
        return s2t.tokenizer.tokens2text(tokens) if s2t.tokenizer is not None else "".join(tokens)

    @torch.inference_mode()
    def greedy_batch(wavs):
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        speech = torch.zeros(len(wavs), int(lengths.max()), dtype=getattr(torch, dtype))
        for i, w in enumerate(wavs):
            speech[i, : len(w)] = torch.from_numpy(w)
        enc, enc_lens = model.encode(speech.to(device), lengths.to(device))
        best = model.ctc.argmax(enc).cpu()
        out = []
        for row, n in zip(best, enc_lens.cpu().tolist()):
            ids = torch.unique_consecutive(row[:n]).tolist()
            out.append(detok([i for i in ids if i != blank]))
        return out

    @torch.inference_mode()
    def beam_batch(wavs):
        return [s2t(w)[0][0] for w in wavs]  # nbest list of (text, tokens, ids, hyp): best text

    return s2t, (beam_batch if beam else greedy_batch)


def main(run_dir: str) -> None:
    spec, rd = child.load_run(run_dir)
    child.set_threads(spec)
    device = child.pick_device(spec)
    dtype = child.precision_dtype(spec, device)
    if device == "cpu" and dtype != "float32":
        raise SystemExit(f"training.precision {spec.training.precision}: decoding on CPU runs in float32 only")
    transcribe = load_transcriber(run_dir, device, dtype)
    speed = child.decode_and_time(rd, spec, transcribe, device, dtype)
    child.progress(phase="decode", done=True, utterances=speed["utterances"])


if __name__ == "__main__":
    child.main_guard(main)
