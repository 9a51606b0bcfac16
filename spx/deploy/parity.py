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
