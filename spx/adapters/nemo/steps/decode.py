"""Child step `decode`: restore the exported .nemo and decode the test sets with spx's one timing protocol.

The timed closure calls the NeMo model's own forward (preprocessor + encoder + CTC head) and its
configured CTC decoding (greedy_batch or beam_batch) on padded batches, as model.transcribe() does
internally, without its file/dataloader round trip.
"""
from __future__ import annotations

import json
import sys

from spx.adapters.common import child


def load_transcriber(run_dir: str, device: str, dtype_name: str = "float32"):
    """The restored .nemo as `transcribe(list of 16 kHz float arrays) -> texts` (also the TTS judge's entry point)."""
    import numpy as np
    import torch

    from nemo.collections.asr.models import ASRModel

    _, rd = child.load_run(run_dir)
    summary = json.loads((rd / "train_summary.json").read_text())
    model = ASRModel.restore_from(summary["exported_model"], map_location="cpu")
    model.preprocessor.featurizer.dither = 0.0
    model.preprocessor.featurizer.pad_to = 0
    model = model.to(device).eval()
    dtype = getattr(torch, dtype_name)
    autocast = dtype != torch.float32

    def transcribe_batch(batch: list[np.ndarray]) -> list[str]:
        lengths = torch.tensor([len(a) for a in batch], dtype=torch.long)
        signal = torch.zeros(len(batch), int(lengths.max()), dtype=torch.float32)
        for i, a in enumerate(batch):
            signal[i, : len(a)] = torch.from_numpy(a)
        with torch.inference_mode(), torch.autocast(device_type=device, dtype=dtype, enabled=autocast):
            log_probs, enc_len, _ = model.forward(input_signal=signal.to(device), input_signal_length=lengths.to(device))
            hyps = model.decoding.ctc_decoder_predictions_tensor(log_probs.float(), decoder_lengths=enc_len,
                                                                  return_hypotheses=False)
        if hyps and isinstance(hyps[0], list):  # n-best lists: take the best
            hyps = [h[0] for h in hyps]
        return [h.text if hasattr(h, "text") else str(h) for h in hyps]

    return transcribe_batch


def main(run_dir: str) -> None:
    spec, rd = child.load_run(run_dir)
    child.set_threads(spec)
    device = child.pick_device(spec)
    try:
        dtype_name = child.precision_dtype(spec, device)
    except RuntimeError as exc:
        print(f"spx nemo: error: {exc}", flush=True)
        sys.exit(2)
    transcribe_batch = load_transcriber(run_dir, device, dtype_name)
    speed = child.decode_and_time(rd, spec, transcribe_batch, device, dtype_name)
    print(f"spx: decoded {speed['utterances']} utterances, median {speed['median_decode_seconds']:.3f}s "
          f"for {speed['audio_seconds']:.1f}s of audio", flush=True)


if __name__ == "__main__":
    child.main_guard(main)
