"""Where the configs live, and the type check that runs before any work starts."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from bigmodel_cli import schema
from bigmodel_cli.errors import UsageError

# `${bigmodel_if:COND,A,B}`: A when COND is true, else B (conf/model/: model.lr is lora.lr
# while LoRA is on). Registered here, where every composition (commands, tests) imports from.
OmegaConf.register_new_resolver("bigmodel_if", lambda cond, a, b: a if cond else b, replace=True)


def conf_dir() -> str:
    """The config directory: packaged inside the wheel, or the repository's top-level conf/."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    if (packaged / "finetune.yaml").is_file():
        return str(packaged)
    return str(here.parent / "conf")


def config_errors(cfg: DictConfig) -> list[str]:
    """Every key of `cfg` that is not what bigmodel_cli/schema.py declares, as
    `key: expected ..., got ...`, in config order. Interpolations are resolved first
    (`${oc.select:model.lr,0.005}` is checked as the number it gives); one that cannot
    resolve is reported under its key."""
    errors: list[str] = []
    _check_node(cfg, (), errors)
    return errors


def _check_node(node: DictConfig, names: tuple[str, ...], errors: list[str]) -> None:
    for key in node.keys():
        here = (*names, str(key))
        path = ".".join(here)
        if schema.exempt(here):
            continue
        try:
            value = node[key]  # resolves an interpolation
            if isinstance(value, ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
        except Exception as exc:  # e.g. ${oc.env:VAR} with VAR unset
            errors.append(f"{path}: does not resolve: {' '.join(str(exc).split())}")
            continue
        spec = schema.spec_for(here)
        if isinstance(value, DictConfig):
            if spec is None or spec.kind == "map":
                _check_node(value, here, errors)
            else:
                errors.append(f"{path}: expected {spec.describe()}, got a mapping")
        elif spec is not None:  # keys added with +key=value are the user's own
            error = schema.value_error(path, spec, value)
            if error:
                errors.append(error)


def validate(cfg: DictConfig, command: str) -> None:
    """Check `cfg`, the composed config of `command`, against bigmodel_cli/schema.py.

    Every key has a declared type and range there (one table for every command), null
    defaults included. Runs before any data or torch is loaded, so `optimizer.lr=abc` or
    `trainer.max_steps=abc` fails at once; every bad key is named in one message.
    """
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UsageError("missing required value" + ("s" if len(missing) > 1 else "") + ": "
                         + ", ".join(missing) + " (give it on the command line: "
                         + " ".join(f"{key}=..." for key in missing) + ")")
    errors = config_errors(cfg)
    if errors:
        raise UsageError(f"invalid config value{'s' if len(errors) > 1 else ''} for {command}:"
                         "\n  " + "\n  ".join(errors))
