"""Shell completion: the scripts of `bigmodel completion SHELL`, run by real shells.

The bash tests call the completion function the way bash does (COMP_LINE, COMP_POINT,
COMP_WORDS, COMP_CWORD set) and then drive an interactive bash through a pseudo-terminal, so
that readline itself inserts the completion. The expected suggestions come from conf/ and
from Hydra's composition, not from a list written here. zsh is tested the same way where it
is installed (CI: `apt-get install -y zsh`), and fish through its `complete -C`; without
them those tests skip, saying so.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigmodel_cli.config import conf_dir

BASH_WORDBREAKS = " \t\n\"'><=;|&(:"


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory) -> dict:
    """An environment whose `bigmodel` on PATH is this checkout run by this interpreter."""
    bin_dir = tmp_path_factory.mktemp("bin")
    wrapper = bin_dir / "bigmodel"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bigmodel_cli "$@"\n')
    wrapper.chmod(0o755)
    repo = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": pythonpath, "HOME": str(bin_dir), "TERM": "dumb", "PS1": "$ "}


def bash_words(line: str) -> list[str]:
    """COMP_WORDS as bash fills it: words split at blanks, and each run of word-break
    characters (`=`, `:`, ...) a word of its own; an empty last word after a blank."""
    words = re.findall(r"[=:;|&(<>]+|[^\s=:;|&(<>]+", line)
    return [*words, ""] if not line or line[-1].isspace() else words


def bash_complete(env: dict, line: str) -> list[str]:
    """COMPREPLY after calling the completion function for `line` (cursor at its end)."""
    words = bash_words(line)
    script = ('eval "$(bigmodel completion bash)"\n'
              'COMP_LINE="$LINE"; COMP_POINT=${#COMP_LINE}\n'
              'mapfile -t COMP_WORDS <<< "$WORDS"; COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n'
              '_bigmodel_completion 2>/dev/null\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                            text=True, env={**env, "LINE": line, "WORDS": "\n".join(words)},
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.split("\n") if w]


def composed(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        return compose(config_name="finetune", overrides=list(overrides))


def keys_of(node, prefix: str) -> list[str]:
    from omegaconf import OmegaConf

    return sorted(f"{prefix}{k}." if OmegaConf.is_config(v) else f"{prefix}{k}="
                  for k, v in node.items_ex(resolve=False))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in Path(conf_dir(), group).glob("*.yaml"))


def test_bash_completes_command_names(shell_env):
    from typer.main import get_command

    from bigmodel_cli.cli import app

    commands = [n for n, c in get_command(app).commands.items() if not c.hidden]
    assert {"finetune", "evaluate", "completion", "report"} <= set(commands)
    assert bash_complete(shell_env, "bigmodel ") == commands
    assert bash_complete(shell_env, "bigmodel fi") == ["finetune"]
    assert bash_complete(shell_env, "bigmodel pr") == ["pretrain", "predict"]
    assert bash_complete(shell_env, "bigmodel --v") == ["--version"]
    assert bash_complete(shell_env, "bigmodel completion ") == ["bash", "zsh", "fish"]


def test_bash_completes_hydra_groups_options_and_keys(shell_env):
    assert bash_complete(shell_env, "bigmodel finetune mo") == ["model.", "model="]
    # bash replaces only what follows the last `=`: the options come without `model=`
    assert bash_complete(shell_env, "bigmodel finetune model=") == group_options("model")
    assert bash_complete(shell_env, "bigmodel finetune model=fa") == ["fasttext"]
    assert bash_complete(shell_env, "bigmodel finetune optimizer=") == group_options("optimizer")
    keys = bash_complete(shell_env, "bigmodel finetune optimizer.")
    assert keys == keys_of(composed().optimizer, "optimizer.")
    assert bash_complete(shell_env, "bigmodel finetune optimizer.") == keys  # from the cache
    # the overrides already typed choose what is composed
    sgd = bash_complete(shell_env, "bigmodel finetune optimizer=sgd optimizer.")
    assert sgd == keys_of(composed("optimizer=sgd").optimizer, "optimizer.") != keys_of(
        composed().optimizer, "optimizer.")
    files = bash_complete(shell_env, "bigmodel finetune data=csv data.files.")
    assert files == keys_of(composed("data=csv").data.files, "data.files.")
    assert "data.files.train=" in files
    assert bash_complete(shell_env, "bigmodel pretrain hydra/launcher=jo") == ["joblib"]
    assert bash_complete(shell_env, "bigmodel finetune --cfg ") == ["job", "hydra", "all"]
    assert bash_complete(shell_env, "bigmodel evaluate --inf") == ["--info"]
    # a missing value says nothing, so that bash completes a file name (`-o default`)
    assert bash_complete(shell_env, "bigmodel evaluate run=") == []
    assert bash_complete(shell_env, "bigmodel finetune nosuchkey.") == []


def test_composition_cache_is_keyed_by_the_config_files(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from bigmodel_cli.completion import composition_cache

    monkeypatch.setenv("BIGMODEL_CACHE_DIR", str(tmp_path / "cache"))
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "a.yaml").write_text("size: 1\n")
    first = composition_cache(str(conf), "finetune", ["model=a"], "RUN")
    assert first.get() is None
    cfg = OmegaConf.create({"model": {"size": 1, "name": "???"}, "lr": "${model.size}"})
    first.put(cfg)
    again = composition_cache(str(conf), "finetune", ["model=a"], "RUN").get()
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    assert OmegaConf.is_missing(again.model, "name") and OmegaConf.is_interpolation(again, "lr")
    assert composition_cache(str(conf), "finetune", ["model=b"], "RUN").path != first.path
    (conf / "model" / "a.yaml").write_text("size: 22\n")  # an edited config composes anew
    assert composition_cache(str(conf), "finetune", ["model=a"], "RUN").path != first.path


def test_bash_completes_report_options(shell_env):
    assert "--json" in bash_complete(shell_env, "bigmodel report --")
    assert bash_complete(shell_env, "bigmodel report ") == []  # directories: bash's own


class Terminal:
    """An interactive shell on a pseudo-terminal: type keys, read back the edited line."""

    def __init__(self, argv: list[str], env: dict, setup: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the shell
            os.execvpe(argv[0], argv, env)
        self.out = b""
        self._send(f"{setup}; echo READY\n")
        assert self._read_until(rb"\nREADY", 60), self.out.decode(errors="replace")[-2000:]

    def _send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def _read_until(self, pattern: bytes, timeout: float) -> re.Match | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    return None
                self.out += chunk
                match = re.search(pattern, self.out)
                if match:
                    return match
        return None

    def complete(self, keys: str) -> str:
        """Type `keys` (with TABs), then show what the line became: Ctrl-A goes to its start
        and `echo` prints it, with `X` typed after the completion to show any space."""
        self.out = b""
        self._send(keys + "X\x01echo LINE:\x05:END\n")
        match = self._read_until(rb"\nLINE:(.*):END\r?\n", 60)
        assert match, self.out.decode(errors="replace")[-2000:]
        return match.group(1).decode()

    def close(self) -> None:
        self._send("exit\n")
        os.close(self.fd)
        os.waitpid(self.pid, 0)


INTERACTIVE = [  # typed -> the line after completion (X typed right after the TAB)
    ("bigmodel fine\t", "bigmodel finetune X"),
    ("bigmodel finetune model=fastt\t", "bigmodel finetune model=fasttext X"),
    ("bigmodel finetune optimizer.l\t", "bigmodel finetune optimizer.lr=X"),
    ("bigmodel finetune mo\t", "bigmodel finetune modelX"),
    ("bigmodel finetune model=lstm data=cs\t", "bigmodel finetune model=lstm data=csv X"),
    ("bigmodel finetune data=csv data.files.tr\t", "bigmodel finetune data=csv data.files.train=X"),
    ("bigmodel finetune hydra/launcher=jo\t", "bigmodel finetune hydra/launcher=joblib X"),
]


def test_interactive_bash_inserts_the_completion(shell_env):
    _assert_inserts(Terminal(["bash", "--norc", "--noprofile", "-i"], shell_env,
                             'eval "$(bigmodel completion bash)"'))


def _assert_inserts(term) -> None:
    """Each INTERACTIVE key sequence leaves its expected line in the shell `term` runs."""
    try:
        for keys, line in INTERACTIVE:
            assert term.complete(keys) == line, keys
    finally:
        term.close()


@pytest.mark.skipif(shutil.which("zsh") is None,
                    reason="zsh is not installed (apt-get install -y zsh); bash is tested")
def test_interactive_zsh_inserts_the_completion(shell_env, tmp_path):
    env = {**shell_env, "ZDOTDIR": str(tmp_path)}  # no ~/.zshrc, no new-user wizard
    _assert_inserts(Terminal(["zsh", "-f", "-i"], env, 'autoload -Uz compinit && compinit -u -D '
                             '&& eval "$(bigmodel completion zsh)"'))


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_through_its_own_complete_command(shell_env):
    def fish(line: str) -> list[str]:
        script = f"bigmodel completion fish | source; complete -C '{line}'"
        result = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True,
                                text=True, env=shell_env, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert fish("bigmodel fi") == ["finetune"]
    assert fish("bigmodel finetune model=fa") == ["model=fasttext"]
    assert fish("bigmodel finetune data=csv data.files.") == keys_of(
        composed("data=csv").data.files, "data.files.")


def test_completion_imports_no_torch_and_prints_its_time(shell_env):
    code = ("import sys, time\n"
            "start = time.perf_counter()\n"
            "sys.argv = ['bigmodel', '__complete', 'bash', 'bigmodel finetune mo', '=']\n"
            "from bigmodel_cli.cli import main\n"
            "main()\n"
            "print(f'in-process {time.perf_counter() - start:.3f} s', file=sys.stderr)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=shell_env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["model.", "model="]
    print(f"\ncompletion of 'bigmodel finetune mo' {result.stderr.strip()}, imports included")
    for line in ("bigmodel ", "bigmodel finetune mo", "bigmodel finetune optimizer."):
        start = time.perf_counter()
        subprocess.run(["bigmodel", "__complete", "bash", line, BASH_WORDBREAKS], env=shell_env,
                       capture_output=True, check=True, timeout=60)
        print(f"completion of {line!r}: {time.perf_counter() - start:.3f} s, the whole process")


def test_completion_script_for_each_shell(cli):
    for shell in ("bash", "zsh", "fish"):
        result = cli("completion", shell)
        assert result.returncode == 0 and "bigmodel __complete" in result.stdout, shell
    result = cli("completion", "tcsh")
    assert result.returncode == 2 and "bash, zsh, fish" in result.stderr


def test_hydras_shell_completion_flag_points_to_the_command(cli):
    result = cli("finetune", "--shell-completion", "install=bash")
    assert result.returncode == 2
    assert "bigmodel completion bash" in result.stderr and "Traceback" not in result.stderr
