"""`spx manifest ...`: import, export, validate, stats, split, prepare. Module-level imports: click only."""
from __future__ import annotations

import click

from spx.cli.common import CONTEXT, echo_json

IMPORT_FORMATS = ("kaldi", "nemo", "speechbrain_csv", "speechbrain_json", "librispeech", "commonvoice", "ljspeech",
                  "audiofolder", "lhotse", "class_folders", "label_csv")
EXPORT_FORMATS = ("nemo", "speechbrain_csv", "speechbrain_json", "kaldi")
ALIASES = {"espnet": "kaldi", "sb_csv": "speechbrain_csv", "sb_json": "speechbrain_json", "common_voice": "commonvoice",
           "hf_audiofolder": "audiofolder", "librispeech_dir": "librispeech", "speech_commands": "class_folders",
           "folder_per_class": "class_folders", "csv": "label_csv", "tsv": "label_csv"}


def _format(allowed: tuple[str, ...]):
    def convert(ctx, param, value: str) -> str:
        name = ALIASES.get(value.lower().replace("-", "_"), value.lower().replace("-", "_"))
        if name not in allowed:
            raise click.BadParameter(f"{value!r} is not one of: {', '.join(allowed)}")
        return name
    return convert


@click.group(context_settings=CONTEXT)
def manifest():
    """Import, export, check, describe, split and prepare spx manifests (JSON lines, one utterance a line).

    \b
    Examples:
      spx manifest import kaldi data/train train.jsonl
      spx manifest export nemo train.jsonl nemo/train.json
      spx manifest validate train.jsonl --sample-rate 16000
      spx manifest stats train.jsonl --json
    """


@manifest.command("import", context_settings=CONTEXT)
@click.argument("fmt", metavar="FORMAT", callback=_format(IMPORT_FORMATS))
@click.argument("source", type=click.Path(exists=True))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--workers", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Threads reading audio headers (formats without durations).")
@click.option("--language", help="Language tag for utterances whose corpus does not say (e.g. en).")
@click.option("--relative", is_flag=True, help="Write audio paths relative to OUTPUT's folder (default: absolute).")
@click.option("--allow-pipes", is_flag=True, help="Kaldi: run piped wav.scp commands to measure durations without utt2dur.")
@click.option("--audio-root", type=click.Path(file_okay=False), help="Kaldi: folder relative wav.scp paths resolve against (default: cwd).")
@click.option("--data-root", help="SpeechBrain: the value of $data_root in paths.")
@click.option("--text-column", help="SpeechBrain CSV / audiofolder: the column holding the transcript.")
@click.option("--supervisions", type=click.Path(exists=True, dir_okay=False), help="Lhotse: SupervisionSet beside a RecordingSet.")
@click.option("--file-column", help="label_csv: the column holding the audio path (default: file, path, filename, ...).")
@click.option("--label-column", help="label_csv / audiofolder: the column holding the class label (default: label, "
              "class or category).")
