"""Shell completion: the command names, then, per command, Hydra's own override completion.

`bigmodel completion bash|zsh|fish` prints a script that registers a completion function for
`bigmodel`. On <TAB> the function runs `bigmodel __complete SHELL LINE` with the command line
up to the cursor. The first word after `bigmodel` completes to a command name; after a command
that has a primary config (conf/<command>.yaml), Hydra's completion plugin answers from the
same config loader the command itself composes with: group names (`mo` -> `model=`), the
options of a group (`model=` -> `model=lstm` ...), and the keys of the composed config
(`optimizer.` -> `optimizer.lr=` ...), with the overrides already typed applied.

Imports Hydra only, and only for a Hydra command (never torch): one completion is one short
process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

SHELLS = ("bash", "zsh", "fish")
ROOT_OPTIONS = ("--help", "--version")

# Hydra's `--shell-completion` registers completion for `python`/the script name and asks the
# program `-sc query=...`, which is not how `bigmodel` is called: `completion` replaces it.
HIDDEN_HYDRA_FLAGS = ("--shell-completion", "-sc")

_BASH = r"""# bigmodel completion for bash. Load it in ~/.bashrc with:
#     eval "$(bigmodel completion bash)"
_bigmodel_completion() {
    local IFS=$'\n'
    COMPREPLY=($(bigmodel __complete bash "${COMP_LINE:0:COMP_POINT}" "$COMP_WORDBREAKS" 2>/dev/null))
    # A group name or a config node (`model=`, `optimizer.`) is not a whole word yet.
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=./] ]]; then
        compopt -o nospace
    fi
}
complete -o default -F _bigmodel_completion bigmodel
"""

_ZSH = r"""#compdef bigmodel
# bigmodel completion for zsh. Load it in ~/.zshrc (after compinit) with:
#     eval "$(bigmodel completion zsh)"
_bigmodel() {
    local -a found whole partial
    local line="${(j: :)words[1,CURRENT-1]} $PREFIX"
    found=("${(@f)$(bigmodel __complete zsh "$line" 2>/dev/null)}")
    found=(${found:#})
    if (( ! ${#found} )); then
        _files
        return
    fi
    # A group name or a config node (`model=`, `optimizer.`) takes no space after it.
    partial=(${(M)found:#*[=./]})
    whole=(${found:#*[=./]})
    (( ${#partial} )) && compadd -U -S '' -- $partial
    (( ${#whole} )) && compadd -U -- $whole
}
compdef _bigmodel bigmodel
"""

_FISH = r"""# bigmodel completion for fish. Load it with:
#     bigmodel completion fish | source
# or save it as ~/.config/fish/completions/bigmodel.fish
complete -c bigmodel -f -a '(bigmodel __complete fish (commandline -cp) 2>/dev/null)'
"""


def script(shell: str) -> str:
    """The completion script for `shell` (bash, zsh or fish)."""
    return {"bash": _BASH, "zsh": _ZSH, "fish": _FISH}[shell]


def hydra_command(command: str) -> bool:
    """Whether `command` runs a Hydra app: its primary config conf/<command>.yaml exists."""
    from bigmodel_cli.config import conf_dir

    return command.isidentifier() and os.path.isfile(os.path.join(conf_dir(), f"{command}.yaml"))


def complete(line: str, commands: Sequence[str], options: dict[str, Sequence[str]]) -> list[str]:
    """The suggestions for the last word of `line` (the command line up to the cursor).

    `commands`: the command names; `options`: the option names of each non-Hydra command."""
    words = line.split()
    new_word = not line or line[-1].isspace()
    args = words[1:]  # without the program name
    done, current = (args, "") if new_word else (args[:-1], args[-1])
    command = next((w for w in done if not w.startswith("-")), None)
    if command is None:
        names = ROOT_OPTIONS if current.startswith("-") else commands
        return [n for n in names if n.startswith(current)]
    after = done[done.index(command) + 1:]
    if hydra_command(command):
        return hydra_suggestions(command, after, current)
    if command == "completion":
        return [s for s in SHELLS if s.startswith(current)] if not after else []
    if current.startswith("-"):
        return [o for o in options.get(command, ()) if o.startswith(current)]
    return []  # a directory argument: the shell's own file completion


def hydra_suggestions(command: str, done: list[str], current: str) -> list[str]:
    """Hydra's completion for the overrides of `command`; `done` are the words already typed."""
    from hydra._internal.utils import get_args_parser

    actions = {s: a for a in get_args_parser()._actions for s in a.option_strings}
    if current.startswith("-"):
        return sorted(s for s in actions if s.startswith(current) and s.startswith("--")
                      and s not in HIDDEN_HYDRA_FLAGS)
    previous = actions.get(done[-1]) if done else None
    if previous is not None and previous.choices:  # --cfg job|hydra|all, --info ...
        return [str(c) for c in previous.choices if str(c).startswith(current)]
    line = " ".join([*done, current])
    try:
        return drop_no_ops(_plugin().query_words(command, line), current)
    except (Exception, SystemExit):  # an override that does not parse yet: no suggestions
        return []


def _plugin():
    from hydra.plugins.completion_plugin import DefaultCompletionPlugin

    class Plugin(DefaultCompletionPlugin):
        def query_words(self, config_name: str, line: str) -> list[str]:
            return self._query(config_name=config_name, line=line)

    return Plugin(_loader())


def _loader():
    """Hydra's config loader for conf/, with two savings for completion (each <TAB> is a new
    process): the primary config is read once per request, and compositions are kept on disk."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    from bigmodel_cli.config import conf_dir

    class CompletionLoader(ConfigLoaderImpl):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self._repos: dict = {}

        def _parse_overrides_and_create_caching_repo(self, config_name, overrides):
            # Hydra's completion asks for the options of every group in turn, and each
            # question reads and copies the primary config anew (about 25 ms each); one
            # request asks with the same overrides throughout.
            key = (config_name, tuple(overrides))
            if key not in self._repos:
                self._repos[key] = super()._parse_overrides_and_create_caching_repo(
                    config_name, overrides)
            return self._repos[key]

        def load_configuration(self, config_name, overrides, run_mode, **kwargs):
            # Composing takes about 0.2 s, most of a completion's time; the same command
            # with the same overrides composes the same config until conf/ changes.
            cache = composition_cache(conf_dir(), config_name, overrides, run_mode.name)
            return cache.get() or cache.put(
                super().load_configuration(config_name, overrides, run_mode, **kwargs))

    return CompletionLoader(config_search_path=create_config_search_path(conf_dir()))


class composition_cache:
    """One composed config as JSON under <cache dir>/completion/, named by a hash of the
    command, the overrides, Hydra's version and every file's size and time under conf/."""

    KEEP = 256  # compositions kept; the oldest half goes when there are more

    def __init__(self, conf: str, config_name: str, overrides: list[str], mode: str) -> None:
        import hashlib
        import json

        import hydra

        files = sorted((os.path.relpath(os.path.join(root, name), conf),
                        os.stat(os.path.join(root, name)).st_mtime_ns,
                        os.stat(os.path.join(root, name)).st_size)
                       for root, _, names in os.walk(conf) for name in names)
        key = json.dumps([hydra.__version__, conf, config_name, list(overrides), mode, files])
        base = os.environ.get("BIGMODEL_CACHE_DIR") or os.path.join(
            os.path.expanduser("~"), ".cache", "bigmodel")
        self.dir = os.path.join(base, "completion")
        self.path = os.path.join(self.dir, hashlib.sha1(key.encode()).hexdigest() + ".json")

    def get(self):
        import json

        from omegaconf import OmegaConf

        try:
            with open(self.path, encoding="utf-8") as fh:
                return OmegaConf.create(json.load(fh))
        except (OSError, ValueError):
            return None

    def put(self, cfg):
        """Keep `cfg` (when the cache directory is writable) and return it."""
        import json

        from omegaconf import OmegaConf

        try:
            os.makedirs(self.dir, exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True), fh)
            os.replace(tmp, self.path)
            kept = sorted((e.stat().st_mtime, e.path) for e in os.scandir(self.dir))
            if len(kept) > self.KEEP:
                for _, path in kept[:len(kept) // 2]:
                    os.remove(path)
        except (OSError, TypeError, ValueError):
            pass  # no cache: the next completion composes again
        return cfg


def for_shell(shell: str, suggestions: list[str], line: str, wordbreaks: str) -> list[str]:
    """Adapt the suggestions to what the shell replaces.

    bash (readline) replaces only the text after the last COMP_WORDBREAKS character (`=` and
    `:` are among them), so `model=bert` becomes `bert` when the word typed is `model=be`."""
    if shell != "bash" or not suggestions:
        return suggestions
    word = "" if not line or line[-1].isspace() else line.split()[-1]
    breaks = set(wordbreaks) - set(" \t\n")
    cut = max((i + 1 for i, ch in enumerate(word) if ch in breaks), default=0)
    head = word[:cut]
    return [s[len(head):] if s.startswith(head) else s for s in suggestions]


def drop_no_ops(suggestions: list[str], current: str) -> list[str]:
    """Hydra answers `run=` (a value still missing) with `run=` itself; saying nothing instead
    lets the shell complete a file name there."""
    return [] if suggestions == [current] else suggestions
