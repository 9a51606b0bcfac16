"""Read the cells (run dirs) of a bench and build results.json: everything the report shows, so that
`spx bench --from results.json` re-renders the report without the run dirs."""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np

from spx import records
from spx.bench import classification, scoring
from spx.errors import SpxError
from spx.yamlio import read_json
from spx.registry import REPORTED_DISTRIBUTIONS

SCHEMA = "spx.bench.results/1"
DISAGREEMENTS_SHOWN = 10
# Per-utterance TTS scores (keys of metrics.json per_utt, spx.bench.quality) the report shows, in this order:
# key -> (label, higher is better).
TTS_METRICS = {
    "dnsmos_ovrl": ("DNSMOS OVRL", True), "dnsmos_sig": ("DNSMOS SIG", True), "dnsmos_bak": ("DNSMOS BAK", True),
    "dnsmos_p808": ("DNSMOS P.808", True), "distillmos": ("DistillMOS", True), "utmos": ("UTMOS", True),
    "mcd": ("MCD dB", False), "f0_rmse": ("F0 RMSE Hz", False), "vde": ("VDE", False),
    "speaker_similarity": ("Speaker similarity", True),
}
MOS_PROXIES = ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808", "distillmos", "utmos")
TTS_COMPARED = MOS_PROXIES + ("mcd",)  # pairwise differences between backends
# Intelligibility (judge ASR) rates: key -> (per_utt errors key, per_utt length key, label).
TTS_RATES = {"wer": ("word_errors", "words", "judge WER"), "cer": ("char_errors", "chars", "judge CER")}
GALLERY_SENTENCES = 5  # each clip is embedded in report.html: a few sentences keep the file small


def _read_spec(path: Path) -> dict[str, Any]:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return {}


def cell_key(recipe: str, backend: str) -> str:
    return f"{recipe}-{backend}"


def read_cell(path: Path, recipe: str | None = None) -> dict[str, Any]:
    """Everything the report needs from one run dir (no scoring yet)."""
    status = read_json(path / "status.json") or {"state": "unknown"}
    backend_file = path / "backend"
    backend = backend_file.read_text().strip() if backend_file.exists() else status.get("backend", path.name.rsplit("-", 1)[-1])
    if recipe is None:
        recipe = path.name[: -(len(backend) + 1)] if path.name.endswith("-" + backend) else path.name
    spec = _read_spec(path / "spec.yaml")
    return {
        "recipe": recipe, "backend": backend, "run_dir": str(path), "status": status,
        "spec": spec, "env": read_json(path / "env.json") or {},
        **records.read_run(path, (spec or {}).get("task", "asr")),
        "metrics": records.read(path / "metrics.json", records.Metrics), "steps": read_json(path / "steps.json") or [],
        "variants": read_json(path / "variants.json"),  # spx bench --variants (spx.bench.variants)
    }


def discover_cells(out: Path) -> list[dict[str, Any]]:
    runs = out / "runs"
    if not runs.is_dir():
        raise SpxError(f"{out} has no runs/ folder: nothing to report",
                       hint="run `spx bench --out DIR` first, or point --out at a bench folder")
    return [read_cell(p) for p in sorted(runs.iterdir()) if p.is_dir()]


def _failure_log(cell: dict[str, Any]) -> str | None:
    st = cell["status"]
    if st.get("log"):
        return str(st["log"])
    rd = Path(cell["run_dir"])
    if st.get("step"):
        for cand in (rd / "logs" / f"{st['step']}.log", rd / "train.log"):
            if cand.exists():
                return str(cand)
    for cand in (rd / "bench.log", rd / "train.log"):
        if cand.exists():
            return str(cand)
    return None


def _train_cost(ts: dict[str, Any] | None, curve: list[dict[str, Any]]) -> dict[str, Any]:
    if not ts:
        return {}
    wall = ts.get("wall_seconds")
    epochs = ts.get("epochs") or (max((r.get("epoch") or 0) for r in curve) if curve else None)
    per_epoch = None
    times = [r["time"] for r in curve if isinstance(r.get("time"), (int, float))]
    if len(times) >= 2 and times[-1] > times[0]:
        per_epoch = (times[-1] - times[0]) / (len(times) - 1)
    elif wall and epochs:
        per_epoch = wall / epochs
    return {"train_wall_s": wall, "epochs": epochs, "s_per_epoch": per_epoch, "steps": ts.get("steps"),
            "peak_memory_mb": ts.get("peak_memory_mb"), "params": ts.get("params"),
            "trainable_params": ts.get("trainable_params"),
            # the LoRA / adapter weights of a parameter-efficient fine-tune (hf, SpeechBrain, ESPnet: lora_params;
            # NeMo: adapter_params)
            "adapter_params": ts.get("lora_params") or ts.get("adapter_params"),
            "effective_batch": ts.get("effective_batch"), "world_size": ts.get("world_size")}


