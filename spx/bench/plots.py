"""Report plots (matplotlib, Agg backend), returned as inline SVG so report.html stays self-contained."""
from __future__ import annotations

import io
from typing import Any

from spx.registry import BACKENDS

COLORS = {name: b.color for name, b in BACKENDS.items()}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 10})
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _plt().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _color(backend: str, i: int) -> str:
    return COLORS.get(backend, f"C{i}")


def _points_against_speed(ax: Any, pts: list[dict[str, Any]], metric: str) -> None:
    """One point per cell: RTFx (with its min-max over repeats) against 100 x `metric` (with its 95% CI)."""
    for i, r in enumerate(pts):
        x, y = r["speed"]["rtfx"], 100 * r[metric]
        ci = r.get(f"{metric}_ci")
        yerr = [[y - 100 * ci[0]], [100 * ci[1] - y]] if ci else None
        xerr = [[x - r["speed"]["rtfx_min"]], [r["speed"]["rtfx_max"] - x]]
        ax.errorbar([x], [y], yerr=yerr, xerr=xerr, fmt="o", capsize=4, color=_color(r["backend"], i),
                    label=f"{r['backend']} ({r['recipe']})")


def pareto(rows: list[dict[str, Any]]) -> str | None:
    """WER (with 95% CI) against RTFx; the Pareto front (lower WER, higher RTFx) is drawn as a line."""
    pts = [r for r in rows if r.get("wer") is not None and r.get("speed")]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    _points_against_speed(ax, pts, "wer")
    front, best = [], float("inf")
    for r in sorted(pts, key=lambda r: -r["speed"]["rtfx"]):
        if r["wer"] < best:
            best = r["wer"]
            front.append((r["speed"]["rtfx"], 100 * r["wer"]))
    if len(front) > 1:
        ax.plot(*zip(*front), "--", color="grey", lw=1, label="Pareto front")
    ax.set_xlabel("RTFx (audio s / decode s, higher is faster)")
    ax.set_ylabel("WER % (95% bootstrap CI)")
    ax.set_title("Accuracy vs speed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


def training_curves(curves: dict[str, list[dict[str, Any]]]) -> str | None:
    series = {k: v for k, v in curves.items() if any(r.get("train_loss") is not None for r in v)}
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (key, curve) in enumerate(sorted(series.items())):
        color = _color(key.rsplit("-", 1)[-1], i)
        ep = [r.get("epoch") for r in curve]
        ax.plot(ep, [r.get("train_loss") for r in curve], "-", color=color, label=f"{key} train")
        if any(r.get("valid_loss") is not None for r in curve):
            ax.plot(ep, [r.get("valid_loss") for r in curve], ":", color=color, label=f"{key} valid")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (each toolkit's own loss scale)")  # CTC for ASR, Tacotron2 loss for TTS
    ax.set_title("Training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _svg(fig)


def utterance_breakdown(recipe: str, utts: list[dict[str, Any]]) -> str | None:
    """Left: S/D/I totals per backend. Right: per-utterance WER per backend, utterances sorted by mean WER."""
    if not utts:
        return None
    backends = sorted(utts[0]["hyps"])
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2.2]})
    bottoms = [0] * len(backends)
    for kind, color in (("sub", "#d62728"), ("del", "#ff7f0e"), ("ins", "#9467bd")):
        vals = [sum(u["hyps"][b][kind] for u in utts) for b in backends]
        ax1.bar(backends, vals, bottom=bottoms, color=color, label={"sub": "substitutions", "del": "deletions",
                                                                   "ins": "insertions"}[kind])
        bottoms = [x + v for x, v in zip(bottoms, vals)]
    ax1.set_ylabel("word errors")
    ax1.set_title("Error types")
    ax1.legend(fontsize=7)
    order = sorted(utts, key=lambda u: sum(u["hyps"][b]["errors"] / max(u["hyps"][b]["words"], 1) for b in backends))
    for i, b in enumerate(backends):
        ax2.plot(range(len(order)), [100 * u["hyps"][b]["errors"] / max(u["hyps"][b]["words"], 1) for u in order],
                 "o-", ms=3, lw=1, color=_color(b, i), label=b)
    ax2.set_xlabel("utterance (sorted by mean WER across backends)")
    ax2.set_ylabel("utterance WER %")
    ax2.set_title(f"Per-utterance errors ({recipe})")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    return _svg(fig)


def mos_distributions(recipe: str, dist: dict[str, dict[str, list[float]]]) -> str | None:
    """One panel per MOS proxy: each backend's per-utterance scores (box, mean marked, every sentence a dot)."""
    from spx.bench.results import MOS_PROXIES, TTS_METRICS

    backends = sorted(b for b, per_metric in dist.items() if any(per_metric.values()))
    metrics = [k for k in MOS_PROXIES if any(dist[b].get(k) for b in backends)]
    if not metrics:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(min(2.6 * len(metrics), 12) + 0.6, 3.4), squeeze=False)
    for ax, key in zip(axes[0], metrics):
        for i, b in enumerate(backends):
            vals = dist[b].get(key) or []
            if not vals:
                continue
            color = _color(b, i)
            ax.boxplot([vals], positions=[i], widths=0.5, showmeans=True, showfliers=False,
                       boxprops={"color": color}, medianprops={"color": color},
                       meanprops={"marker": "D", "markerfacecolor": color, "markeredgecolor": color, "markersize": 4})
            # spread the dots sideways (deterministically) so equal scores stay visible
            offsets = [0.18 * ((j % 7) / 3 - 1) for j in range(len(vals))]
            ax.plot([i + o for o in offsets], vals, "o", ms=2.5, alpha=0.5, color=color)
        ax.set_xticks(range(len(backends)), backends, rotation=20, fontsize=8)
        ax.set_xlim(-0.6, len(backends) - 0.4)
        ax.set_title(TTS_METRICS[key][0], fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("per-utterance score (1–5)")
    fig.suptitle(f"MOS-proxy distributions ({recipe}; box: quartiles, diamond: mean)", fontsize=10)
    fig.tight_layout()
    return _svg(fig)


def confusion_matrix(title: str, labels: list[str], matrix: list[list[int]]) -> str | None:
    """Rows: reference labels; columns: predicted labels (an extra last column when some predictions are outside
    the reference labels). Colour: the share of the row (recall on the diagonal); the counts are written in the
    cells when there are few classes."""
    import numpy as np

    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        return None
    n_rows, n_cols = m.shape
    totals = m.sum(axis=1, keepdims=True)
    share = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    plt = _plt()
    side = min(max(3.2, 0.38 * n_cols + 1.6), 14)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n_cols), labels[:n_cols], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), labels[:n_rows], fontsize=8)
    if n_cols <= 20:
        for i in range(n_rows):
            for j in range(n_cols):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted label")
    ax.set_ylabel("reference label")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the reference label's rows")
    return _svg(fig)


def accuracy_vs_speed(rows: list[dict[str, Any]]) -> str | None:
    """Classification cells: accuracy (with its 95% CI) against RTFx, one point per recipe x backend."""
    pts = [r for r in rows if r.get("accuracy") is not None and r.get("speed")]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    _points_against_speed(ax, pts, "accuracy")
    ax.set_xlabel("RTFx (audio s / decode s, higher is faster)")
    ax.set_ylabel("accuracy % (95% bootstrap CI)")
    ax.set_title("Classification: accuracy vs speed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)
