"""Render results.json into report.md, report.html, report.tex, results.csv (and results.json itself).

Every renderer reads only the results dict, so `spx bench --from results.json` reproduces the report."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from spx.yamlio import atomic_write_text

CSV_COLUMNS = ["recipe", "backend", "state", "wer", "wer_ci_low", "wer_ci_high", "cer", "substitutions", "deletions",
               "insertions", "words", "utterances", "rtf", "rtfx", "rtfx_min", "rtfx_max", "decode_seconds_median",
               "audio_seconds", "device", "dtype", "batch_size", "threads", "warmup_batches", "repeats",
               "train_wall_s", "epochs", "s_per_epoch", "peak_memory_mb", "params", "seed", "normalizer", "run_dir",
               "error", "log"]


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
    return out


# ---------------------------------------------------------------- markdown
def render_md(res: dict[str, Any]) -> str:
    rows = res["rows"]
    ok = [r for r in rows if r.get("wer") is not None]
    done = [r for r in rows if "error" not in r]
    L = ["# spx bench report", "", f"Generated {res['generated']}. Normalizer: "
         f"`{res['scoring']['normalizer']['name']}` ({res['scoring']['normalizer']['implementation']} "
         f"{res['scoring']['normalizer'].get('version') or ''}). WER/CER are corpus level; intervals are 95% paired "
         f"bootstrap over utterances.", ""]
    L += ["## Accuracy", "", "| Recipe | Backend | WER % | 95% CI | CER % | Sub | Del | Ins | Words | Utts |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in ok:
        ci = r.get("wer_ci")
        L.append(f"| {r['recipe']} | {r['backend']} | {pct(r['wer'])} | "
                 f"{f'[{pct(ci[0])}, {pct(ci[1])}]' if ci else '—'} | {pct(r['cer'])} | {r['substitutions']} | "
                 f"{r['deletions']} | {r['insertions']} | {r['words']} | {r['scored_utterances']} |")
    L += ["", "## Speed", "", "| Recipe | Backend | RTFx (median) | RTFx range | RTF | Decode s (median) | Audio s | "
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
    L += ["", "## Training cost", "", "| Recipe | Backend | Wall s | Epochs | s/epoch | Peak memory MB | Params |",
          "|---|---|---:|---:|---:|---:|---:|"]
    for r in done:
        L.append(f"| {r['recipe']} | {r['backend']} | {num(r.get('train_wall_s'))} | {num(r.get('epochs'))} | "
                 f"{num(r.get('s_per_epoch'))} | {num(r.get('peak_memory_mb'), 0)} | {params_str(r.get('params'))} |")
    if res["comparisons"]:
        L += ["", "## Pairwise WER differences (paired bootstrap)", "",
              "| Recipe | A | B | WER A % | WER B % | A − B (points) | 95% CI | p | Utts |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for c in res["comparisons"]:
            L.append(f"| {c['recipe']} | {c['a']} | {c['b']} | {pct(c['wer_a'])} | {pct(c['wer_b'])} | "
                     f"{100 * c['diff']:+.1f} | [{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}] | {p_str(c['p_value'])} | "
                     f"{c['utterances']} |")
    other = [r for r in done if r.get("metrics")]
    if other:
        L += ["", "## Other metrics (non-ASR cells, from each cell's metrics.json)", ""]
        for r in other:
            L.append(f"- {r['recipe']} / {r['backend']} ({r.get('task')}): " +
                     ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["metrics"].items()))
    failed = [r for r in rows if "error" in r]
    if failed:
        L += ["", "## Failures", "", "| Recipe | Backend | State | Error | Log |", "|---|---|---|---|---|"]
        for r in failed:
            err = (r.get("error") or "").replace("|", "\\|").replace("\n", " ")
            L.append(f"| {r['recipe']} | {r['backend']} | {r['state']} | {err} | `{r.get('log') or r['run_dir']}` |")
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
           ("toolkits", ", ".join(f"{k} {v}" for k, v in pk.items() if v and k in (
               "torch", "torchaudio", "nemo-toolkit", "speechbrain", "espnet", "lightning"))),
           ("scoring packages", ", ".join(f"{k} {v}" for k, v in pk.items() if v and k in ("jiwer", "whisper-normalizer", "numpy"))),
           ("devices", ", ".join(sorted({str((r.get('speed') or {}).get('device')) for r in res['rows'] if r.get('speed')})) or "—"),
           ("seeds", ", ".join(f"{k}={v}" for k, v in (rp.get("seeds") or {}).items()) + f"; bootstrap seed {res['scoring']['bootstrap_seed']}"),
           ("bench command", " ; ".join(f"`{c}`" for c in rp.get("commands") or []) or "—")]
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
    L = ["% spx bench: paste into a document with \\usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
         r"\begin{tabular}{llrrrrr}", r"\toprule",
         r"Recipe & Backend & WER (\%) & 95\% CI & CER (\%) & RTFx & Params \\", r"\midrule"]
    for r in ok:
        ci = r.get("wer_ci")
        s = r.get("speed") or {}
        L.append(f"{_tex(r['recipe'])} & {_tex(r['backend'])} & {pct(r['wer'])} & "
                 f"{f'[{pct(ci[0])}, {pct(ci[1])}]' if ci else '--'} & {pct(r['cer'])} & "
                 f"{('%.1f' % s['rtfx']) if s else '--'} & {_tex(params_str(r.get('params')))} \\\\")
    devs = sorted({f"{(r.get('speed') or {}).get('device')}, {(r.get('speed') or {}).get('dtype')}, batch "
                   f"{(r.get('speed') or {}).get('batch_size')}, {(r.get('speed') or {}).get('threads')} threads"
                   for r in ok if r.get("speed")})
    L += [r"\bottomrule", r"\end{tabular}",
          r"\caption{Corpus-level WER/CER after " + _tex(res["scoring"]["normalizer"]["name"]) +
          r" normalization; 95\% paired-bootstrap CIs. RTFx = audio seconds / median decode seconds (" +
          _tex("; ".join(devs) or "n/a") + ").}", r"\label{tab:spx-bench}", r"\end{table}"]
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- CSV / JSON
def render_csv(res: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in res["rows"]:
        w.writerow(flat_row(r))
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
    }
    return env.get_template("report.html.j2").render(
        res=res, ok=[r for r in res["rows"] if r.get("wer") is not None],
        done=[r for r in res["rows"] if "error" not in r],
        failed=[r for r in res["rows"] if "error" in r],
        clocks="; ".join(sorted({str(r["speed"].get("clock")) for r in res["rows"] if r.get("speed")})) or "—", figures=figures, pct=pct, num=num,
        params_str=params_str, p_str=p_str, repro=repro_lines(res), markup=jinja2.utils.markupsafe.Markup)


def write_report(res: dict[str, Any], out: Path, write_json: bool = True) -> dict[str, Path]:
    """Write every format into `out` (each file atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"md": out / "report.md", "html": out / "report.html", "tex": out / "report.tex", "csv": out / "results.csv"}
    if write_json:
        files["json"] = out / "results.json"
        atomic_write_text(files["json"], json.dumps(res, indent=1, ensure_ascii=False, default=float) + "\n")
    atomic_write_text(files["md"], render_md(res))
    atomic_write_text(files["tex"], render_tex(res))
    atomic_write_text(files["csv"], render_csv(res))
    atomic_write_text(files["html"], render_html(res))
    return files
