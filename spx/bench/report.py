"""Render results.json into report.md, report.html, report.tex, results.csv (and results.json itself).

Every renderer reads only the results dict, so `spx bench --from results.json` reproduces the report."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from spx.bench.results import TTS_METRICS, TTS_RATES
from spx.registry import REPORTED_DISTRIBUTIONS
from spx.yamlio import atomic_write_text

# TTS columns come after the ASR ones (empty on ASR rows and the other way round): existing readers keep working.
TTS_CSV_COLUMNS = (["task", "vocoder"] + [f"{k}{suffix}" for k in TTS_METRICS for suffix in ("", "_ci_low", "_ci_high")]
                   + [f"judge_{k}{suffix}" for k in TTS_RATES for suffix in ("", "_ci_low", "_ci_high")]
                   + ["judge", "synthesis_rtf"])
# classification columns come after those, for the same reason; last `unsupported`: why the backend refused the
# recipe (state unsupported: the cell did not run, and is no failure)
CLASSIFICATION_CSV_COLUMNS = ["accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1", "classes",
                              "unknown_predictions"]
CSV_COLUMNS = ["recipe", "backend", "state", "wer", "wer_ci_low", "wer_ci_high", "cer", "substitutions", "deletions",
               "insertions", "words", "utterances", "rtf", "rtfx", "rtfx_min", "rtfx_max", "decode_seconds_median",
               "audio_seconds", "device", "dtype", "batch_size", "threads", "warmup_batches", "repeats",
               "train_wall_s", "epochs", "s_per_epoch", "peak_memory_mb", "params", "seed", "normalizer", "run_dir",
               "error", "log"] + TTS_CSV_COLUMNS + CLASSIFICATION_CSV_COLUMNS + ["unsupported", "trainable_params",
                                                                                  "adapter_params"]
COMPARISON_CSV_COLUMNS = ["recipe", "metric", "a", "b", "value_a", "value_b", "diff", "ci_low", "ci_high", "p_value",
                          "utterances", "samples", "higher_is_better", "better"]
TEX_TTS_KEYS = ("dnsmos_ovrl", "distillmos", "utmos", "wer", "mcd", "speaker_similarity")  # what fits a paper column
GALLERY_MAX_SECONDS = 20.0  # longer clips are embedded cut (and say so): report.html stays small


def pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def num(x: Any, digits: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}"


def params_str(p: int | None) -> str:
    if not p:
        return "—"
    return f"{p / 1e6:.2f}M" if p >= 1e5 else f"{p / 1e3:.1f}k"


def trainable_str(r: dict[str, Any]) -> str:
    """Trainable parameters of a cell, with the LoRA / adapter share of a parameter-efficient fine-tune."""
    t = r.get("trainable_params")
    if t is None:
        return "—"
    return params_str(t) + (f" ({params_str(r['adapter_params'])} adapters)" if r.get("adapter_params") else "")


def p_str(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def flat_row(r: dict[str, Any]) -> dict[str, Any]:
    s = r.get("speed") or {}
    ci = r.get("wer_ci") or [None, None]
    out = {k: r.get(k) for k in CSV_COLUMNS}
    out.update(wer_ci_low=ci[0], wer_ci_high=ci[1], rtf=s.get("rtf"), rtfx=s.get("rtfx"), rtfx_min=s.get("rtfx_min"),
               rtfx_max=s.get("rtfx_max"), decode_seconds_median=s.get("median_decode_seconds"),
               audio_seconds=s.get("audio_seconds"), **{k: s.get(k) for k in ("device", "dtype", "batch_size", "threads",
                                                                             "warmup_batches", "repeats")})
    for key, m in (r.get("tts") or {}).items():
        col = f"judge_{key}" if key in TTS_RATES else key
        lo, hi = m.get("ci") or (None, None)
        out.update({col: m["value"], f"{col}_ci_low": lo, f"{col}_ci_high": hi})
    if r.get("judge"):
        out["judge"] = judge_str(r["judge"])
    if r.get("accuracy_ci"):
        out.update(accuracy_ci_low=r["accuracy_ci"][0], accuracy_ci_high=r["accuracy_ci"][1])
    return out


# ---------------------------------------------------------------- row kinds
def failed_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in res["rows"] if "error" in r]


def done_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells that ran to the end (neither failed nor unsupported)."""
    return [r for r in res["rows"] if "error" not in r and "unsupported" not in r]


def unsupported_rows(res: dict[str, Any], task: str | None = None) -> list[dict[str, Any]]:
    """The cells whose backend refused the recipe (state unsupported, `unsupported`: the adapter's reason), of one
    task (asr: also a cell whose spec names no task) or of all."""
    return [r for r in res["rows"] if "unsupported" in r and (task is None or (r.get("task") or "asr") == task)]


def unsupported_notes(rows: list[dict[str, Any]]) -> list[str]:
    return [f"{r['recipe']}-{r['backend']}: unsupported, not run (not a failure): {r['unsupported']}" for r in rows]


