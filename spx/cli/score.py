"""`spx score audio DIR`: speech-quality metrics of any folder of audio (imports stay lazy)."""
from __future__ import annotations

from pathlib import Path

import click

from spx.cli.common import CONTEXT, echo_json
from spx.errors import SpxError

METRIC_NAMES = ("dnsmos", "distillmos", "utmos", "mcd", "f0", "speaker_similarity", "intelligibility")  # = quality.METRICS


@click.group(context_settings=CONTEXT)
def score():
    """Score audio with speech-quality metrics (MOS proxies, MCD, F0, speaker similarity, intelligibility)."""


def _texts_from(path: Path) -> dict[str, str]:
    """id -> text from an spx manifest; a row also answers to its audio file's name (without extension)."""
    from spx.manifests import iter_manifest

    texts: dict[str, str] = {}
    for u in iter_manifest(path):
        if u.text is not None:
            texts[u.id] = u.text
            texts.setdefault(Path(u.audio).stem, u.text)
    if not texts:
        raise SpxError(f"{path}: no row has a 'text'", hint="--text takes an spx manifest whose rows have text")
    return texts


def _refs_from(ref_dir: Path) -> dict[str, Path]:
    from spx.bench.quality_audio import audio_files

    return {p.stem: p for p in audio_files(ref_dir)}


@score.command("audio", context_settings=CONTEXT)
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--ref", "ref_dir", type=click.Path(path_type=Path),
              help="Folder of reference recordings with the same file names (enables MCD, F0 RMSE, speaker similarity).")
@click.option("--text", "text_manifest", type=click.Path(path_type=Path),
              help="spx manifest with the texts (matched by id or audio file name) for WER/CER of the judge.")
@click.option("--judge", default=None, metavar="MODEL|RUN_DIR",
              help="Intelligibility judge: a faster-whisper model name/dir or an spx ASR run dir (default: bundled whisper tiny.en).")
@click.option("--metrics", default=None, metavar="LIST",
              help=f"Comma-separated subset of: {', '.join(METRIC_NAMES)} (default: all that the inputs allow).")
@click.option("--normalizer", type=click.Choice(["whisper_english", "basic", "none"]), default="whisper_english",
              show_default=True, help="Text normalizer applied to texts and judge transcripts before WER/CER.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads per metric model (default: $SPX_QUALITY_THREADS or 1).")
@click.option("--per-utt", is_flag=True, help="Also print one row per file.")
@click.option("--json", "as_json", is_flag=True, help="Print everything (means, per-utterance values, versions) as JSON.")
def score_audio(directory, ref_dir, text_manifest, judge, metrics, normalizer, threads, per_utt, as_json):
    """Score every .wav/.flac file in DIRECTORY (id = file name without extension).

    \b
    Examples:
      spx score audio synth/                                   # MOS proxies only
      spx score audio synth/ --ref data/wavs --text test.jsonl # + MCD, F0, speaker sim, WER
      spx score audio synth/ --text test.jsonl --judge runs/conformer_ctc-nemo --json
    """
    import os

    from spx.bench.quality import score_audio_files
    from spx.bench.threads import THREADS_ENV
    from spx.bench.quality_audio import audio_files

    if threads is not None:
        os.environ[THREADS_ENV] = str(threads)

    if not directory.exists():
        raise SpxError(f"audio folder not found: {directory}", hint="pass a folder of .wav/.flac files")
    files = audio_files(directory)
    refs = None
    if ref_dir is not None:
        if not ref_dir.is_dir():
            raise SpxError(f"--ref {ref_dir}: not a directory", hint="pass the folder of reference recordings")
        refs = _refs_from(ref_dir)
        if not any(f.stem in refs for f in files):
            raise SpxError(f"--ref {ref_dir}: no file name matches one in {directory}",
                           hint="reference files must have the same names (without extension) as the scored files")
    texts = _texts_from(text_manifest) if text_manifest is not None else None
    chosen = [m.strip() for m in metrics.split(",")] if metrics else None
    if chosen is not None:
        unknown = sorted(set(chosen) - set(METRIC_NAMES))
        if unknown:
            raise SpxError(f"--metrics: unknown metric(s) {', '.join(unknown)}", hint=f"choose from: {', '.join(METRIC_NAMES)}")
    if judge is not None and texts is None:
        raise SpxError("--judge needs --text (the sentences to compare the judge's transcripts with)", hint="add --text MANIFEST")
    if texts is None and (chosen is None or "intelligibility" in chosen):
        chosen = [m for m in (chosen or METRIC_NAMES) if m != "intelligibility"]
    result = score_audio_files(files, refs=refs, texts=texts, judge=judge, normalizer=normalizer, metrics=chosen)
    if texts is None:
        result["unavailable"]["intelligibility"] = "no --text manifest"
    if as_json:

        echo_json(result)
    else:
        _render(result, directory, per_utt)


LABELS = {
    "dnsmos_ovrl": ("DNSMOS OVRL (P.835)", "1-5, higher is better"), "dnsmos_sig": ("DNSMOS SIG", "1-5"),
    "dnsmos_bak": ("DNSMOS BAK", "1-5"), "dnsmos_p808": ("DNSMOS P.808", "1-5"), "distillmos": ("DistillMOS", "1-5"),
    "utmos": ("UTMOS", "1-5"), "mcd": ("MCD (DTW)", "dB, lower is better"), "f0_rmse": ("F0 RMSE", "Hz, lower is better"),
    "vde": ("Voicing decision error", "fraction"), "speaker_similarity": ("Speaker similarity", "cosine, higher is better"),
    "wer": ("WER (judge)", "lower is better"), "cer": ("CER (judge)", "lower is better"),
    "synthesis_rtf": ("Synthesis RTF", "lower is faster"),
}


def _render(result: dict, directory: Path, per_utt: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{directory}: {result['utterances']} files")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("n", justify="right")
    table.add_column("scale")
    for key, (label, scale) in LABELS.items():
        if result.get(key) is None:
            continue
        n = sum(u.get(key) is not None for u in result["per_utt"]) if key not in ("wer", "cer", "synthesis_rtf") else \
            result.get("intelligibility", {}).get("utterances", result["utterances"])
        value = f"{100 * result[key]:.1f}%" if key in ("wer", "cer") else f"{result[key]:.3f}"
        table.add_row(label, value, str(n), scale)
    console.print(table)
    if result.get("intelligibility"):
        j = result["intelligibility"]["judge"]
        console.print(f"judge: {j.get('model') or j.get('run_dir')} ({j['kind']}); normalizer: {result['intelligibility']['normalizer']}")
    for metric, why in result.get("unavailable", {}).items():
        console.print(f"[yellow]{metric}[/]: unavailable: {why}")
    if per_utt:
        keys = [k for k in ("dnsmos_ovrl", "distillmos", "utmos", "mcd", "f0_rmse", "speaker_similarity")
                if any(u.get(k) is not None for u in result["per_utt"])]
        t = Table(title="per file")
        t.add_column("id")
        for k in keys:
            t.add_column(k, justify="right")
        t.add_column("judge transcript")
        for u in result["per_utt"]:
            t.add_row(u["id"], *[("-" if u.get(k) is None else f"{u[k]:.3f}") for k in keys], u.get("judge_hyp", ""))
        console.print(t)
