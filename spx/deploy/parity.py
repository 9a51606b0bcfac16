"""The export's parity check (numpy only): the exported model against the toolkit's own on test utterances.

fp32: log-probs within LOGPROB_TOLERANCE (max abs diff) and identical greedy hypotheses, else the export fails.
int8: the hypotheses may move; it fails only on a clear break: WER more than INT8_MAX_WER_LOSS above the toolkit's.
"""
from __future__ import annotations

from typing import Any

import numpy as np

LOGPROB_TOLERANCE = 2e-3      # fp32 graphs + numpy frontend vs the toolkit's torch path (measured: ~1e-4)
INT8_MAX_WER_LOSS = 0.10      # absolute WER (10 points) above the toolkit's own on the same utterances


def wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        return 0.0
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def check_parity(ids: list[str], refs: list[str], toolkit: list[tuple[np.ndarray, str]],
                 exported: list[tuple[np.ndarray, str]], quantized: bool,
                 feature_max_abs_diff: float | None = None) -> dict[str, Any]:
    diffs, mismatched, len_mismatch = [], [], []
    for uid, (t_lp, t_hyp), (e_lp, e_hyp) in zip(ids, toolkit, exported):
        if t_lp.shape != e_lp.shape:
            len_mismatch.append({"id": uid, "toolkit": list(t_lp.shape), "exported": list(e_lp.shape)})
            continue
        diffs.append(float(np.abs(t_lp - e_lp).max()))
        if t_hyp != e_hyp:
            mismatched.append({"id": uid, "toolkit": t_hyp, "exported": e_hyp})
    t_hyps = [h for _, h in toolkit]
    e_hyps = [h for _, h in exported]
    toolkit_wer, exported_wer = wer(refs, t_hyps), wer(refs, e_hyps)
    max_diff = max(diffs) if diffs else float("nan")
    agreement = sum(a == b for a, b in zip(t_hyps, e_hyps)) / max(len(t_hyps), 1)
    if quantized:
        passed = not len_mismatch and exported_wer - toolkit_wer <= INT8_MAX_WER_LOSS
        rule = f"int8: WER at most {INT8_MAX_WER_LOSS:.2f} above the toolkit's"
    else:
        passed = not len_mismatch and not mismatched and max_diff <= LOGPROB_TOLERANCE
        rule = f"fp32: identical greedy hypotheses and log-probs within {LOGPROB_TOLERANCE}"
    summary = (f"max |dlogp| {max_diff:.2e}, hypotheses agree {agreement:.1%}, WER toolkit {toolkit_wer:.4f} "
               f"exported {exported_wer:.4f}")
    if feature_max_abs_diff is not None:
        summary += f", features max |d| {feature_max_abs_diff:.2e}"
    return {"passed": passed, "rule": rule, "utterances": len(ids), "max_abs_logprob_diff": max_diff,
            "hypothesis_agreement": agreement, "toolkit_wer": toolkit_wer, "exported_wer": exported_wer,
            "wer_delta": exported_wer - toolkit_wer, "feature_max_abs_diff": feature_max_abs_diff,
            "mismatched": mismatched[:10], "length_mismatch": len_mismatch[:10], "summary": summary,
            "toolkit_hyps": dict(zip(ids, t_hyps))}  # batch 1, what a served request must get back (fp32)


LOGIT_TOLERANCE = 2e-3        # classification fp32: max abs diff of the graph's logits against the toolkit's
INT8_MAX_ACCURACY_LOSS = 0.10  # classification int8: accuracy at most 10 points below the toolkit's