def _utt_key(h: dict[str, Any]) -> str:
    return f"{h.get('test_set', '')}/{h['id']}"


def build_results(cells: list[dict[str, Any]], samples: int | None = None, seed: int = 0,
                  normalizer_name: str | None = None, commands: list[str] | None = None) -> dict[str, Any]:
    """Score every finished cell the same way and assemble the report data."""
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    per_recipe: dict[str, dict[str, dict[str, Any]]] = {}
    per_recipe_tts: dict[str, dict[str, dict[str, Any]]] = {}
    per_recipe_cls: dict[str, dict[str, dict[str, Any]]] = {}
    norm_used: dict[str, Any] | None = None
    for cell in cells:
        spec = cell["spec"]
        st = cell["status"]
        norm = normalizer_name or (spec.get("eval") or {}).get("normalizer", "whisper_english")
        row: dict[str, Any] = {
            "recipe": cell["recipe"], "backend": cell["backend"], "state": st.get("state", "unknown"),
            "run_dir": cell["run_dir"], "task": spec.get("task"), "model": (spec.get("model") or {}).get("family"),
            "seed": (spec.get("training") or {}).get("seed"), "normalizer": norm,
        }
        curves[cell_key(cell["recipe"], cell["backend"])] = [
            {k: r.get(k) for k in ("epoch", "step", "train_loss", "valid_loss", "valid_wer", "lr", "time")}
            for r in cell["curve"]]
        if row["state"] == "unsupported":  # the backend refused the recipe before anything ran: not a failure
            row["unsupported"] = st.get("reason") or "the backend does not support this recipe"
            rows.append(row)
            continue
        ok = row["state"] == "finished" and cell["hyps"]
        if ok and cell.get("variants"):
            row["variants"] = cell["variants"]
        if not ok:
            row["error"] = st.get("error") or (f"state {row['state']!r}" if row["state"] != "finished"
                                               else "finished but wrote no hyps.jsonl")
            row["log"] = _failure_log(cell)
            rows.append(row)
            continue
        if spec.get("task") == "tts":
            if not isinstance(cell["metrics"], dict):
                row["error"] = "finished but wrote no metrics.json (the TTS quality scores)"
                row["log"] = _failure_log(cell)
                rows.append(row)
                continue
            samples_tts = samples or int((spec.get("eval") or {}).get("bootstrap_samples", 1000))
            utts = _tts_row(row, cell, samples_tts, seed)
            _speed_cost_versions(row, cell)
            rows.append(row)
            per_recipe_tts.setdefault(cell["recipe"], {})[cell["backend"]] = {"row": row, "samples": samples_tts,
                                                                             "utts": utts}
            continue
        if spec.get("task") == "classification":
            samples_cls = samples or int((spec.get("eval") or {}).get("bootstrap_samples", 1000))
            row.update(classification.score_classification(cell["hyps"]))
            scored = classification.scored_rows(cell["hyps"])
            _speed_cost_versions(row, cell)
            rows.append(row)
            per_recipe_cls.setdefault(cell["recipe"], {})[cell["backend"]] = {
                "row": row, "samples": samples_cls,
                "correct": dict(zip(map(_utt_key, scored), classification.correct_vector(scored)))}
            continue
        if spec.get("task", "asr") != "asr":  # other tasks: their own metrics.json, speed and training cost
            row["metrics"] = {k: v for k, v in (cell["metrics"] or {}).items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if cell["speed"]:
                row["speed"] = scoring.speed_summary(cell["speed"])
            row.update(_train_cost(cell["train_summary"], cell["curve"]))
            rows.append(row)
            continue
        info = scoring.normalizer_info(norm)
        norm_used = norm_used or info
        hyps = cell["hyps"]
        # references are shared by the cells of a recipe: normalize_all remembers them after the first cell
        refs_n, hyps_n = scoring.normalize_pairs([h.get("ref") for h in hyps], [h.get("hyp") for h in hyps], norm)
        keep = [i for i, r in enumerate(refs_n) if r]
        we = scoring.utterance_errors([refs_n[i] for i in keep], [hyps_n[i] for i in keep], "word")
        ce = scoring.utterance_errors([refs_n[i] for i in keep], [hyps_n[i] for i in keep], "char")
        wc, cc = we.corpus(), ce.corpus()
        test_sets: dict[str, dict[str, Any]] = {}
        for j, i in enumerate(keep):
            ts = test_sets.setdefault(hyps[i].get("test_set") or "test", {"errors": 0, "words": 0, "utterances": 0})
            ts["errors"] += int(we.errors[j])
            ts["words"] += int(we.ref_len[j])
            ts["utterances"] += 1
        for ts in test_sets.values():
            ts["wer"] = ts["errors"] / ts["words"] if ts["words"] else None
        row.update(wer=wc["rate"], cer=cc["rate"], words=wc["ref_units"], substitutions=wc["substitutions"],
                   deletions=wc["deletions"], insertions=wc["insertions"], word_errors=wc["errors"],
                   chars=cc["ref_units"], char_errors=cc["errors"], utterances=len(hyps), scored_utterances=len(keep),
                   test_sets=test_sets)
        _speed_cost_versions(row, cell)
        rows.append(row)
        per_recipe.setdefault(cell["recipe"], {})[cell["backend"]] = {
            "row": row, "samples": samples or int((spec.get("eval") or {}).get("bootstrap_samples", 1000)),
            "utts": {_utt_key(hyps[i]): {"raw": hyps[i].get("hyp") or "", "norm": hyps_n[i], "ref_raw": hyps[i].get("ref") or "",
                                         "ref": refs_n[i], "errors": int(we.errors[j]), "words": int(we.ref_len[j]),
                                         "sub": int(we.sub[j]), "del": int(we.dele[j]), "ins": int(we.ins[j]),
                                         "duration": hyps[i].get("duration")}
                     for j, i in enumerate(keep)},
        }

    comparisons, utterances, disagreements = [], {}, {}
    for recipe, systems in per_recipe.items():
        backends = sorted(systems)
        common = sorted(set.intersection(*(set(systems[b]["utts"]) for b in backends)))
        n_samples = max(s["samples"] for s in systems.values())
        if common:
            errs = np.array([[systems[b]["utts"][u]["errors"] for u in common] for b in backends])
            words = np.array([systems[backends[0]]["utts"][u]["words"] for u in common])
            draws = scoring.bootstrap_rates(errs, words, n_samples, seed)
            rates = errs.sum(axis=1) / words.sum()
            for bi, b in enumerate(backends):
                row = systems[b]["row"]
                row["wer_ci"] = list(scoring.percentile_ci(draws[bi]))
                row["bootstrap"] = {"samples": n_samples, "seed": seed, "utterances": len(common)}
            for (ai, a), (bi, b) in itertools.combinations(enumerate(backends), 2):
                comp = scoring.paired_difference(float(rates[ai]), float(rates[bi]), draws[ai], draws[bi])
                comparisons.append({"recipe": recipe, "a": a, "b": b, "wer_a": float(rates[ai]),
                                    "wer_b": float(rates[bi]), "utterances": len(common), **comp})
        utterances[recipe] = [
            {"utt": u, "ref": systems[backends[0]]["utts"][u]["ref"], "ref_raw": systems[backends[0]]["utts"][u]["ref_raw"],
             "duration": systems[backends[0]]["utts"][u]["duration"],
             "hyps": {b: {k: systems[b]["utts"][u][k] for k in ("raw", "norm", "errors", "words", "sub", "del", "ins")}
                      for b in backends}}
            for u in common]
        disagreements[recipe] = _disagreements(utterances[recipe], backends) if len(backends) > 1 else []

    tts_comparisons, tts_distributions, tts_gallery = [], {}, {}
    for recipe, systems in per_recipe_tts.items():
        backends = sorted(systems)
        tts_comparisons += _tts_comparisons(recipe, systems, seed)
        tts_distributions[recipe] = {b: {k: [u["scores"][k] for _, u in sorted(systems[b]["utts"].items())
                                             if u["scores"].get(k) is not None]
                                         for k in MOS_PROXIES if systems[b]["row"]["tts"].get(k)}
                                     for b in backends}
        tts_gallery[recipe] = _tts_gallery(systems, backends)

    classification_comparisons = [c for recipe, systems in per_recipe_cls.items()
                                  for c in _classification_pairs(recipe, systems, seed)]

    return {
        "schema": SCHEMA,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": rows,
        "comparisons": comparisons,
        "curves": curves,
        "utterances": utterances,
        "disagreements": disagreements,
        "tts_comparisons": tts_comparisons,
        "tts_distributions": tts_distributions,
        "tts_gallery": tts_gallery,
        "classification_comparisons": classification_comparisons,
        "scoring": {
            "normalizer": norm_used or scoring.normalizer_info(normalizer_name or "whisper_english"),
            "wer": "corpus level: Σ(S+D+I) / Σ reference words over the scored utterances (normalized text)",
            "cer": "corpus level on characters of the normalized text, spaces included",
            "ci_level": scoring.CI_LEVEL, "bootstrap_seed": seed,
            "bootstrap": "paired: one draw of utterance indices (with replacement) shared by all backends; "
                         "95% percentile intervals; p-value from the mean-shifted bootstrap distribution",
            "speed": "RTFx = Σ audio seconds / median decode seconds over repeats (RTF = 1/RTFx); clock and "
                     "settings from each cell's speed.json (spx.adapters.common.child.decode_and_time); spx bench runs "
                     "each timed step alone on the machine, after the trainings (which `--jobs N` runs N side by side, "
                     "so training wall times are shared-core times)",
            "tts": "TTS cells: per-utterance scores from each cell's metrics.json (spx.bench.quality.score_tts_hyps: "
                   "DNSMOS P.835/P.808, DistillMOS, UTMOS where configured, MCD and F0 RMSE against the reference "
                   "recording, speaker similarity); each value is the mean over utterances with a 95% percentile "
                   "bootstrap CI; judge WER/CER are corpus level over the judge ASR's transcripts of the synthesized "
                   "audio; pairwise differences use the same paired bootstrap on the sentences both backends "
                   "synthesized; synthesis RTF = synthesis seconds / generated audio seconds",
            "classification": "classification cells: accuracy over the test rows (a predicted label outside the test "
                              "set's labels is an error) with a 95% percentile bootstrap CI, macro-F1 = unweighted "
                              "mean of the per-class F1 (spx.bench.classification); pairwise accuracy differences use "
                              "the same paired bootstrap on the rows both backends classified",
        },
        "reproducibility": _reproducibility(cells, commands or []),
    }


def _speed_cost_versions(row: dict[str, Any], cell: dict[str, Any]) -> None:
    """What every finished cell reports beside its scores: speed, training cost, toolkit versions, command."""
    if cell["speed"]:
        try:
            row["speed"] = scoring.speed_summary(cell["speed"])
        except ValueError as exc:
            row["speed_error"] = f"{Path(cell['run_dir']) / 'speed.json'}: {exc}"
    row.update(_train_cost(cell["train_summary"], cell["curve"]))
    env = cell["env"]
    row["versions"] = {k: v for k, v in (env.get("packages") or {}).items()
                       if k in REPORTED_DISTRIBUTIONS and v}
    for k in ("cuda", "torch_cuda", "device_name", "gpu"):
        if env.get(k):
            row["versions"][k] = env[k]
    row["command_sh"] = str(Path(cell["run_dir"]) / "command.sh")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _tts_row(row: dict[str, Any], cell: dict[str, Any], samples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Fill a TTS row from metrics.json (its corpus means, per-utterance scores for the CIs) and hyps.jsonl;
    return the cell's utterances {test_set/id: {text, audio, ref_audio, scores}} for pairing with other backends."""
    metrics = cell["metrics"]
    per_utt = {u.get("id"): u for u in metrics.get("per_utt") or [] if isinstance(u, dict)}
    utts: dict[str, dict[str, Any]] = {}
    for h in cell["hyps"]:
        u = per_utt.get(h.get("id"), {})
        utts[f"{h.get('test_set', '')}/{h.get('id')}"] = {
            "id": h.get("id"), "text": h.get("text"), "audio": h.get("audio"), "ref_audio": h.get("ref_audio"),
            "scores": {k: float(v) for k, v in u.items() if k in TTS_METRICS and _finite(v)},
            "counts": {k: int(u[k]) for k in ("word_errors", "words", "char_errors", "chars") if _finite(u.get(k))}}
    ordered = sorted(utts.values(), key=lambda x: str(x["id"]))
    tts: dict[str, dict[str, Any]] = {}
    for key in TTS_METRICS:
        vals = np.array([x["scores"][key] for x in ordered if key in x["scores"]])
        value = metrics.get(key) if _finite(metrics.get(key)) else (float(vals.mean()) if vals.size else None)
        if value is None:
            continue
        ci = list(scoring.percentile_ci(scoring.bootstrap_means(vals[None], samples, seed)[0])) if vals.size else None
        tts[key] = {"value": float(value), "ci": ci, "utterances": int(vals.size)}
    for key, (err_key, len_key, _) in TTS_RATES.items():
        if not _finite(metrics.get(key)):
            continue
        scored = [x["counts"] for x in ordered if err_key in x["counts"] and x["counts"].get(len_key)]
        ci = None
        if scored:
            errs = np.array([[c[err_key] for c in scored]])
            draws = scoring.bootstrap_rates(errs, np.array([c[len_key] for c in scored]), samples, seed)[0]
            ci = list(scoring.percentile_ci(draws))
        tts[key] = {"value": float(metrics[key]), "ci": ci, "utterances": len(scored)}
    intel = metrics.get("intelligibility") or {}
    vocoder = ((cell["train_summary"] or {}).get("vocoder") or (cell["speed"] or {}).get("vocoder")
               or (metrics.get("train") or {}).get("vocoder"))
    row.update(tts=tts, vocoder=vocoder, judge=intel.get("judge"), judge_normalizer=intel.get("normalizer"),
               synthesis_rtf=metrics.get("synthesis_rtf") if _finite(metrics.get("synthesis_rtf")) else None,
               utterances=metrics.get("utterances", len(cell["hyps"])), unavailable=metrics.get("unavailable") or {},
               metric_versions=metrics.get("versions") or {},
               bootstrap={"samples": samples, "seed": seed, "utterances": len(utts)})
    return utts


def _tts_comparisons(recipe: str, systems: dict[str, dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Paired bootstrap of each MOS proxy (and MCD, judge WER) between every two backends of a recipe, on the
    utterances both scored; `better` names the backend whose 95% interval of the difference excludes 0."""
    out = []
    for a, b in itertools.combinations(sorted(systems), 2):
        ua, ub = systems[a]["utts"], systems[b]["utts"]
        n_samples = max(systems[a]["samples"], systems[b]["samples"])
        common = sorted(set(ua) & set(ub))
        for key in TTS_COMPARED + ("wer",):
            if key == "wer":
                both = [u for u in common if ua[u]["counts"].get("words") and "word_errors" in ua[u]["counts"]
                        and "word_errors" in ub[u]["counts"] and ua[u]["counts"]["words"] == ub[u]["counts"].get("words")]
                if not both:
                    continue
                errs = np.array([[s[u]["counts"]["word_errors"] for u in both] for s in (ua, ub)])
                words = np.array([ua[u]["counts"]["words"] for u in both])
                values = errs.sum(axis=1) / words.sum()
                draws = scoring.bootstrap_rates(errs, words, n_samples, seed)
                higher_is_better = False
            else:
                both = [u for u in common if key in ua[u]["scores"] and key in ub[u]["scores"]]
                if not both:
                    continue
                scores = np.array([[s[u]["scores"][key] for u in both] for s in (ua, ub)])
                values = scores.mean(axis=1)
                draws = scoring.bootstrap_means(scores, n_samples, seed)
                higher_is_better = TTS_METRICS[key][1]
            comp = scoring.paired_difference(float(values[0]), float(values[1]), draws[0], draws[1])
            lo, hi = comp["ci"]
            better = None
            if lo > 0 or hi < 0:  # the interval excludes "no difference"
                better = a if (lo > 0) == higher_is_better else b
            out.append({"recipe": recipe, "metric": key, "a": a, "b": b, "value_a": float(values[0]),
                        "value_b": float(values[1]), "utterances": len(both), "higher_is_better": higher_is_better,
                        "better": better, **comp})
    return out


def _classification_pairs(recipe: str, systems: dict[str, dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Each backend's accuracy CI, and the paired bootstrap of the accuracy difference between every two backends
    of a recipe, on the test rows all of them classified (the same resamples for every backend)."""
    backends = sorted(systems)
    common = sorted(set.intersection(*(set(systems[b]["correct"]) for b in backends)))
    if not common:
        return []
    n_samples = max(s["samples"] for s in systems.values())
    correct = np.array([[systems[b]["correct"][u] for u in common] for b in backends])
    draws = classification.bootstrap_accuracy(correct, n_samples, seed)
    for bi, b in enumerate(backends):
        row = systems[b]["row"]
        row["accuracy_ci"] = list(scoring.percentile_ci(draws[bi]))
        row["bootstrap"] = {"samples": n_samples, "seed": seed, "utterances": len(common)}
    out = []
    for (ai, a), (bi, b) in itertools.combinations(enumerate(backends), 2):
        acc_a, acc_b = float(correct[ai].mean()), float(correct[bi].mean())
        comp = scoring.paired_difference(acc_a, acc_b, draws[ai], draws[bi])
        lo, hi = comp["ci"]
        out.append({"recipe": recipe, "metric": "accuracy", "a": a, "b": b, "accuracy_a": acc_a, "accuracy_b": acc_b,
                    "utterances": len(common), "higher_is_better": True,
                    "better": a if lo > 0 else b if hi < 0 else None, **comp})
    return out


def _tts_gallery(systems: dict[str, dict[str, Any]], backends: list[str]) -> list[dict[str, Any]]:
    """The first GALLERY_SENTENCES sentences every backend synthesized: audio paths (embedded by report.html) and
    the reference recording beside them."""
    common = sorted(set.intersection(*(set(systems[b]["utts"]) for b in backends)))
    items = []
    for key in common[:GALLERY_SENTENCES]:
        first = systems[backends[0]]["utts"][key]
        items.append({"utt": key, "text": first["text"], "ref_audio": first["ref_audio"],
                      "audio": {b: systems[b]["utts"][key]["audio"] for b in backends},
                      "scores": {b: {k: v for k, v in systems[b]["utts"][key]["scores"].items() if k in MOS_PROXIES}
                                 for b in backends}})
    return items


def _disagreements(utts: list[dict[str, Any]], backends: list[str]) -> list[dict[str, Any]]:
    """The utterances whose normalized hypotheses differ most between backends (max pairwise word edits)."""
    scored = []
    for u in utts:
        hs = [u["hyps"][b]["norm"] for b in backends]
        spread = max(scoring.word_distance(x, y) for x, y in itertools.combinations(hs, 2))
        if spread:
            scored.append((spread, sum(u["hyps"][b]["errors"] for b in backends), u))
    scored.sort(key=lambda t: (-t[0], -t[1], t[2]["utt"]))
    out = []
    for spread, _, u in scored[:DISAGREEMENTS_SHOWN]:
        out.append({"utt": u["utt"], "ref": u["ref"], "spread_words": spread,
                    "hyps": {b: {"hyp": u["hyps"][b]["norm"], "raw": u["hyps"][b]["raw"], "errors": u["hyps"][b]["errors"],
                                 "alignment": [list(t) for t in scoring.align(u["ref"], u["hyps"][b]["norm"])]}
                             for b in backends}})
    return out


def _reproducibility(cells: list[dict[str, Any]], commands: list[str]) -> dict[str, Any]:
    from spx.envinfo import environment

    here = environment()
    envs = {cell_key(c["recipe"], c["backend"]): c["env"] for c in cells if c["env"]}
    shas = sorted({e.get("spx_git_sha") for e in envs.values() if e.get("spx_git_sha")})
    locks = sorted({e.get("uv_lock_sha256_16") for e in envs.values() if e.get("uv_lock_sha256_16")})
    packages = dict(here.get("packages") or {})
    return {
        "spx_version": here.get("spx_version"),
        "git_sha_report": here.get("spx_git_sha"),
        "git_sha_runs": shas,
        "uv_lock_sha256_16": here.get("uv_lock_sha256_16"),
        "uv_lock_runs": locks,
        "python": here.get("python"),
        "platform": here.get("platform"),
        "host": here.get("host"),
        "packages": packages,
        "seeds": {cell_key(c["recipe"], c["backend"]): (c["spec"].get("training") or {}).get("seed") for c in cells},
        "commands": commands,
        "cell_commands": {cell_key(c["recipe"], c["backend"]): [" ".join(s.get("argv", [])) for s in c["steps"]]
                          for c in cells},
    }


def load_results(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if data is None:
        raise SpxError(f"results file not found: {path}", hint="pass the results.json a bench wrote")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise SpxError(f"{path} is not an spx bench results file (schema {SCHEMA!r} expected)",
                       hint="pass OUT/results.json written by `spx bench`")
    return data