# ---------------------------------------------------------------- classification helpers
def classification_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in done_rows(res) if r.get("task") == "classification"]


def accuracy_cell(r: dict[str, Any]) -> str:
    ci = r.get("accuracy_ci")
    return f"[{pct(ci[0])}, {pct(ci[1])}]" if ci else "—"


def classification_table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Recipe, backend, accuracy %, its CI, macro-F1 %, classes, rows, RTFx, train s: report.md, .html and .tex."""
    out = []
    for r in rows:
        s = r.get("speed") or {}
        out.append([r["recipe"], r["backend"], pct(r.get("accuracy")), accuracy_cell(r), pct(r.get("macro_f1")),
                    str(r.get("classes", "—")), str(r.get("scored_utterances", "—")), f"{s['rtfx']:.1f}" if s else "—",
                    num(r.get("train_wall_s"), 0)])
    return out


CLASSIFICATION_HEAD = ["Recipe", "Backend", "Accuracy %", "95% CI", "Macro-F1 %", "Classes", "Utts", "RTFx", "Train s"]
CLASSIFICATION_NOTE = ("Accuracy over the test rows [95% bootstrap CI]; macro-F1 = unweighted mean of the per-class F1; "
                       "a predicted label outside the test set's labels is an error. RTFx = audio seconds / median "
                       "decode seconds; train s = training wall time.")


def per_class_tables(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per recipe: {backends, labels, rows: [[label, support, (precision, recall, f1) per backend...]]}."""
    out: dict[str, dict[str, Any]] = {}
    for recipe in sorted({r["recipe"] for r in rows}):
        cells = sorted((r for r in rows if r["recipe"] == recipe), key=lambda r: r["backend"])
        labels = sorted({lab for r in cells for lab in (r.get("per_class") or {})})
        table = []
        for lab in labels:
            stats = [(r.get("per_class") or {}).get(lab) for r in cells]
            support = next((c["support"] for c in stats if c), 0)
            table.append([lab, support] + [[pct(c[k]) if c else "—" for k in ("precision", "recall", "f1")] for c in stats])
        out[recipe] = {"backends": [r["backend"] for r in cells], "rows": table}
    return out


def accuracy_diff(x: float) -> str:
    return f"{100 * x:+.1f}"


# ---------------------------------------------------------------- TTS helpers
def tts_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in done_rows(res) if r.get("task") == "tts"]


def tts_label(key: str) -> str:
    return TTS_RATES[key][2] if key in TTS_RATES else TTS_METRICS[key][0]


def tts_value(key: str, v: float | None) -> str:
    """A TTS score as the tables print it: rates in %, F0 RMSE in Hz with 1 decimal, similarities with 3."""
    if v is None:
        return "—"
    if key in TTS_RATES:
        return pct(v)
    digits = {"f0_rmse": 1, "speaker_similarity": 3, "vde": 3}.get(key, 2)
    return f"{v:.{digits}f}"


def tts_cell(row: dict[str, Any], key: str, with_ci: bool = True) -> str:
    m = (row.get("tts") or {}).get(key)
    if not m:
        return "—"
    ci = m.get("ci")
    return tts_value(key, m["value"]) + (f" [{tts_value(key, ci[0])}, {tts_value(key, ci[1])}]" if with_ci and ci else "")


def tts_columns(rows: list[dict[str, Any]], keys: tuple[str, ...] | None = None) -> list[str]:
    """The TTS scores at least one row has, in the report's order (MOS proxies, judge WER/CER, reference-based)."""
    order = [k for k in TTS_METRICS if k not in ("mcd", "f0_rmse", "vde", "speaker_similarity")] + list(TTS_RATES) + \
            ["mcd", "f0_rmse", "vde", "speaker_similarity"]
    return [k for k in order if (keys is None or k in keys) and any(k in (r.get("tts") or {}) for r in rows)]


def tts_diff(c: dict[str, Any], x: float) -> str:
    """A difference of two TTS scores: points of % for rates, the metric's own unit otherwise."""
    return f"{100 * x:+.1f}" if c["metric"] in TTS_RATES else f"{x:+.{3 if c['metric'] == 'speaker_similarity' else 2}f}"


def judge_str(judge: Any) -> str:
    if not judge:
        return "—"
    if isinstance(judge, dict):
        if judge.get("kind") == "spx-run":
            return f"spx run {judge.get('run_dir')} ({judge.get('backend')})"
        how = [f"{judge.get('kind')} {judge.get('faster_whisper') or ''}".strip()]
        how += [f"beam {judge['beam_size']}"] if judge.get("beam_size") is not None else []
        how += [str(judge["device"])] if judge.get("device") else []
        return f"{judge.get('model') or judge.get('path')} via {', '.join(how)}"
    return str(judge)