@click.option("--splits", is_flag=True, help="OUTPUT is a folder: write OUTPUT/{train,valid,test}.jsonl by the corpus' "
              "own split (class_folders: validation_list.txt/testing_list.txt; audiofolder: split folders; label_csv: "
              "a split column). Without it, one manifest whose rows carry meta.split.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def import_(fmt, source, output, workers, language, relative, allow_pipes, audio_root, data_root, text_column, supervisions,
            file_column, label_column, splits, as_json):
    """Read a corpus in FORMAT from SOURCE and write the spx manifest OUTPUT.

    FORMAT: kaldi (espnet), nemo, speechbrain_csv, speechbrain_json, librispeech, commonvoice, ljspeech,
    audiofolder, lhotse; for classification (rows with a label): class_folders (speech_commands: a folder per
    class), label_csv (a CSV/TSV of file,label), audiofolder. Durations come from the corpus' durations file where
    it has one, else from audio headers.

    \b
    Examples:
      spx manifest import kaldi data/train train.jsonl
      spx manifest import librispeech LibriSpeech/dev-clean dev.jsonl --language en
      spx manifest import commonvoice cv-corpus/en/train.tsv cv_train.jsonl
      spx manifest import lhotse recordings.jsonl.gz out.jsonl --supervisions supervisions.jsonl.gz
      spx manifest import class_folders speech_commands_v0.02 data/kws --splits
      spx manifest import label_csv ESC-50/meta/esc50.csv esc50.jsonl --file-column filename --label-column category
    """
    from pathlib import Path

    from spx.errors import SpxError
    from spx.manifests.importers import ImportOptions, import_corpus
    from spx.manifests.io import write_manifest, write_split_manifests

    opts = ImportOptions(workers=workers, language=language, allow_pipes=allow_pipes, audio_root=audio_root,
                         data_root=data_root, text_column=text_column, file_column=file_column, label_column=label_column)
    kwargs = {"supervisions": supervisions} if supervisions else {}
    if supervisions and fmt != "lhotse":
        raise SpxError("--supervisions is for the lhotse format only", hint="drop it")
    if file_column and fmt != "label_csv":
        raise SpxError("--file-column is for the label_csv format only", hint="drop it")
    if label_column and fmt not in ("label_csv", "audiofolder"):
        raise SpxError("--label-column is for the label_csv and audiofolder formats only", hint="drop it")
    if splits and fmt not in ("class_folders", "audiofolder", "label_csv"):
        raise SpxError(f"--splits is for corpora that carry their own split (class_folders, audiofolder, label_csv), "
                       f"not {fmt}", hint="import one manifest, then split it with `spx manifest split`")
    utts = import_corpus(fmt, source, opts, **kwargs)
    if splits:
        if Path(output).is_file():
            raise SpxError(f"with --splits OUTPUT is a folder, and {output} is a file", hint="pass a folder")
        counts = write_split_manifests(output, utts, relative_to_manifest=relative)
        n = sum(counts.values())
    else:
        n = write_manifest(output, utts, relative_to_manifest=relative)
    if n == 0:
        if not splits:
            Path(output).unlink()
        raise SpxError(f"{source}: no utterances found (nothing written)", hint=f"is it really a {fmt} corpus?")
    if splits:
        echo_json({"format": fmt, "source": source, "output": output, "utterances": n, "splits": counts}) if as_json \
            else click.echo(f"{output}: {n} utterances from {fmt} {source} (" +
                            ", ".join(f"{k}.jsonl: {v}" for k, v in counts.items()) + ")")
        return
    echo_json({"format": fmt, "source": source, "output": output, "utterances": n}) if as_json else \
        click.echo(f"{output}: {n} utterances from {fmt} {source}")


@manifest.command("export", context_settings=CONTEXT)
@click.argument("fmt", metavar="FORMAT", callback=_format(EXPORT_FORMATS))
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(exists=True, dir_okay=False))
@click.argument("output", type=click.Path())
@click.option("--also", "also", multiple=True, metavar="FORMAT=PATH",
              help="Write more formats in the same pass, e.g. --also kaldi=data/train.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Processes converting byte ranges of MANIFEST in parallel.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def export(fmt, manifest_path, output, also, workers, as_json):
    """Write MANIFEST as FORMAT's native input at OUTPUT (a file; a folder for kaldi).

    FORMAT: nemo (JSONL), speechbrain_csv, speechbrain_json, kaldi (= espnet data dir: sorted, spk2utt derived,
    Kaldi-safe ids with the mapping kept in spx_id_map).

    \b
    Examples:
      spx manifest export nemo train.jsonl nemo/train.json
      spx manifest export kaldi train.jsonl data/train --also speechbrain_csv=sb/train.csv
    """
    from spx.errors import SpxError
    from spx.manifests.exporters import convert_manifest

    targets = {fmt: output}
    for item in also:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise SpxError(f"--also {item!r} is not FORMAT=PATH", hint="e.g. --also nemo=out/train.json")
        name = _format(EXPORT_FORMATS)(None, None, name)
        if name in targets:
            raise SpxError(f"format {name!r} given twice", hint="one path per format")
        targets[name] = path
    n = convert_manifest(manifest_path, targets, workers=workers)
    echo_json({"manifest": manifest_path, "utterances": n, "outputs": targets}) if as_json else \
        click.echo(", ".join(f"{path} ({name})" for name, path in targets.items()) + f": {n} utterances")


@manifest.command("validate", context_settings=CONTEXT)
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False))
@click.option("--no-audio", is_flag=True, help="Do not open the audio files (schema, ids and text only).")
@click.option("--tolerance", type=click.FloatRange(0), default=0.05, show_default=True, help="Allowed duration mismatch, seconds.")
@click.option("--sample-rate", type=click.IntRange(1), help="Every file must have this rate (default: the row's sample_rate).")
@click.option("--vocab", help="Allowed characters of text: the characters themselves, or a file holding them.")
@click.option("--require-text", is_flag=True, help="An utterance without text is a problem (ASR training data).")
@click.option("--allow-pipes", is_flag=True, help="Run piped audio commands to check them.")
@click.option("--workers", type=click.IntRange(1, 256), default=4, show_default=True, help="Threads reading audio headers.")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True, help="Problems listed (all are counted).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--features", "features_recipe", type=click.Path(dir_okay=False),
              help="Also report, per reason (pipe, codec, rate, channels, segment), the rows that a run of this recipe "
                   "reads not as they are but materialized at its features.sample_rate, mono (the audio contract; "
                   "writes nothing).")
