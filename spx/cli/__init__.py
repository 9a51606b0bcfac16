"""spx command line. Keep imports here light: `spx --help` must not import torch, pydantic models or toolkits."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from spx.cli.common import CONTEXT, echo_json
from spx.errors import SpxError
from spx.registry import BACKEND_NAMES



@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="spx")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """spx: one framework-neutral recipe, trained and compared on NeMo, SpeechBrain and ESPnet.

    \b
    Examples:
      spx bench                                      # demo: 3 backends, one report
      spx run --backend nemo recipes/conformer_ctc.yaml training.epochs=5
      spx manifest import kaldi data/train train.jsonl
    """
    ctx.obj = {"debug": debug}


# ---------------------------------------------------------------- run / exec
@cli.command(context_settings=CONTEXT)
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--backend", "-b", type=click.Choice(BACKEND_NAMES), help="Toolkit to run on.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), help="Where to write the run (default runs/NAME-BACKEND-TIME).")
@click.option("--launcher", type=click.Choice(["local", "slurm"]),
              help="Override resources.launcher (local runs N-device steps under torchrun itself).")
@click.option("--dry-run", is_flag=True, help="Render the run dir and print the native commands; run nothing.")
@click.option("--resume", "resume", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Continue an interrupted run dir from its last checkpoint.")
@click.option("--force", is_flag=True, help="Overwrite an existing run dir.")
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics as JSON.")
def run(recipe, overrides, backend, run_dir, launcher, dry_run, resume, force, as_json):
    """Translate RECIPE into BACKEND's native recipe, train, decode the test set and score it.

    OVERRIDES are dotlist settings applied on top of the recipe, e.g. `training.epochs=5`.

    \b
    Examples:
      spx run -b speechbrain recipes/conformer_ctc.yaml
      spx run -b espnet recipes/conformer_ctc.yaml --dry-run
      spx run --resume runs/conformer_ctc_tiny-nemo-20261122-101500
    """
    from spx.launchers import launch
    from spx.rundir import RunDir

    if resume is not None:
        if recipe is not None:
            raise SpxError("--resume takes the run dir only, not a recipe", hint="spx run --resume RUN_DIR")
        rd = RunDir(resume)
        rd.read_steps()
    else:
        if recipe is None or backend is None:
            raise SpxError("spx run needs a RECIPE and --backend", hint="spx run --backend nemo recipes/conformer_ctc.yaml")
        from spx.runner import default_run_dir, render_run
        from spx.spec import load_spec

        spec = load_spec(recipe, list(overrides) + ([f"resources.launcher={launcher}"] if launcher else []))
        rd = render_run(spec, backend, run_dir or default_run_dir(spec, backend), force=force)
    if dry_run:
        click.echo(f"rendered {rd.path}")
        click.echo((rd / "command.sh").read_text())
        return
    metrics = launch(rd)
    if metrics is not None and as_json:
        echo_json(metrics)


@cli.command("exec", context_settings=CONTEXT, hidden=True)
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--until-timed", is_flag=True,
              help="Stop before the first step that measures speed (state 'waiting'); `spx bench --jobs` uses it.")
def exec_(run_dir, until_timed):
    """Run RUN_DIR's steps here (used inside Slurm jobs and by the local launcher), then score it."""
    from spx.rundir import RunDir

    if until_timed:
        from spx.launchers.execute import execute

        execute(RunDir(run_dir), on_progress=lambda step, fields: None, until_timed=True)  # progress: in the step logs
        return
    from spx.launchers.local import run_here

    run_here(RunDir(run_dir))


# ---------------------------------------------------------------- spec
@cli.group(context_settings=CONTEXT)
def spec():
    """Validate, show and describe job specs (recipes)."""


@spec.command("validate", context_settings=CONTEXT)
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
def spec_validate(recipe, overrides):
    """Check RECIPE (and OVERRIDES); exit 2 with file:line and key on the first problem.

    \b
    Example: spx spec validate recipes/conformer_ctc.yaml training.epochs=5
    """
    from spx.spec import load_spec

    s = load_spec(recipe, list(overrides))
    click.echo(f"{recipe}: ok ({s.task}, {s.model.family})")


@spec.command("show", context_settings=CONTEXT)
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
def spec_show(recipe, overrides, as_json):
    """Print the resolved spec: defaults filled in, overrides applied, paths absolute.

    \b
    Example: spx spec show recipes/conformer_ctc.yaml model.encoder.layers=4
    """
    from spx.spec import load_spec, spec_to_yaml

    s = load_spec(recipe, list(overrides))
    if as_json:
        echo_json(s.model_dump(mode="json"))
    else:
        click.echo(spec_to_yaml(s), nl=False)


@spec.command("schema", context_settings=CONTEXT)
def spec_schema():
    """Print the JSON Schema of recipes (point your editor's YAML plugin at it).

    \b
    Example: spx spec schema > spx-recipe.schema.json
    """
    from spx.spec import Spec

    echo_json(Spec.model_json_schema())


# ---------------------------------------------------------------- doctor
@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True)
def doctor(as_json):
    """Which backends import and at what versions; torch, CUDA, GPUs; Slurm, ffmpeg, sox.

    \b
    Example: spx doctor --json
    """
    from spx.doctor import report, render

    data = report()
    echo_json(data) if as_json else render(data)
    if not all(b["ok"] for b in data["backends"].values()):
        sys.exit(1)


def _register_commands() -> None:
    """The command groups, one module each in this package (each keeps its imports lazy)."""
    from spx.cli import bench, deploy, manifest, runs, score

    cli.add_command(manifest.manifest)
    cli.add_command(bench.bench)
    cli.add_command(score.score)
    for command in (runs.status, runs.logs, runs.cancel, deploy.export, deploy.serve):
        cli.add_command(command)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="spx", standalone_mode=False)
    except SpxError as exc:
        if debug:
            raise
        _print_error(exc.one_line(), exc.hint)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _print_error("aborted", None)
        sys.exit(130)
    except KeyboardInterrupt:
        _print_error("interrupted", "resume with: spx run --resume RUN_DIR")
        sys.exit(130)
    except click.ClickException as exc:
        if debug:
            raise
        _print_error(exc.format_message(), "see --help")
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # an spx bug or an environment problem: one line, traceback with --debug
        if debug:
            raise
        _print_error(f"internal error: {type(exc).__name__}: {exc}", "re-run with --debug for the traceback")
        sys.exit(1)


def _print_error(message: str, hint: str | None) -> None:
    from rich.console import Console

    from rich.text import Text

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(Text.assemble(("error: ", "bold red"), message))
    if hint:
        console.print(Text("hint: " + hint, style="dim"))


if __name__ == "__main__":
    main()