def check_classifier_parity(ids: list[str], ref_labels: list[str], classes: list[str], toolkit: list[np.ndarray],
                            exported: list[np.ndarray], quantized: bool, scale: float = 1.0,
                            feature_max_abs_diff: float | None = None) -> dict[str, Any]:
    """The classification twin of check_parity, on logits (what the graph outputs) and top-1 labels.
    fp32: logits within LOGIT_TOLERANCE (after `scale`, what the softmax sees) and the same top-1 label on every
    utterance; int8: accuracy at most INT8_MAX_ACCURACY_LOSS below the toolkit's."""
    diffs, mismatched, shape_mismatch = [], [], []
    t_labels = [classes[int(np.argmax(t))] for t in toolkit]
    e_labels = [classes[int(np.argmax(e))] if e.shape == t.shape else None for t, e in zip(toolkit, exported)]
    for uid, t, e, tl, el in zip(ids, toolkit, exported, t_labels, e_labels):
        if t.shape != e.shape:
            shape_mismatch.append({"id": uid, "toolkit": list(t.shape), "exported": list(e.shape)})
            continue
        diffs.append(float(np.abs(scale * (t - e)).max()))
        if tl != el:
            mismatched.append({"id": uid, "toolkit": tl, "exported": el})

    def accuracy(labels):
        return sum(a == b for a, b in zip(labels, ref_labels)) / max(len(ref_labels), 1)

    toolkit_acc, exported_acc = accuracy(t_labels), accuracy(e_labels)
    max_diff = max(diffs) if diffs else float("nan")
    agreement = sum(a == b for a, b in zip(t_labels, e_labels)) / max(len(t_labels), 1)
    if quantized:
        passed = not shape_mismatch and toolkit_acc - exported_acc <= INT8_MAX_ACCURACY_LOSS
        rule = f"int8: accuracy at most {INT8_MAX_ACCURACY_LOSS:.2f} below the toolkit's"
    else:
        passed = not shape_mismatch and not mismatched and max_diff <= LOGIT_TOLERANCE
        rule = f"fp32: the same top-1 labels and logits within {LOGIT_TOLERANCE}"
    summary = (f"max |dlogit| {max_diff:.2e}, top-1 labels agree {agreement:.1%}, accuracy toolkit "
               f"{toolkit_acc:.4f} exported {exported_acc:.4f}")
    if feature_max_abs_diff is not None:
        summary += f", features max |d| {feature_max_abs_diff:.2e}"
    return {"passed": passed, "rule": rule, "utterances": len(ids), "max_abs_logit_diff": max_diff,
            "label_agreement": agreement, "toolkit_accuracy": toolkit_acc, "exported_accuracy": exported_acc,
            "accuracy_delta": exported_acc - toolkit_acc, "feature_max_abs_diff": feature_max_abs_diff,
            "mismatched": mismatched[:10], "shape_mismatch": shape_mismatch[:10], "summary": summary,
            "toolkit_labels": dict(zip(ids, t_labels))}  # batch 1, what a served request must get back (fp32)


MEL_TOLERANCE = 5e-3          # TTS fp32: max abs diff of the log-mel (natural-log units) against the toolkit's
INT8_MAX_FRAME_CHANGE = 0.10  # TTS int8: each sentence's frame count within 10% of the toolkit's
INT8_MAX_MEL_MAE = 0.5        # TTS int8: mean abs log-mel diff (natural-log units) over the frames both have