def validate(manifest_path, no_audio, tolerance, sample_rate, vocab, require_text, allow_pipes, workers, limit, as_json,
             features_recipe):
    """Check MANIFEST: schema, duplicate ids, durations, missing/unreadable audio, duration and sample-rate
    mismatches, empty or non-UTF-8 text, characters outside --vocab. Lists every problem with its line;
    exits 2 if there is any.

    \b
    Examples:
      spx manifest validate train.jsonl
      spx manifest validate train.jsonl --sample-rate 16000 --vocab "abcdefghijklmnopqrstuvwxyz'" --json
      spx manifest validate train.jsonl --features recipes/conformer_ctc.yaml   # what a run will materialize
    """
    from pathlib import Path

    from spx.errors import SpxError
    from spx.manifests.validate import ValidateOptions, validate_manifest

    if vocab is not None and Path(vocab).is_file():
        vocab = Path(vocab).read_text(encoding="utf-8").replace("\n", "").replace("\r", "")
    opts = ValidateOptions(check_audio=not no_audio, duration_tolerance=tolerance, sample_rate=sample_rate,
                           vocabulary=vocab, require_text=require_text, allow_pipes=allow_pipes, workers=workers, limit=limit)
    report = validate_manifest(manifest_path, opts)
    contract = _audio_contract(manifest_path, features_recipe, workers) if features_recipe else None
    if as_json:
        echo_json({**report.to_json(), **({"audio_contract": contract} if contract else {})})
    else:
        if contract:
            _echo_audio_contract(manifest_path, contract)
        for p in report.problems:
            click.echo(f"{manifest_path}:{p.line}: {p.kind}: {p.message}")
        click.echo(f"{manifest_path}: {report.utterances} utterances, " +
                   (", ".join(f"{v} {k}" for k, v in sorted(report.counts.items())) or "no problems"))
    if not report.ok:
        total = sum(v for k, v in report.counts.items() if k != "piped_not_checked")
        raise SpxError(f"{total} problem(s) in {report.utterances} utterances", where=manifest_path,
                       hint="each is listed above with its line" + (f" (first {limit})" if total > limit else ""))


def _audio_contract(manifest_path: str, recipe: str, workers: int) -> dict:
    """What a run of `recipe` does with each row's audio (spx/manifests/materialize.py), writing nothing."""
    from spx.errors import SpxError
    from spx.manifests.materialize import plan_manifest
    from spx.spec import load_spec

    spec = load_spec(recipe)
    if spec.task == "tts":
        raise SpxError(f"{recipe} is a TTS recipe: its adapters re-write the audio themselves at tts.sample_rate",
                       where="--features", hint="give an ASR recipe, or use --sample-rate to check the rate")
    return plan_manifest(manifest_path, spec.features.sample_rate, workers=workers)


def _echo_audio_contract(manifest_path: str, contract: dict) -> None:
    reasons = ", ".join(f"{n} {r}" for r, n in contract["reasons"].items())
    click.echo(f"{manifest_path}: audio contract ({contract['sample_rate']} Hz, mono): {contract['as_is']} rows read as "
               f"is, {contract['materialized']} materialized" + (f" ({reasons})" if reasons else "") +
               (f", {contract['unreadable']} unreadable" if contract["unreadable"] else ""))
    for ex in contract["examples"]:
        what = f"unreadable: {ex['error']}" if "error" in ex else f"{'+'.join(ex['reasons'])}: {ex['action']}"
        click.echo(f"{manifest_path}:{ex['line']}: {ex['id']}: {what}")


@manifest.command("stats", context_settings=CONTEXT)
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False))
@click.option("--quality", is_flag=True, help="Also score the audio with DNSMOS (P.835 SIG/BAK/OVRL, P.808): data "
              "quality before training.")
