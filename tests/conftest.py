"""Shared fixtures: the real datasets, a CLI runner, and one tiny trained run per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    env = dict(os.environ)
    env.update({
        "BIGMODEL_DATA_DIR": str(shared_data),
        "BIGMODEL_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "PYTHONIOENCODING": "utf-8",
    })
    env.pop("HYDRA_FULL_ERROR", None)
    return env


class CLI:
    """Runs `python -m bigmodel_cli ...` in a working directory, like a user in a shell."""

    def __init__(self, cwd: Path, env: dict) -> None:
        self.cwd, self.env = cwd, env

    def __call__(self, *args: str, input: str | bytes | None = None, env: dict | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
        text = not isinstance(input, bytes)
        return subprocess.run(
            [sys.executable, "-m", "bigmodel_cli", *args], cwd=self.cwd,
            env={**self.env, **(env or {})}, input=input, capture_output=True, text=text,
            timeout=timeout,
        )


@pytest.fixture
def cli(tmp_path, cli_env) -> CLI:
    return CLI(tmp_path, cli_env)


@pytest.fixture(scope="session")
def session_cli(tmp_path_factory, cli_env) -> CLI:
    return CLI(tmp_path_factory.mktemp("work"), cli_env)


def run_dir_of(result: subprocess.CompletedProcess, cwd: Path) -> Path:
    """The run directory a command printed as its last stdout line."""
    assert result.returncode == 0, result.stderr[-3000:]
    path = Path(result.stdout.strip().splitlines()[-1])
    return path if path.is_absolute() else cwd / path


# Small but real: 400 train / 200 validation / 200 test rows, 2 epochs (trainer=debug).
TINY_FASTTEXT = ("model=fasttext", "model.ngram_buckets=20000")


@pytest.fixture(scope="session")
def news_lstm_run(session_cli) -> Path:
    result = session_cli("finetune", "model=lstm", "data=news", "trainer=debug")
    return run_dir_of(result, session_cli.cwd)


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))
