"""`spx bench`. Only click is imported at module level: `spx --help` stays instant."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from spx.cli.common import CONTEXT
from spx.errors import SpxError
from spx.registry import BACKEND_NAMES as ALL_BACKENDS



def _backends(value: str | None) -> list[str] | None:
    if value is None:  # every backend that has the recipes' task and model family (spx.bench.runner.backends_for)
        return None
    names = [b.strip() for b in value.split(",") if b.strip()]
    bad = [b for b in names if b not in ALL_BACKENDS]
    if bad or not names:
        raise SpxError(f"--backends {value!r}: unknown backend {', '.join(bad) or '(none given)'}",
                       hint=f"a comma-separated subset of {','.join(ALL_BACKENDS)}")
    return names


@click.command(context_settings=CONTEXT)
@click.argument("recipes", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--backends", default=None, help="Comma-separated backends to run [default: every backend that has "
              f"the recipes' task and model family, of {','.join(ALL_BACKENDS)}].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: runs/<recipe>-<backend>/ cells and the report files [default: bench_out; "
                   "with --from: the results.json's folder].")
@click.option("--force", is_flag=True, help="Re-run cells that already finished.")
@click.option("--from", "from_json", type=click.Path(dir_okay=False, path_type=Path),
              help="Re-render the report from a results.json; runs nothing.")
@click.option("--launcher", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="Run cells here, or submit them to Slurm (a final job writes the report).")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Cells trained side by side here [default: on CPU with resources.threads set, two trainings "
                   "per core; else 1]. Speed is always measured one cell at a time.")
@click.option("--report-only", is_flag=True, help="Write the report from the cells already in --out; runs nothing.")
@click.option("--dry-run", is_flag=True,
              help="Render the cells that would run under --out and print their native commands; run nothing.")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Spec override applied to every recipe (repeatable), e.g. -o training.epochs=5.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result rows as JSON at the end.")
@click.option("--variants", default="torch", show_default=True,
              help="Comma-separated model variants per ASR/classification cell: torch (the cell), onnx, onnx-int8, "
                   "torchscript, torchscript-int8 (each exported with `spx export` and its test set decoded on the "
                   "deploy engine): WER/accuracy, RTFx and model size side by side in the report.")
def bench(recipes, backends, out, force, from_json, launcher, report_only, overrides, seed, as_json, jobs, dry_run,
          variants):
    """Run RECIPES x backends, score them one way, and write one comparison report.

    With no RECIPES, runs the tiny conformer_ctc recipe on the embedded demo corpus (test voices held out).
    Writes OUT/report.md, report.html, report.tex, results.json, results.csv. Exits 1 when a cell failed
    (the report is still written, with the failure and its log). A backend that does not run a recipe (its family,
    task or settings) gives an `unsupported` cell with the reason: reported, not run, not a failure.

    \b
    Examples:
      spx bench                                       # demo: 3 backends, one report
      spx bench recipes/conformer_ctc.yaml --backends nemo,espnet -o training.epochs=5
      spx bench recipes/tacotron2.yaml --backends espnet,speechbrain --dry-run   # render, print the commands
      spx bench --report-only --out bench_out         # report from the finished cells
      spx bench --variants torch,onnx,onnx-int8       # + exported variants: WER, RTFx, size side by side
      spx bench --from bench_out/results.json --out paper/  # re-render, no runs
    """
    from spx.bench.runner import render_from_json, run_bench
    from spx.bench.variants import parse_variants

    variant_names = parse_variants(variants)
    if variant_names != ["torch"] and (from_json is not None or report_only or dry_run or launcher == "slurm"):
        raise SpxError("--variants runs exports after the cells train here: not with --from, --report-only, "
                       "--dry-run or --launcher slurm", where="--variants",
                       hint="spx bench RECIPE --variants torch,onnx,onnx-int8 (finished cells are reused)")
    failed: list[str] = []
    if from_json is not None:
        if recipes or report_only or dry_run:
            raise SpxError("--from takes no RECIPES, --report-only or --dry-run (it runs nothing)",
                           hint="spx bench --from OUT/results.json")
        res = render_from_json(from_json, out or from_json.resolve().parent)
    else:
        out = out or Path("bench_out")
        res, failed = run_bench(list(recipes), _backends(backends), out, force=force, launcher=launcher,
                                report_only=report_only, overrides=list(overrides), seed=seed, argv=sys.argv,
                                jobs=jobs, dry_run=dry_run, variants=variant_names)
    if as_json:
        import json

        click.echo(json.dumps(res["rows"], indent=2, default=float))
    if failed:
        from spx.errors import RunFailed

        raise RunFailed(f"{len(failed)} cell(s) failed: {', '.join(failed)}; the report keeps every other result",
                        hint=f"see the Failures section of {out.resolve() / 'report.md'} for each log")
