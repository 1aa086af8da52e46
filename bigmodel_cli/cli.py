"""The `bigmodel` command line: a thin Typer app in front of one Hydra app per command.

Typer only knows the command names. Everything after the command name is handed to Hydra
untouched (`sys.argv` is set for `hydra.main` and restored afterwards), so overrides,
`+key=`, `~key`, `-m` sweeps, `--cfg job`, `-p`, `--info` and Hydra's `--help` all work.
Nothing here imports torch: `bigmodel --help` and `--version` stay fast.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer

from bigmodel_cli import __version__
from bigmodel_cli.errors import EXIT_FAILED, EXIT_USAGE

app = typer.Typer(
    name="bigmodel",
    help="Config-driven training and use of neural models. "
    "Each command takes Hydra overrides (key=value); `bigmodel COMMAND --help` lists its config groups.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
)

# Typer must not parse the overrides: unknown options and extra args pass through,
# and the command's own --help goes to Hydra.
TRAINING_COMMANDS = ("pretrain", "finetune")
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bigmodel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Config-driven training and use of neural models."""


# Keys whose values are free text (`text="a, b's"`): always passed to Hydra quoted.
FREE_TEXT_KEYS = ("text", "prompt")
_KEY_VALUE = re.compile(r"^([+~]{0,2}[A-Za-z_][\w.\-/@]*)=(.*)$", re.DOTALL)


def hydra_quote(value: str) -> str:
    """Quote a value for Hydra's override grammar: it then stays a plain string, whatever
    characters it has. Backslashes matter only before a quote or the end, `${` is escaped."""
    value = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    value = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, value)
    return "'" + value.replace("${", "\\${") + "'"


def quote_free_text(args: list[str]) -> list[str]:
    """Hydra's grammar rejects unquoted non-ASCII text and reads commas as sweeps, so
    `text=央行宣布...` (the shell already removed its quotes) is quoted for Hydra here.
    The same holds for any value with non-ASCII characters (e.g. a path). A value that is
    already quoted is passed unchanged; in a list (`text=[a,b]`) with non-ASCII text and no
    quotes, each comma-separated item is quoted."""
    out = []
    for arg in args:
        match = _KEY_VALUE.match(arg)
        if match:
            key, value = match.groups()
            bare_key = key.lstrip("+~")
            unquoted = not value.startswith(("'", '"', "["))
            if unquoted and (bare_key in FREE_TEXT_KEYS or not value.isascii()):
                arg = f"{key}={hydra_quote(value)}"
            elif (value.startswith("[") and value.endswith("]") and not value.isascii()
                  and "'" not in value and '"' not in value):
                items = [item.strip() for item in value[1:-1].split(",")]
                arg = f"{key}=[{','.join(hydra_quote(item) for item in items)}]"
        out.append(arg)
    return out


def _continue_in_resumed_run(command: str, args: list[str]) -> list[str]:
    """`trainer.resume=...` continues writing into the resumed run's own directory."""
    from bigmodel_cli.errors import UsageError
    from bigmodel_cli.runs import find_resume_run

    values = [a.split("=", 1)[1] for a in args if a.startswith("trainer.resume=")]
    if (not values or values[-1].strip("'\"") in ("", "null") or "-m" in args
            or "--multirun" in args or any(a.startswith("hydra.run.dir=") for a in args)):
        return args
    try:
        run = find_resume_run(values[-1].strip("'\""), Path("outputs") / command)
    except UsageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    return [*args, f"hydra.run.dir={run}"]


def run_hydra_command(command: str, args: list[str]) -> None:
    """Run the Hydra app of `command` with `args` as its command line; map exit codes."""
    from bigmodel_cli import main as hydra_main  # imports hydra, not torch

    args = quote_free_text(args)
    if command in TRAINING_COMMANDS:
        args = _continue_in_resumed_run(command, args)
        from bigmodel_cli.engine import distributed  # imports torch only under torchrun

        args = [*args, *distributed.cli_overrides(command, args)]
    saved_argv = sys.argv
    sys.argv = [f"bigmodel {command}", *args]
    try:
        getattr(hydra_main, command)()
        from bigmodel_cli import sweeps

        if sweeps.sweep_failed:  # a multirun in which some job failed
            raise SystemExit(EXIT_FAILED)
    except SystemExit as exit_:
        code = exit_.code
        # Hydra reports config composition errors (unknown option, unknown key, bad
        # override syntax) with exit 1 before our task function starts; those are
        # usage errors for us.
        if code == EXIT_FAILED and not hydra_main.job_started:
            code = EXIT_USAGE
        raise SystemExit(code) from None
    finally:
        sys.argv = saved_argv


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def pretrain(ctx: typer.Context) -> None:
    """Pretrain a language model (masked or causal) on unlabeled text."""
    run_hydra_command("pretrain", ctx.args)


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def finetune(ctx: typer.Context) -> None:
    """Train a model on a labeled dataset."""
    run_hydra_command("finetune", ctx.args)


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def evaluate(ctx: typer.Context) -> None:
    """Score a trained run on a data split."""
    run_hydra_command("evaluate", ctx.args)


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def predict(ctx: typer.Context) -> None:
    """Predict with a trained run: labels, generated text, or mask fills."""
    run_hydra_command("predict", ctx.args)


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def export(ctx: typer.Context) -> None:
    """Export a trained run to ONNX (optionally int8), checked against the torch model."""
    run_hydra_command("export", ctx.args)


@app.command()
def report(
    directory: str = typer.Argument(..., help="A sweep directory (outputs/<command>/multirun/<date>/<time>) or a run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Summarize a sweep (one row per job, best first) or a single run."""
    import json
    from pathlib import Path

    from bigmodel_cli import sweeps

    path = Path(directory)
    if not path.is_dir():
        typer.echo(f"error: {directory}: no such directory", err=True)
        raise SystemExit(EXIT_USAGE)
    single = (path / ".hydra").is_dir()  # one run, else a sweep
    if single:
        rows = [sweeps.job_row(path)]
    else:
        rows = sweeps.collect(path)
        if not rows:
            typer.echo(f"error: {directory}: neither a run directory nor a sweep directory "
                       "(no .hydra/ in it or in its subdirectories)", err=True)
            raise SystemExit(EXIT_USAGE)
        sweeps.write_summary(path, rows)
    if as_json:
        typer.echo(json.dumps(rows[0] if single else rows, indent=2, ensure_ascii=False))
    else:
        sweeps.print_table(rows, f"{directory}: {len(rows)} run(s)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
