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

    if "-sc" in args or any(a.startswith("--shell-completion") for a in args):
        typer.echo("error: Hydra's --shell-completion does not work through `bigmodel`; use "
                   "`bigmodel completion bash|zsh|fish` (eval \"$(bigmodel completion bash)\" "
                   "in ~/.bashrc)", err=True)
        raise SystemExit(EXIT_USAGE)
    args = quote_free_text(args)
    if command in TRAINING_COMMANDS:
        args = _continue_in_resumed_run(command, args)
        from bigmodel_cli.engine import distributed  # imports torch only under torchrun

        args = [*args, *distributed.cli_overrides(command, args)]
    saved_argv = sys.argv
    sys.argv = [f"bigmodel {command}", *args]
    hydra_main.job_started = False  # per command: a second one in this process starts anew
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


def main() -> None:
    # Completion runs on every <TAB>: answered without Typer's argument parsing (which
    # imports pydantic), so the process stays short.
    if sys.argv[1:2] == ["__complete"] and len(sys.argv) in (4, 5):
        complete_words(*sys.argv[2:])
        return
    app()


if __name__ == "__main__":
    main()