def check_tts_parity(ids: list[str], toolkit_ids: list[list[int]], exported_ids: list[list[int]],
                     toolkit: list[np.ndarray], exported: list[np.ndarray], quantized: bool) -> dict[str, Any]:
    """The TTS twin of check_parity, on the acoustic model's log-mel [frames, n_mels] (natural-log units) per test
    sentence. Both: text.json gives the toolkit's token ids. fp32: the same frame counts and log-mels within
    MEL_TOLERANCE; int8: frame counts within INT8_MAX_FRAME_CHANGE and mean |diff| <= INT8_MAX_MEL_MAE."""
    id_mismatch = [{"id": uid, "toolkit": t, "exported": e}
                   for uid, t, e in zip(ids, toolkit_ids, exported_ids) if list(t) != list(e)]
    frames_differ, maxima, maes = [], [], []
    for uid, t, e in zip(ids, toolkit, exported):
        if t.shape[1:] != e.shape[1:]:
            frames_differ.append({"id": uid, "toolkit": list(t.shape), "exported": list(e.shape)})
            continue
        if len(t) != len(e):
            frames_differ.append({"id": uid, "toolkit": len(t), "exported": len(e)})
        n = min(len(t), len(e))
        if n:
            d = np.abs(t[:n].astype(np.float64) - e[:n])
            maxima.append(float(d.max()))
            maes.append(float(d.mean()))
    max_diff = max(maxima) if maxima else float("nan")
    mae = float(np.mean(maes)) if maes else float("nan")
    worst_frames = max((abs(len(e) - len(t)) / max(len(t), 1) for t, e in zip(toolkit, exported)), default=0.0)
    if quantized:
        passed = (not id_mismatch and worst_frames <= INT8_MAX_FRAME_CHANGE and bool(maes)
                  and max(maes) <= INT8_MAX_MEL_MAE)
        rule = (f"int8: the toolkit's token ids, frame counts within {INT8_MAX_FRAME_CHANGE:.0%}, mean |dmel| <= "
                f"{INT8_MAX_MEL_MAE} per sentence")
    else:
        passed = not id_mismatch and not frames_differ and bool(maxima) and max_diff <= MEL_TOLERANCE
        rule = f"fp32: the toolkit's token ids, the same frame counts, log-mel within {MEL_TOLERANCE}"
    summary = (f"max |dmel| {max_diff:.2e}, mean |dmel| {mae:.2e}, frame counts differ on {len(frames_differ)} of "
               f"{len(ids)} (worst {worst_frames:.1%}), token ids differ on {len(id_mismatch)}")
    return {"passed": passed, "rule": rule, "utterances": len(ids), "max_abs_mel_diff": max_diff,
            "mean_abs_mel_diff": mae, "worst_frame_change": worst_frames, "frames_differ": frames_differ[:10],
            "id_mismatch": id_mismatch[:10], "summary": summary,
            "toolkit_frames": {uid: len(t) for uid, t in zip(ids, toolkit)}}


SEQ2SEQ_LOGIT_TOLERANCE = 2e-3  # seq2seq fp32: max abs diff of the first decoder step's logits against the toolkit's


def check_seq2seq_parity(ids: list[str], refs: list[str], toolkit: list[tuple[np.ndarray, str]],
                         exported: list[tuple[np.ndarray, str]], quantized: bool,
                         feature_max_abs_diff: float | None = None) -> dict[str, Any]:
    """The encoder-decoder twin of check_parity: (the first decoder step's logits [vocab] after the prompt, the
    hypothesis of the whole search) per utterance, compared by check_parity's rules with the logits in place of the
    CTC log-probs (fp32: identical hypotheses and logits within SEQ2SEQ_LOGIT_TOLERANCE; int8: WER at most
    INT8_MAX_WER_LOSS above the toolkit's)."""
    out = check_parity(ids, refs, toolkit, exported, quantized, feature_max_abs_diff)
    diffs = [float(np.abs(t - e).max()) for (t, _), (e, _) in zip(toolkit, exported) if t.shape == e.shape]
    out["max_abs_logit_diff"] = max(diffs) if diffs else float("nan")
    del out["max_abs_logprob_diff"]
    if not quantized:
        out["passed"] = (not out["length_mismatch"] and not out["mismatched"]
                         and out["max_abs_logit_diff"] <= SEQ2SEQ_LOGIT_TOLERANCE)
        out["rule"] = (f"fp32: identical hypotheses (the same search) and the first decoder step's logits within "
                       f"{SEQ2SEQ_LOGIT_TOLERANCE}")
    out["summary"] = out["summary"].replace("max |dlogp|", "first-step max |dlogit|")
    return out
