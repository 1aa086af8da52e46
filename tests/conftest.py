"""Shared fixtures: the real datasets, two CLI runners, and tiny trained runs per session.

`cli` runs `bigmodel ARGS...` in this process: the same Typer app, Hydra apps and exit-code
mapping as the installed command, without starting Python and importing torch again for
every call. Use `cli_process` only where a process boundary is what the test is about (the
console entry point, signals, torchrun, launchers that start processes, the wheel).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    path = Path(os.environ.get("BIGMODEL_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (path / "thucnews").is_dir():
        pytest.fail(f"datasets not found in {path}: set BIGMODEL_DATA_DIR to the folder that "
                    "holds thucnews/, sst2/, ... (see README)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return data_dir()


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory, shared_data) -> dict:
    """The environment every CLI call runs with (on top of the test process's own)."""
    return {
        "BIGMODEL_DATA_DIR": str(shared_data),
        "BIGMODEL_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "PYTHONIOENCODING": "utf-8",
    }


def process_env(env: dict) -> dict:
    full = {**os.environ, **env}
    full.pop("HYDRA_FULL_ERROR", None)
    return full


class ProcessCLI:
    """Runs `python -m bigmodel_cli ...` in a working directory, like a user in a shell."""

    def __init__(self, cwd: Path, env: dict) -> None:
        self.cwd, self.env = cwd, process_env(env)

    def __call__(self, *args: str, input: str | bytes | None = None, env: dict | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
        text = not isinstance(input, bytes)
        return subprocess.run(
            [sys.executable, "-m", "bigmodel_cli", *args], cwd=self.cwd,
            env={**self.env, **(env or {})}, input=input, capture_output=True, text=text,
            timeout=timeout,
        )


@dataclass
class Result:
    """What a finished command left: the same fields as subprocess.CompletedProcess."""

    args: tuple[str, ...]
    returncode: int
    stdout: str | bytes
    stderr: str | bytes


class InProcessCLI:
    """Runs `bigmodel ARGS...` in this process, as a user would in a shell in `cwd`.

    For each call: the working directory, the environment, sys.argv and stdin/stdout/stderr
    are those of a fresh process and are restored afterwards; the exit code comes from the
    SystemExit the CLI raises. The process-wide state a run leaves behind is reset, so
    consecutive calls do not see each other: Hydra's global instance, the logging handlers
    Hydra installed (the run's log file is closed), the run directories claimed in this
    process, the "job started" and "sweep failed" flags, and torch's thread count."""

    def __init__(self, cwd: Path, env: dict) -> None:
        self.cwd, self.env = cwd, env

    def __call__(self, *args: str, input: str | bytes | None = None, env: dict | None = None,
                 timeout: float | None = None) -> Result:
        del timeout  # a subprocess concern; an in-process run cannot be cut short safely
        binary = isinstance(input, bytes)
        data = input if binary else (input or "").encode("utf-8")
        stdout, stderr = _stream(), _stream()
        with _process_state(self.cwd, {**self.env, **(env or {})}), _own_logging():
            saved = sys.stdin, sys.stdout, sys.stderr
            sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
            sys.stdout, sys.stderr = stdout, stderr
            try:
                code = _exit_code(args)
            finally:
                sys.stdin, sys.stdout, sys.stderr = saved
        out, err = (_read(s, binary) for s in (stdout, stderr))
        return Result(args, code, out, err)


def _stream() -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace",
                            write_through=True)


def _read(stream: io.TextIOWrapper, binary: bool) -> str | bytes:
    stream.flush()
    raw = stream.buffer.getvalue()
    return raw if binary else raw.decode("utf-8", errors="replace")


def _exit_code(args: tuple[str, ...]) -> int:
    """Run the Typer app as the console script does; an uncaught exception is what a
    process would print: a traceback and exit 1."""
    from bigmodel_cli.cli import app

    try:
        app(list(args), prog_name="bigmodel")
    except SystemExit as exit_:
        code = exit_.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001  (KeyboardInterrupt included, as in a process)
        traceback.print_exc(file=sys.stderr)
        return 1
    return 0


class _process_state:
    """cwd, os.environ and the globals a command sets, restored or reset on exit."""

    def __init__(self, cwd: Path, env: dict) -> None:
        self.cwd, self.env = cwd, env

    def __enter__(self) -> None:
        import torch

        self.saved_cwd, self.saved_env = os.getcwd(), dict(os.environ)
        self.saved_argv, self.threads = list(sys.argv), torch.get_num_threads()
        os.environ.update(self.env)
        os.environ.pop("HYDRA_FULL_ERROR", None)
        os.chdir(self.cwd)
        _reset_globals()

    def __exit__(self, *exc) -> None:
        import torch

        os.chdir(self.saved_cwd)
        os.environ.clear()
        os.environ.update(self.saved_env)
        sys.argv = self.saved_argv
        torch.set_num_threads(self.threads)
        _reset_globals()


def _reset_globals() -> None:
    from hydra.core.global_hydra import GlobalHydra

    from bigmodel_cli import main, sweeps

    GlobalHydra.instance().clear()
    main._claimed_dirs.clear()
    main.job_started = False
    sweeps.sweep_failed = False


class _own_logging:
    """Hydra's job logging replaces the handlers (a console handler on the captured stderr,
    the run's log file): on exit those are closed, so nothing later writes into a finished
    run, and the handlers and levels from before are put back."""

    def __enter__(self) -> None:
        self.saved = {name: (logger.handlers[:], logger.level)
                      for name, logger in _loggers()}

    def __exit__(self, *exc) -> None:
        for name, logger in _loggers():
            handlers, level = self.saved.get(name, ([], logging.NOTSET))
            for handler in logger.handlers[:]:
                if handler not in handlers:
                    logger.removeHandler(handler)
                    handler.close()
            logger.handlers[:] = handlers
            logger.setLevel(level)


def _loggers():
    yield "", logging.root
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            yield name, logger


@pytest.fixture
def cli(tmp_path, cli_env) -> InProcessCLI:
    return InProcessCLI(tmp_path, cli_env)


@pytest.fixture
def cli_process(tmp_path, cli_env) -> ProcessCLI:
    return ProcessCLI(tmp_path, cli_env)


@pytest.fixture(scope="session")
def session_cli(tmp_path_factory, cli_env) -> InProcessCLI:
    return InProcessCLI(tmp_path_factory.mktemp("work"), cli_env)


def torchrun(cli_process: ProcessCLI, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m bigmodel_cli ARGS...` (gloo on CPU)."""
    launcher = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    return subprocess.run([launcher, "--standalone", f"--nproc_per_node={nproc}", "-m",
                           "bigmodel_cli", *args], cwd=cli_process.cwd, env=cli_process.env,
                          capture_output=True, text=True, timeout=300)


def run_dir_of(result, cwd: Path) -> Path:
    """The run directory a command printed as its last stdout line."""
    assert result.returncode == 0, result.stderr[-3000:]
    path = Path(result.stdout.strip().splitlines()[-1])
    return path if path.is_absolute() else cwd / path


# Small but real: 400 train / 200 validation / 200 test rows, 2 epochs (trainer=debug).
TINY_FASTTEXT = ("model=fasttext", "model.ngram_buckets=20000")


@pytest.fixture(scope="session")
def news_lstm_run(session_cli) -> Path:
    result = session_cli("finetune", "model=lstm", "model.embedding_dim=32",
                         "model.hidden_size=32", "data=news", "trainer=debug")
    return run_dir_of(result, session_cli.cwd)


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def evaluate_matches(cli, run: Path, keys: tuple[str, ...]) -> Path:
    """evaluate on `run` reproduces the test metrics `keys` of its metrics.json; returns
    the evaluate run directory."""
    eval_dir = run_dir_of(cli("evaluate", f"run={run}"), cli.cwd)
    got, trained = read_json(eval_dir / "metrics.json")["metrics"], read_json(run / "metrics.json")["test"]
    for key in keys:
        assert got[key] == pytest.approx(trained[key], rel=1e-5, abs=1e-9), key
    return eval_dir