def tts_notes(res: dict[str, Any]) -> list[str]:
    """What a reader must know to compare the TTS rows: the judge, metrics that could not run, mixed vocoders."""
    rows = tts_rows(res)
    notes = []
    judges = sorted({judge_str(r.get("judge")) for r in rows if r.get("judge")})
    if judges:
        notes.append("Intelligibility judge: " + "; ".join(judges) + f" (text normalizer "
                     f"{', '.join(sorted({str(r.get('judge_normalizer')) for r in rows}))}).")
    for recipe in sorted({r["recipe"] for r in rows}):
        vocoders = {r["backend"]: r.get("vocoder") or "unknown" for r in rows if r["recipe"] == recipe}
        if len(set(vocoders.values())) > 1:
            notes.append(f"{recipe}: the backends use different vocoders ("
                         + ", ".join(f"{b}: {v}" for b, v in sorted(vocoders.items()))
                         + "); the vocoder dominates the MOS proxies, so these rows compare systems, not acoustic models.")
    for r in rows:
        for metric, why in sorted((r.get("unavailable") or {}).items()):
            notes.append(f"{r['recipe']}-{r['backend']}: {metric}: {why}.")  # metrics.json `unavailable`
    return notes


def audio_source(path: str | None) -> dict[str, str]:
    """{"uri": a data: URI of the clip (16-bit FLAC), "note": ...} so report.html carries its own audio, or
    {"missing": why} when the file is not here (e.g. re-rendering a results.json on another machine)."""
    if not path:
        return {"missing": "no audio path recorded"}
    import base64

    import numpy as np
    import soundfile as sf

    if not Path(path).is_file():
        return {"missing": f"missing: {path}"}
    try:
        info = sf.info(path)
        frames = min(info.frames, int(GALLERY_MAX_SECONDS * info.samplerate))
        wav, sr = sf.read(path, frames=frames, dtype="float32")
        buf = io.BytesIO()
        sf.write(buf, np.clip(wav, -1.0, 1.0), sr, format="FLAC", subtype="PCM_16")
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        return {"missing": f"unreadable: {path} ({exc})"}
    note = f"first {GALLERY_MAX_SECONDS:.0f} s of {info.duration:.1f} s" if frames < info.frames else ""
    return {"uri": "data:audio/flac;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), "note": note}


# ---------------------------------------------------------------- markdown
def render_md(res: dict[str, Any]) -> str:
    rows = res["rows"]
    ok = [r for r in rows if r.get("wer") is not None]
    done = done_rows(res)
    tts = tts_rows(res)
    asr_unsupported = unsupported_rows(res, "asr")
    L = ["# spx bench report", "", f"Generated {res['generated']}. Normalizer: "
         f"`{res['scoring']['normalizer']['name']}` ({res['scoring']['normalizer']['implementation']} "
         f"{res['scoring']['normalizer'].get('version') or ''}). WER/CER are corpus level; intervals are 95% paired "
         f"bootstrap over utterances.", ""]
    cls = classification_rows(res)
    tts_unsupported, cls_unsupported = unsupported_rows(res, "tts"), unsupported_rows(res, "classification")
    if ok or asr_unsupported or not (tts or cls or tts_unsupported or cls_unsupported):
        L += ["## Accuracy", "", "| Recipe | Backend | WER % | 95% CI | CER % | Sub | Del | Ins | Words | Utts |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in ok:
            ci = r.get("wer_ci")
            L.append(f"| {r['recipe']} | {r['backend']} | {pct(r['wer'])} | "
                     f"{f'[{pct(ci[0])}, {pct(ci[1])}]' if ci else '—'} | {pct(r['cer'])} | {r['substitutions']} | "
                     f"{r['deletions']} | {r['insertions']} | {r['words']} | {r['scored_utterances']} |")
        L += md_unsupported(asr_unsupported, 7)
        L.append("")
    if tts or tts_unsupported:
        L += md_tts(res, tts, tts_unsupported)
    if cls or cls_unsupported:
        L += md_classification(res, cls, cls_unsupported)
    L += md_variants(rows)
    L += ["## Speed", "", "| Recipe | Backend | RTFx (median) | RTFx range | RTF | Decode s (median) | Audio s | "
          "Device | dtype | Batch | Threads | Warmup | Repeats |", "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in done:
        s = r.get("speed")
        if not s:
            L.append(f"| {r['recipe']} | {r['backend']} | — | — | — | — | — | {r.get('speed_error', 'no speed.json')} |||||| ")
            continue
        L.append(f"| {r['recipe']} | {r['backend']} | {s['rtfx']:.1f} | {s['rtfx_min']:.1f}–{s['rtfx_max']:.1f} | "
                 f"{s['rtf']:.4f} | {s['median_decode_seconds']:.2f} | {s['audio_seconds']:.1f} | {s.get('device')} | "
                 f"{s.get('dtype')} | {s.get('batch_size')} | {s.get('threads')} | {s.get('warmup_batches')} | {s.get('repeats')} |")
    clock = sorted({(r.get("speed") or {}).get("clock") for r in done if r.get("speed")} - {None})
    if clock:
        L += ["", "Clock: " + "; ".join(clock) + "."]
    if tts:
        L += ["", "TTS cells: the clock covers synthesis (text → waveform) and audio seconds are the generated audio."]
    L += ["", "## Training cost", "", "| Recipe | Backend | Wall s | Epochs | s/epoch | Peak memory MB | Params | "
          "Trainable |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in done:
        L.append(f"| {r['recipe']} | {r['backend']} | {num(r.get('train_wall_s'))} | {num(r.get('epochs'))} | "
                 f"{num(r.get('s_per_epoch'))} | {num(r.get('peak_memory_mb'), 0)} | {params_str(r.get('params'))} | "
                 f"{trainable_str(r)} |")
    if res["comparisons"]:
        L += ["", "## Pairwise WER differences (paired bootstrap)", "",
              "| Recipe | A | B | WER A % | WER B % | A − B (points) | 95% CI | p | Utts |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for c in res["comparisons"]:
            L.append(f"| {c['recipe']} | {c['a']} | {c['b']} | {pct(c['wer_a'])} | {pct(c['wer_b'])} | "
                     f"{100 * c['diff']:+.1f} | [{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}] | {p_str(c['p_value'])} | "
                     f"{c['utterances']} |")
    if res.get("tts_comparisons"):
        L += ["", "## Pairwise TTS differences (paired bootstrap)", "",
              "A − B on the sentences both backends synthesized (rates in points of %); *better* names the backend "
              "whose 95% interval of the difference excludes 0 (— when it does not).", "",
              "| Recipe | Metric | A | B | A | B | A − B | 95% CI | p | Better | Utts |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
        for c in res["tts_comparisons"]:
            L.append(f"| {c['recipe']} | {tts_label(c['metric'])} | {c['a']} | {c['b']} | {tts_value(c['metric'], c['value_a'])} | "
                     f"{tts_value(c['metric'], c['value_b'])} | {tts_diff(c, c['diff'])} | "
                     f"[{tts_diff(c, c['ci'][0])}, {tts_diff(c, c['ci'][1])}] | {p_str(c['p_value'])} | "
                     f"{c['better'] or '—'} | {c['utterances']} |")
    other = [r for r in done if r.get("metrics")]
    if other:
        L += ["", "## Other metrics (non-ASR cells, from each cell's metrics.json)", ""]
        for r in other:
            L.append(f"- {r['recipe']} / {r['backend']} ({r.get('task')}): " +
                     ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["metrics"].items()))
    failed = failed_rows(res)
    if failed:
        L += ["", "## Failures", "", "| Recipe | Backend | Task | State | Error | Log |", "|---|---|---|---|---|---|"]
        for r in failed:
            err = (r.get("error") or "").replace("|", "\\|").replace("\n", " ")
            L.append(f"| {r['recipe']} | {r['backend']} | {r.get('task') or '—'} | {r['state']} | {err} | "
                     f"`{r.get('log') or r['run_dir']}` |")
    for recipe, dis in res["disagreements"].items():
        if not dis:
            continue
        L += ["", f"## Where backends disagree ({recipe})", "",
              "Utterances whose normalized hypotheses differ most (max pairwise word edit distance). Alignment "
              "against the reference: `[ref→hyp]` substitution, `[-ref]` deletion, `[+hyp]` insertion.", ""]
        for d in dis:
            L += [f"**{d['utt']}** (hypotheses differ by up to {d['spread_words']} words)", "",
                  f"- REF: {d['ref']}"]
            for b, h in d["hyps"].items():
                L.append(f"- {b} ({h['errors']} err): {alignment_text(h['alignment'])}")
            L.append("")
    L += ["", "## Reproducibility", ""] + [f"- {k}: {v}" for k, v in repro_lines(res)]
    return "\n".join(L) + "\n"


def variant_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell x variant of `spx bench --variants` (spx.bench.variants), torch first."""
    out = []
    for r in rows:
        v = r.get("variants")
        if not v:
            continue
        metric = v["metric"]
        base = v["variants"].get("torch") or {}
        for name, x in v["variants"].items():
            row = {"recipe": r["recipe"], "backend": r["backend"], "variant": name, "metric": metric,
                   "error": x.get("error")}
            if not x.get("error"):
                row.update(value=x.get(metric), rtfx=x.get("rtfx"), model_mb=(x.get("model_bytes") or 0) / 1e6 or None,
                           speedup=x["rtfx"] / base["rtfx"] if base.get("rtfx") and x.get("rtfx") else None,
                           delta=(x[metric] - base[metric]) if x.get(metric) is not None
                           and base.get(metric) is not None else None, parity=x.get("parity"),
                           mos=x.get("dnsmos_ovrl"))
            out.append(row)
    return out


def md_variants(rows: list[dict[str, Any]]) -> list[str]:
    vr = variant_rows(rows)
    if not vr:
        return []
    mos = any(v.get("mos") is not None for v in vr)  # TTS variants: how they sound, beside the judge's CER
    L = ["## Deployment variants", "", "`spx bench --variants`: the cell's toolkit model (torch) and its exports "
         "(`spx export`, parity-checked), each decoding the test set on its engine with the cell's batch size and "
         "threads (TTS: speaking the test sentences, vocoder included, CER by the cell's judge). Δ is against torch "
         "(points).", "",
         "| Recipe | Backend | Variant | Metric | Value % | Δ | RTFx | × torch | Model MB |" + (" DNSMOS |" if mos else ""),
         "|---|---|---|---|---:|---:|---:|---:|---:|" + ("---:|" if mos else "")]
    for v in vr:
        if v["error"]:
            first = v["error"].splitlines()[0].replace("|", "/")
            L.append(f"| {v['recipe']} | {v['backend']} | {v['variant']} | {v['metric']} | failed: {first} ||||| "
                     + ("|" if mos else ""))
            continue
        delta = f"{100 * v['delta']:+.1f}" if v.get("delta") is not None else "—"
        name = v['metric'].upper() if v['metric'] in ("wer", "cer") else v['metric']
        L.append(f"| {v['recipe']} | {v['backend']} | {v['variant']} | {name} | "
                 f"{pct(v['value'])} | {delta} | {num(v['rtfx'])} | {num(v['speedup'], 2)} | {num(v['model_mb'], 2)} |"
                 + (f" {num(v.get('mos'), 2)} |" if mos else ""))
    return L + [""]


def md_unsupported(rows: list[dict[str, Any]], empty_cells: int) -> list[str]:
    """Table rows of a task section for its unsupported cells ("unsupported" and dashes), then the reasons."""
    if not rows:
        return []
    L = [f"| {r['recipe']} | {r['backend']} | unsupported |" + " — |" * empty_cells for r in rows]
    return L + [""] + [f"- {n}" for n in unsupported_notes(rows)]


def md_tts(res: dict[str, Any], tts: list[dict[str, Any]], unsupported: list[dict[str, Any]] = ()) -> list[str]:
    """The TTS quality table of report.md (one row per recipe x backend, vocoder disclosed) and its notes."""
    cols = tts_columns(tts)
    L = ["## TTS quality", "",
         "Mean over the test sentences with a 95% bootstrap CI; MOS proxies on a 1–5 scale (higher is better), judge "
         "WER/CER of an ASR model on the synthesized audio, MCD / F0 RMSE against the reference recording (lower is "
         "better). Synthesis RTF = synthesis seconds / generated audio seconds.", "",
         "| Recipe | Backend | Vocoder | " + " | ".join(tts_label(k) + (" %" if k in TTS_RATES else "") for k in cols)
         + " | Synthesis RTF | Utts |", "|---|---|---|" + "---:|" * (len(cols) + 2)]
    for r in tts:
        L.append(f"| {r['recipe']} | {r['backend']} | {r.get('vocoder') or 'unknown'} | "
                 + " | ".join(tts_cell(r, k) for k in cols)
                 + f" | {num(r.get('synthesis_rtf'), 3)} | {r.get('utterances')} |")
    L += md_unsupported(list(unsupported), len(cols) + 2)
    L.append("")
    L += [f"- {n}" for n in tts_notes(res)]
    return L + [""]


def md_classification(res: dict[str, Any], cls: list[dict[str, Any]],
                      unsupported: list[dict[str, Any]] = ()) -> list[str]:
    """report.md's classification section: accuracy per recipe x backend, pairwise accuracy differences, and the
    per-class precision / recall / F1 (the confusion matrices are figures in report.html)."""
    L = ["## Classification", "", CLASSIFICATION_NOTE, "", "| " + " | ".join(CLASSIFICATION_HEAD) + " |",
         "|---|---|" + "---:|" * (len(CLASSIFICATION_HEAD) - 2)]
    L += ["| " + " | ".join(cells) + " |" for cells in classification_table_rows(cls)]
    L += md_unsupported(list(unsupported), len(CLASSIFICATION_HEAD) - 3)
    comps = res.get("classification_comparisons") or []
    if comps:
        L += ["", "### Pairwise accuracy differences (paired bootstrap)", "",
              "A − B on the test rows both backends classified, in points of %; *better* names the backend whose 95% "
              "interval of the difference excludes 0 (— when it does not).", "",
              "| Recipe | A | B | Accuracy A % | Accuracy B % | A − B (points) | 95% CI | p | Better | Utts |",
              "|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
        for c in comps:
            L.append(f"| {c['recipe']} | {c['a']} | {c['b']} | {pct(c['accuracy_a'])} | {pct(c['accuracy_b'])} | "
                     f"{accuracy_diff(c['diff'])} | [{accuracy_diff(c['ci'][0])}, {accuracy_diff(c['ci'][1])}] | "
                     f"{p_str(c['p_value'])} | {c['better'] or '—'} | {c['utterances']} |")
    for recipe, t in per_class_tables(cls).items():
        L += ["", f"### Per-class precision / recall / F1 ({recipe})", "",
              "| Label | Support | " + " | ".join(f"{b} P % | {b} R % | {b} F1 %" for b in t["backends"]) + " |",
              "|---|---:|" + "---:|" * (3 * len(t["backends"]))]
        for label, support, *stats in t["rows"]:
            L.append(f"| {label} | {support} | " + " | ".join(" | ".join(s) for s in stats) + " |")
    return L + [""]


def alignment_text(al: list[list[str]]) -> str:
    parts = []
    for r, h, op in al:
        parts.append(r if op == "C" else f"[{r}→{h}]" if op == "S" else f"[-{r}]" if op == "D" else f"[+{h}]")
    return " ".join(parts) or "(empty)"


def repro_lines(res: dict[str, Any]) -> list[tuple[str, str]]:
    rp = res["reproducibility"]
    pk = rp.get("packages") or {}
    out = [("spx", f"{rp.get('spx_version')} (git {rp.get('git_sha_report')}; runs made at {', '.join(rp.get('git_sha_runs') or []) or '—'})"),
           ("uv.lock sha256[:16]", f"{rp.get('uv_lock_sha256_16')} (runs: {', '.join(rp.get('uv_lock_runs') or []) or '—'})"),
           ("python / platform", f"{rp.get('python')} / {rp.get('platform')}"),
           ("toolkits", ", ".join(f"{k} {v}" for k, v in pk.items() if v and k in REPORTED_DISTRIBUTIONS)),
           ("scoring packages", ", ".join(f"{k} {v}" for k, v in pk.items() if v and k in ("jiwer", "whisper-normalizer", "numpy"))),
           ("devices", ", ".join(sorted({str((r.get('speed') or {}).get('device')) for r in res['rows'] if r.get('speed')})) or "—"),
           ("seeds", ", ".join(f"{k}={v}" for k, v in (rp.get("seeds") or {}).items()) + f"; bootstrap seed {res['scoring']['bootstrap_seed']}"),
           ("bench command", " ; ".join(f"`{c}`" for c in rp.get("commands") or []) or "—")]
    quality = {k: v for r in res["rows"] if r.get("task") == "tts" for k, v in (r.get("metric_versions") or {}).items()}
    if quality:
        out.append(("TTS metric versions", ", ".join(f"{k} {v}" for k, v in sorted(quality.items()))))
    for key, cmds in (rp.get("cell_commands") or {}).items():
        out.append((f"{key} commands", " && ".join(f"`{c}`" for c in cmds) or "—"))
    return out


# ---------------------------------------------------------------- LaTeX
_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: Any) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def render_tex(res: dict[str, Any]) -> str:
    ok = [r for r in res["rows"] if r.get("wer") is not None]
    tts = tts_rows(res)
    cls = classification_rows(res)
    unsupported = {task: unsupported_rows(res, task) for task in ("asr", "tts", "classification")}
    if ok or unsupported["asr"] or not (tts or cls or unsupported["tts"] or unsupported["classification"]):
        out = render_tex_asr(res, ok, unsupported["asr"])
    else:
        out = "% spx bench: paste into a document with \\usepackage{booktabs}\n"
    return (out + (tex_tts(res, tts, unsupported["tts"]) if tts or unsupported["tts"] else "")
            + (tex_classification(res, cls, unsupported["classification"]) if cls or unsupported["classification"]
               else ""))


def tex_unsupported(rows: list[dict[str, Any]], columns: int) -> tuple[list[str], str]:
    """(table rows, caption sentence) for a task's unsupported cells: the row says unsupported, the caption why."""
    lines = [f"{_tex(r['recipe'])} & {_tex(r['backend'])} & \\multicolumn{{{columns}}}{{l}}{{unsupported}} \\\\"
             for r in rows]
    caption = (" Unsupported, not run: " + "; ".join(f"{_tex(r['backend'])} on {_tex(r['recipe'])}: "
                                                      f"{_tex(r['unsupported'])}" for r in rows) + ".") if rows else ""
    return lines, caption


def tex_classification(res: dict[str, Any], cls: list[dict[str, Any]],
                       unsupported: list[dict[str, Any]] = ()) -> str:
    """booktabs tables: accuracy / macro-F1 per recipe x backend and the pairwise accuracy differences."""
    L = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{llrrrrr}", r"\toprule",
         r"Recipe & Backend & Acc.\ (\%) & 95\% CI & Macro-F1 (\%) & RTFx & Train s \\", r"\midrule"]
    for cells in classification_table_rows(cls):
        recipe, backend, acc, ci, f1, _, _, rtfx, train = (_tex(c).replace("—", "--") for c in cells)
        L.append(f"{recipe} & {backend} & {acc} & {ci} & {f1} & {rtfx} & {train} \\\\")
    lines, why = tex_unsupported(list(unsupported), 5)
    L += lines
    L += [r"\bottomrule", r"\end{tabular}",
          r"\caption{Classification accuracy over the test rows with 95\% bootstrap CIs; macro-F1 = unweighted mean "
          r"of the per-class F1. RTFx = audio seconds / median decode seconds." + why + "}", r"\label{tab:spx-bench-cls}",
          r"\end{table}"]
    comps = res.get("classification_comparisons") or []
    if comps:
        L += [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{llrrrl}", r"\toprule",
              r"Recipe & A -- B & A $-$ B (points) & 95\% CI & $p$ & Better \\", r"\midrule"]
        for c in comps:
            L.append(f"{_tex(c['recipe'])} & {_tex(c['a'])} -- {_tex(c['b'])} & {accuracy_diff(c['diff'])} & "
                     f"[{accuracy_diff(c['ci'][0])}, {accuracy_diff(c['ci'][1])}] & "
                     f"{p_str(c['p_value']).replace('<', '$<$')} & {_tex(c['better'] or '--')} \\\\")
        L += [r"\bottomrule", r"\end{tabular}",
              r"\caption{Pairwise accuracy differences, paired bootstrap over the test rows both backends "
              r"classified.}", r"\label{tab:spx-bench-cls-pairs}", r"\end{table}"]
    return "\n".join(L) + "\n"


def tex_tts(res: dict[str, Any], tts: list[dict[str, Any]], unsupported: list[dict[str, Any]] = ()) -> str:
    """booktabs tables: TTS quality per recipe x backend (vocoder disclosed) and the pairwise differences."""
    cols = tts_columns(tts, TEX_TTS_KEYS)
    head = " & ".join(_tex(tts_label(k) + (" (%)" if k in TTS_RATES else "")) for k in cols)
    L = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{lll" + "r" * (len(cols) + 1) + "}", r"\toprule",
         r"Recipe & Backend & Vocoder & " + head + r" & Synth.\ RTF \\", r"\midrule"]
    for r in tts:
        L.append(f"{_tex(r['recipe'])} & {_tex(r['backend'])} & {_tex(r.get('vocoder') or 'unknown')} & "
                 + " & ".join(_tex(tts_cell(r, k)).replace("—", "--") for k in cols)
                 + f" & {num(r.get('synthesis_rtf'), 3).replace('—', '--')} \\\\")
    lines, why = tex_unsupported(list(unsupported), len(cols) + 2)
    L += lines
    judges = "; ".join(sorted({judge_str(r.get("judge")) for r in tts if r.get("judge")})) or "n/a"
    L += [r"\bottomrule", r"\end{tabular}",
          r"\caption{TTS quality: means over the test sentences with 95\% bootstrap CIs. MOS proxies 1--5 (higher is "
          r"better); judge WER of " + _tex(judges) + r" on the synthesized audio; MCD against the reference "
          r"recording. Synthesis RTF = synthesis seconds / audio seconds." + why + "}", r"\label{tab:spx-bench-tts}",
          r"\end{table}"]
    comps = res.get("tts_comparisons") or []
    if comps:
        L += [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{lllrrrl}", r"\toprule",
              r"Recipe & Metric & A -- B & A $-$ B & 95\% CI & $p$ & Better \\", r"\midrule"]
        for c in comps:
            L.append(f"{_tex(c['recipe'])} & {_tex(tts_label(c['metric']))} & {_tex(c['a'])} -- {_tex(c['b'])} & "
                     f"{tts_diff(c, c['diff'])} & [{tts_diff(c, c['ci'][0])}, {tts_diff(c, c['ci'][1])}] & "
                     f"{p_str(c['p_value']).replace('<', '$<$')} & {_tex(c['better'] or '--')} \\\\")
        L += [r"\bottomrule", r"\end{tabular}",
              r"\caption{Pairwise TTS differences, paired bootstrap over the sentences both backends synthesized "
              r"(judge WER in points of \%).}", r"\label{tab:spx-bench-tts-pairs}", r"\end{table}"]
    return "\n".join(L) + "\n"


def render_tex_asr(res: dict[str, Any], ok: list[dict[str, Any]], unsupported: list[dict[str, Any]] = ()) -> str:
    L = ["% spx bench: paste into a document with \\usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
         r"\begin{tabular}{llrrrrr}", r"\toprule",
         r"Recipe & Backend & WER (\%) & 95\% CI & CER (\%) & RTFx & Params \\", r"\midrule"]
    for r in ok:
        ci = r.get("wer_ci")
        s = r.get("speed") or {}
        L.append(f"{_tex(r['recipe'])} & {_tex(r['backend'])} & {pct(r['wer'])} & "
                 f"{f'[{pct(ci[0])}, {pct(ci[1])}]' if ci else '--'} & {pct(r['cer'])} & "
                 f"{('%.1f' % s['rtfx']) if s else '--'} & {_tex(params_str(r.get('params')))} \\\\")
    lines, why = tex_unsupported(list(unsupported), 5)
    L += lines
    devs = sorted({f"{(r.get('speed') or {}).get('device')}, {(r.get('speed') or {}).get('dtype')}, batch "
                   f"{(r.get('speed') or {}).get('batch_size')}, {(r.get('speed') or {}).get('threads')} threads"
                   for r in ok if r.get("speed")})
    L += [r"\bottomrule", r"\end{tabular}",
          r"\caption{Corpus-level WER/CER after " + _tex(res["scoring"]["normalizer"]["name"]) +
          r" normalization; 95\% paired-bootstrap CIs. RTFx = audio seconds / median decode seconds (" +
          _tex("; ".join(devs) or "n/a") + ")." + why + "}", r"\label{tab:spx-bench}", r"\end{table}"]
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- CSV / JSON
def render_csv(res: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in res["rows"]:
        w.writerow(flat_row(r))
    return buf.getvalue()


def render_comparisons_csv(res: dict[str, Any]) -> str:
    """Every pairwise difference, one row each: ASR WER and the TTS scores."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COMPARISON_CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for c in res["comparisons"]:
        w.writerow({**c, "metric": "wer", "value_a": c["wer_a"], "value_b": c["wer_b"], "ci_low": c["ci"][0],
                    "ci_high": c["ci"][1], "higher_is_better": False})
    for c in res.get("tts_comparisons") or []:
        w.writerow({**c, "metric": c["metric"] if c["metric"] not in TTS_RATES else f"judge_{c['metric']}",
                    "ci_low": c["ci"][0], "ci_high": c["ci"][1]})
    for c in res.get("classification_comparisons") or []:
        w.writerow({**c, "value_a": c["accuracy_a"], "value_b": c["accuracy_b"], "ci_low": c["ci"][0],
                    "ci_high": c["ci"][1]})
    return buf.getvalue()


# ---------------------------------------------------------------- HTML
def render_html(res: dict[str, Any]) -> str:
    import jinja2

    from spx.bench import plots

    env = jinja2.Environment(loader=jinja2.PackageLoader("spx.bench", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    figures = {
        "pareto": plots.pareto(res["rows"]),
        "curves": plots.training_curves(res["curves"]),
        "breakdown": {recipe: plots.utterance_breakdown(recipe, utts) for recipe, utts in res["utterances"].items()},
        "mos": {recipe: plots.mos_distributions(recipe, dist) for recipe, dist in (res.get("tts_distributions") or {}).items()},
    }
    cls = classification_rows(res)
    figures["accuracy_speed"] = plots.accuracy_vs_speed(cls)
    figures["confusion"] = {f"{r['recipe']}-{r['backend']}": plots.confusion_matrix(
        f"{r['backend']} ({r['recipe']}): accuracy {pct(r.get('accuracy'))}%", r["confusion"]["labels"],
        r["confusion"]["matrix"]) for r in cls if r.get("confusion")}
    tts = tts_rows(res)
    gallery = {recipe: [{**item, "ref_src": audio_source(item.get("ref_audio")),
                         "srcs": {b: audio_source(path) for b, path in item["audio"].items()}} for item in items]
               for recipe, items in (res.get("tts_gallery") or {}).items() if items}
    return env.get_template("report.html.j2").render(
        tts=tts, tts_cols=tts_columns(tts), tts_cell=tts_cell, tts_label=tts_label, tts_value=tts_value,
        tts_diff=tts_diff, tts_notes=tts_notes(res), tts_rates=TTS_RATES, gallery=gallery,
        tts_comparisons=res.get("tts_comparisons") or [],
        variants=variant_rows(res["rows"]), cls=cls, cls_head=CLASSIFICATION_HEAD, cls_note=CLASSIFICATION_NOTE, cls_rows=classification_table_rows(cls),
        cls_comparisons=res.get("classification_comparisons") or [], per_class=per_class_tables(cls),
        accuracy_diff=accuracy_diff,
        res=res, ok=[r for r in res["rows"] if r.get("wer") is not None],
        done=done_rows(res), failed=failed_rows(res),
        unsupported={task: unsupported_rows(res, task) for task in ("asr", "tts", "classification")},
        clocks="; ".join(sorted({str(r["speed"].get("clock")) for r in res["rows"] if r.get("speed")})) or "—", figures=figures, pct=pct, num=num,
        params_str=params_str, trainable_str=trainable_str, p_str=p_str, repro=repro_lines(res), markup=jinja2.utils.markupsafe.Markup)


def write_report(res: dict[str, Any], out: Path, write_json: bool = True) -> dict[str, Path]:
    """Write every format into `out` (each file atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"md": out / "report.md", "html": out / "report.html", "tex": out / "report.tex", "csv": out / "results.csv",
             "comparisons_csv": out / "comparisons.csv"}
    if write_json:
        files["json"] = out / "results.json"
        atomic_write_text(files["json"], json.dumps(res, indent=1, ensure_ascii=False, default=float) + "\n")
    atomic_write_text(files["md"], render_md(res))
    atomic_write_text(files["tex"], render_tex(res))
    atomic_write_text(files["csv"], render_csv(res))
    atomic_write_text(files["comparisons_csv"], render_comparisons_csv(res))
    atomic_write_text(files["html"], render_html(res))
    return files
