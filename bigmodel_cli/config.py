"""Where the configs live, and the type check that runs before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bigmodel_cli.errors import UsageError


def conf_dir() -> str:
    """The config directory: packaged inside the wheel, or the repository's top-level conf/."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    if (packaged / "finetune.yaml").is_file():
        return str(packaged)
    return str(here.parent / "conf")


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a mapping"}


def _kind(value: Any) -> type | None:
    for kind in (bool, int, float, str):  # bool before int: True is an int in Python
        if isinstance(value, kind):
            return kind
    if isinstance(value, (list, ListConfig)):
        return list
    if isinstance(value, (dict, DictConfig)):
        return dict
    return None


def _compatible(expected: type, value: Any) -> bool:
    got = _kind(value)
    if expected is float:
        return got in (float, int)
    if expected is str:
        return got in (str, int, float)  # `column=2024` parses as an int; a name is still fine
    return got is expected


def type_errors(cfg: Any, defaults: Any, prefix: str = "") -> list[str]:
    """Compare every value with the type of its default in YAML (None defaults accept anything)."""
    errors: list[str] = []
    if not isinstance(defaults, dict) or not isinstance(cfg, dict):
        return errors
    for key, default in defaults.items():
        if key not in cfg or default is None:
            continue
        value, name = cfg[key], f"{prefix}{key}"
        if isinstance(default, str) and default.startswith("${"):
            continue  # an interpolation: its type is whatever it resolves to
        if isinstance(value, str) and value.startswith("${"):
            continue
        expected = _kind(default)
        if value is None or expected is None:
            continue
        if expected is dict:
            if isinstance(value, dict):
                errors += type_errors(value, default, f"{name}.")
            else:
                errors.append(f"{name}: expected a mapping, got {value!r}")
        elif not _compatible(expected, value):
            errors.append(
                f"{name}: expected {_TYPE_NAMES[expected]} (like {default!r}), "
                f"got {value!r} ({type(value).__name__})"
            )
    return errors


def validate(cfg: DictConfig, command: str) -> None:
    """Type-check `cfg` against the YAML defaults of the same config choices.

    The type of each key is the type of its default in conf/. Runs before any data or
    torch is loaded, so `optimizer.lr=abc` fails at once, naming the key.
    """
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UsageError("missing required value" + ("s" if len(missing) > 1 else "") + ": "
                         + ", ".join(missing) + " (give it on the command line: "
                         + " ".join(f"{key}=..." for key in missing) + ")")

    choices = HydraConfig.get().runtime.choices
    overrides = [f"{group}={choice}" for group, choice in choices.items()
                 if not group.startswith("hydra") and choice is not None]
    defaults = compose(config_name=command, overrides=overrides)
    try:  # a default given by interpolation (optimizer.lr: ${...model.lr...}) has the type
        expected = OmegaConf.to_container(defaults, resolve=True)  # of what it resolves to
    except Exception:
        expected = OmegaConf.to_container(defaults, resolve=False)
    errors = type_errors(OmegaConf.to_container(cfg, resolve=False), expected)
    if errors:
        raise UsageError("invalid config value" + ("s" if len(errors) > 1 else "") + ":\n  "
                         + "\n  ".join(errors))
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # an interpolation that cannot resolve, e.g. a missing env var
        raise UsageError(f"config does not resolve: {exc}") from None
