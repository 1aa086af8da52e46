"""The `bigmodel` command line's Typer app: the command list and `--help`, `--version`,
and the commands that are not Hydra apps (runs, report, completion).

Typer only knows the Hydra commands' names (for `--help` and completion); the entry point
in launch.py hands their command lines to Hydra before Typer is imported, and the
commands below do the same when the app is called directly. Nothing here imports torch:
`bigmodel --help` and `--version` stay fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli import __version__
from bigmodel_cli.errors import EXIT_USAGE
from bigmodel_cli.launch import (  # noqa: F401  (main, hydra_quote: the package's old names)
    hydra_quote,
    main,
    quote_free_text,
    run_hydra_command,
)

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
def serve(ctx: typer.Context) -> None:
    """Serve a trained run over HTTP: batched predictions, metrics, limits."""
    run_hydra_command("serve", ctx.args)


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def export(ctx: typer.Context) -> None:
    """Export a trained run to ONNX (optionally int8), checked against the torch model."""
    run_hydra_command("export", ctx.args)


@app.command()
def report(
    directory: str = typer.Argument(..., help="A sweep directory (outputs/<command>/multirun/<date>/<time>) "
                                    "or a run directory; any other folder: the runs under it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Summarize a sweep (one row per job, best first) or a single run; for any other folder,
    list the runs under it (as `bigmodel runs DIR`)."""
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
            _list_runs(path, {}, None, as_json)
            return
        sweeps.write_summary(path, rows)
    if as_json:
        typer.echo(json.dumps(rows[0] if single else rows, indent=2, ensure_ascii=False))
    else:
        sweeps.print_table(rows, f"{directory}: {len(rows)} run(s)")


def _values(option: list[str] | None) -> list[str]:
    """`--status failed --status interrupted` or `--status failed,interrupted`."""
    return [v for item in option or [] for v in item.split(",") if v]


@app.command()
def runs(
    directory: str = typer.Argument("outputs", help="The folder to search (recursively)."),
    command: list[str] = typer.Option(None, "--command", help="Only these commands (repeat or a,b)."),
    model: list[str] = typer.Option(None, "--model", help="Only these models (model= choice)."),
    data: list[str] = typer.Option(None, "--data", help="Only these datasets (data= choice)."),
    status: list[str] = typer.Option(
        None, "--status", help="Only these: ok, failed, interrupted, paused, running, unknown."),
    limit: int = typer.Option(None, "--limit", min=0, help="At most this many rows (the newest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List every run and sweep job under a folder, newest first: command, model, data,
    status, the monitored validation metric and its test value, steps, time, directory."""
    from pathlib import Path

    from bigmodel_cli.runs import STATUSES

    path = Path(directory)
    if not path.is_dir():
        typer.echo(f"error: {directory}: no such directory", err=True)
        raise SystemExit(EXIT_USAGE)
    unknown = [s for s in _values(status) if s not in STATUSES]
    if unknown:
        typer.echo(f"error: --status {','.join(unknown)}: choose from {', '.join(STATUSES)}",
                   err=True)
        raise SystemExit(EXIT_USAGE)
    filters = {"command": _values(command), "model": _values(model), "data": _values(data),
               "status": _values(status)}
    _list_runs(path, filters, limit, as_json)


def _list_runs(path: Path, filters: dict, limit: int | None, as_json: bool) -> None:
    import json

    from bigmodel_cli.runs import format_runs, list_runs

    rows = list_runs(path, filters, limit)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    shown = f"{len(rows)} run(s)" + (" (filtered)" if any(filters.values()) else "")
    typer.echo(format_runs(rows, f"{path}: {shown}, newest first") if rows
               else f"{path}: no runs" + (" match" if any(filters.values()) else ""))


@app.command()
def completion(
    shell: str = typer.Argument(..., help="bash, zsh or fish."),
) -> None:
    """Print the shell completion script: eval "$(bigmodel completion bash)" in ~/.bashrc."""
    from bigmodel_cli import completion as comp

    if shell not in comp.SHELLS:
        typer.echo(f"error: unknown shell {shell!r}; choose one of: {', '.join(comp.SHELLS)}",
                   err=True)
        raise SystemExit(EXIT_USAGE)
    typer.echo(comp.script(shell), nl=False)


def complete_words(shell: str, line: str, wordbreaks: str = "") -> None:
    """`bigmodel __complete SHELL LINE [WORDBREAKS]`, what the completion scripts call: the
    suggestions for the last word of LINE, one per line."""
    from bigmodel_cli import completion as comp

    click_app = typer.main.get_command(app)
    commands = [name for name, cmd in click_app.commands.items() if not cmd.hidden]
    options = {name: [o for p in cmd.params for o in p.opts + p.secondary_opts if o.startswith("-")]
               for name, cmd in click_app.commands.items()}
    suggestions = comp.complete(line, commands, options)
    for suggestion in comp.for_shell(shell, suggestions, line, wordbreaks):
        typer.echo(suggestion)


if __name__ == "__main__":
    main()
