"""The `bigmodel` entry point, and the hand-over of a command line to a Hydra app.

The Hydra commands (pretrain, finetune, evaluate, predict, serve, export) take everything
after the command name as Hydra's command line: `sys.argv` is set for `hydra.main` and
restored afterwards, so overrides, `+key=`, `~key`, `-m` sweeps, `--cfg job`, `-p`,
`--info` and Hydra's `--help` all work. They are handed on from here without importing
Typer (whose parsing imports pydantic): that was about a quarter of `bigmodel finetune
--cfg job`. Every other command line (`--help`, `runs`, `report`, `completion`) goes to the
Typer app in cli.py. Nothing here imports torch.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from bigmodel_cli.errors import EXIT_FAILED, EXIT_USAGE

TRAINING_COMMANDS = ("pretrain", "finetune")
HYDRA_COMMANDS = (*TRAINING_COMMANDS, "evaluate", "predict", "serve", "export")

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
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    return [*args, f"hydra.run.dir={run}"]


def run_hydra_command(command: str, args: list[str]) -> None:
    """Run the Hydra app of `command` with `args` as its command line; map exit codes."""
    from bigmodel_cli import main as hydra_main  # imports hydra, not torch

    if "-sc" in args or any(a.startswith("--shell-completion") for a in args):
        print("error: Hydra's --shell-completion does not work through `bigmodel`; use "
              "`bigmodel completion bash|zsh|fish` (eval \"$(bigmodel completion bash)\" "
              "in ~/.bashrc)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    args = quote_free_text(args)
    if command in TRAINING_COMMANDS:
        args = _continue_in_resumed_run(command, args)
        from bigmodel_cli.engine import distributed  # imports torch only under torchrun

        args = [*args, *distributed.cli_overrides(command, args)]
    saved_argv = sys.argv
    sys.argv = [f"bigmodel {command}", *args]
    # Per command: a second one in this process (a script, a test session) starts anew,
    # and claims its own run directory even when it starts in the same second.
    hydra_main.job_started = False
    hydra_main._claimed_dirs.clear()
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


def end_process(code: int | None) -> None:
    """Exit with `code`. A process that created a torch.distributed group exits without
    interpreter finalization: a gloo worker thread that releases its last collective's
    tensors then needs the GIL, which a finalizing interpreter answers by ending the thread
    inside C++, and the process aborts (SIGABRT, "terminate called without an active
    exception") after its run succeeded (2 of 34 paused 2-rank FSDP runs). Every file
    of the run is closed by then; logs and the terminal are flushed here first."""
    distributed = sys.modules.get("bigmodel_cli.engine.distributed")
    if distributed is None or not distributed.group_created:
        raise SystemExit(code)
    import logging  # only here: `bigmodel --help` does not need it

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in HYDRA_COMMANDS:
        try:
            run_hydra_command(sys.argv[1], sys.argv[2:])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        end_process(code)
    from bigmodel_cli import cli

    # Completion runs on every <TAB>: answered without Typer's argument parsing (which
    # imports pydantic), so the process stays short.
    if sys.argv[1:2] == ["__complete"] and len(sys.argv) in (4, 5):
        cli.complete_words(*sys.argv[2:])
        return
    cli.app()