@click.option("--max-utts", type=click.IntRange(min=1), default=None,
              help="With --quality: score an evenly spaced subset of this many utterances (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats(manifest_path, quality, max_utts, as_json):
    """Hours, utterances, speakers, languages, duration histogram and character set of MANIFEST.

    \b
    Examples:
      spx manifest stats train.jsonl --json
      spx manifest stats train.jsonl --quality --max-utts 500   # + DNSMOS of 500 utterances
    """
    from spx.errors import SpxError
    from spx.manifests.stats import manifest_stats, render_stats

    if max_utts is not None and not quality:
        raise SpxError("--max-utts only applies with --quality", hint="add --quality, or drop --max-utts")
    s = manifest_stats(manifest_path)
    if quality:  # onnxruntime + speechmos load only here
        from spx.bench.quality import dnsmos_manifest_stats

        s["quality"] = dnsmos_manifest_stats(manifest_path, max_utts=max_utts)
    if as_json:
        echo_json(s)
        return
    render_stats(s)
    if quality:
        render_quality(s["quality"])


def render_quality(q: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"DNSMOS of {q['utterances_scored']} of {q['utterances_total']} utterances")
    for col in ("metric", "mean", "std", "min", "p10", "median", "max"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for key in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"):
        v = q[key]
        t.add_row(key, *(f"{v[k]:.2f}" for k in ("mean", "std", "min", "p10", "median", "max")))
    console = Console()
    console.print(t)
    console.print("lowest OVRL: " + ", ".join(f"{u['id']} ({u['dnsmos_ovrl']:.2f})" for u in q["lowest_ovrl"]),
                  highlight=False)


@manifest.command("split", context_settings=CONTEXT)
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--ratios", default="0.8,0.1,0.1", show_default=True, help="train,valid,test shares (sum 1).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--speaker-disjoint", is_flag=True, help="No speaker in two splits.")
@click.option("--stratify", type=click.Choice(["label"]), help="Split each label's rows in the ratios (classification: "
              "every split keeps the class balance).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def split(manifest_path, out_dir, ratios, seed, speaker_disjoint, stratify, as_json):
    """Split MANIFEST into OUT_DIR/{train,valid,test}.jsonl by ratio, seeded, optionally speaker-disjoint or
    stratified by label.

    \b
    Examples:
      spx manifest split all.jsonl data/ --ratios 0.9,0.05,0.05 --seed 1 --speaker-disjoint
      spx manifest split kws.jsonl data/ --ratios 0.8,0.1,0.1 --stratify label
    """
    from spx.manifests.stats import parse_ratios, split_manifest

    counts = split_manifest(manifest_path, out_dir, parse_ratios(ratios), seed=seed, speaker_disjoint=speaker_disjoint,
                            stratify=stratify)
    echo_json({"out_dir": out_dir, "counts": counts}) if as_json else \
        click.echo(", ".join(f"{name}: {n}" for name, n in counts.items()) + f" -> {out_dir}")


@manifest.command("prepare", context_settings=CONTEXT)
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--sample-rate", type=click.IntRange(1000, 384000), help="Resample to this rate (soxr).")
@click.option("--mono", is_flag=True, help="Average channels to mono.")
@click.option("--loudness", type=click.FloatRange(-70, 0), help="Normalise to this integrated loudness, LUFS (e.g. -23).")
@click.option("--trim", is_flag=True, help="Trim leading/trailing silence with silero-vad.")
@click.option("--trim-padding", type=click.FloatRange(0), default=0.1, show_default=True, help="Seconds kept around speech.")
@click.option("--min-duration", type=click.FloatRange(0), help="Drop utterances shorter than this (s, after processing).")
@click.option("--max-duration", type=click.FloatRange(0), help="Drop utterances longer than this (s, after processing).")
@click.option("--workers", type=click.IntRange(1, 256), default=2, show_default=True, help="Worker processes.")
@click.option("--allow-pipes", is_flag=True, help="Run piped audio commands.")
@click.option("--force", is_flag=True, help="Redo every file (also when OUT_DIR has other settings).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def prepare(manifest_path, out_dir, sample_rate, mono, loudness, trim, trim_padding, min_duration, max_duration, workers,
            allow_pipes, force, no_progress, as_json):
    """Write processed audio to OUT_DIR/audio/ and the new manifest OUT_DIR/<MANIFEST name>.

    Resumable: re-running skips files already finished (each is written to a temp name, then renamed).

    \b
    Example: spx manifest prepare raw.jsonl prepared/ --sample-rate 16000 --mono --loudness -23 --trim --max-duration 20
    """
    from spx.errors import SpxError
    from spx.manifests.prepare import PrepareOptions, prepare_manifest

    if min_duration is not None and max_duration is not None and min_duration > max_duration:
        raise SpxError(f"--min-duration {min_duration} > --max-duration {max_duration}", hint="swap them")
    opts = PrepareOptions(sample_rate=sample_rate, mono=mono, loudness=loudness, trim=trim, trim_padding=trim_padding,
                          min_duration=min_duration, max_duration=max_duration, allow_pipes=allow_pipes)
    summary = prepare_manifest(manifest_path, out_dir, opts, workers=workers, progress=not no_progress and not as_json,
                               force=force)
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"{summary['manifest']}: kept {summary['kept']}/{summary['input']} "
                   f"(written {summary['written']}, reused {summary['reused']}, too short {summary['too_short']}, "
                   f"too long {summary['too_long']}, no speech {summary['no_speech']}); "
                   f"{summary['seconds_in'] / 3600:.3f} h -> {summary['seconds_out'] / 3600:.3f} h")
