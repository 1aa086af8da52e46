"""Every config key has a declared type and range (bigmodel_cli/schema.py), checked before any
work starts: the table covers every key of every option of every group, each YAML default fits
it, and a wrong value of any key (null defaults included) exits 2 naming the key."""

from __future__ import annotations

import copy
import functools
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from bigmodel_cli import schema
from bigmodel_cli.config import conf_dir, config_errors
from bigmodel_cli.schema import number, one_of, spec_for

CONF = Path(conf_dir())
# Primary configs: the YAML files at the top of conf/ that name their own Hydra job.
PRIMARY = tuple(sorted(p.stem for p in CONF.glob("*.yaml")
                       if OmegaConf.select(OmegaConf.load(p), "hydra.job.name") == p.stem))


def _options(group: str) -> list[str]:
    base = CONF / group
    return sorted(p.relative_to(base).with_suffix("").as_posix() for p in base.rglob("*.yaml"))


@functools.cache
def compositions() -> tuple[tuple[str, tuple[str, ...], DictConfig], ...]:
    """(primary, overrides, composed config): each primary with its defaults, and every other
    option of every config group a primary composes. An option's keys are the same under
    each primary that has its group (a primary adds its own keys, which its defaults show),
    so an option is composed under the first primary it composes with."""
    out, groups = [], {}
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        for primary in PRIMARY:
            choices = compose(primary, return_hydra_config=True).hydra.runtime.choices
            out.append((primary, (), compose(primary)))
            for group, default in choices.items():
                if not group.startswith("hydra") and default is not None:
                    groups.setdefault(group, []).append((primary, default))
        for group, primaries in groups.items():
            for option in _options(group):
                out += _compose_somewhere(group, option, primaries)
    return tuple(out)


def _compose_somewhere(group: str, option: str, primaries: list[tuple[str, str]]) -> list:
    overrides = (f"{group}={option}",)
    for primary, default in primaries:
        if option == default:
            return []  # in that primary's default composition already
        try:
            return [(primary, overrides, compose(primary, list(overrides)))]
        except ConfigCompositionException:
            continue  # e.g. pretrain fixes task=lm after data, so data=diabetes is refused
    NOT_COMPOSING.append(overrides[0])
    return []


NOT_COMPOSING: list[str] = []


def leaves(node: dict, names: tuple[str, ...] = ()):
    """(names, value) of every leaf of a plain nested dict (an empty mapping is a leaf)."""
    for key, value in node.items():
        here = (*names, str(key))
        if isinstance(value, dict) and value:
            yield from leaves(value, here)
        else:
            yield here, value


def _leaves_of(cfg: DictConfig):
    plain = OmegaConf.to_container(cfg, resolve=False)  # ??? and ${...} stay as written
    return [(names, value) for names, value in leaves(plain) if not schema.exempt(names)]


def test_primary_configs_are_found():
    assert {"pretrain", "finetune", "evaluate", "predict"} <= set(PRIMARY)
    groups = {overrides[0].split("=")[0] for _, overrides, _ in compositions() if overrides}
    assert {"model", "data", "task", "optimizer", "scheduler", "device", "trainer"} <= groups
    assert NOT_COMPOSING == []  # every option composes with some primary config


def test_every_key_of_every_option_is_declared():
    undeclared: dict[str, str] = {}  # key -> the first composition that has it
    for primary, overrides, cfg in compositions():
        for names, _ in _leaves_of(cfg):
            if spec_for(names) is None:
                undeclared.setdefault(".".join(names), f"bigmodel {primary} {' '.join(overrides)}")
    assert not undeclared, "declare these keys in bigmodel_cli/schema.py KEYS:\n" + "\n".join(
        f"  {key}  (in {where.strip()})" for key, where in undeclared.items())


def test_every_declared_key_is_in_some_config():
    present = set()
    for _, _, cfg in compositions():
        for names, _ in _leaves_of(cfg):
            present |= {".".join(names[:n]) for n in range(1, len(names) + 1)}
    stale = sorted(key for key in schema.KEYS
                   if (key[:-2] if key.endswith(".*") else key) not in present)
    assert not stale, f"keys in bigmodel_cli/schema.py that no config has: {stale}"


def test_every_default_fits_its_declared_type():
    """Each option's own values pass, interpolations resolved where the composition allows
    (task=lm under finetune's lstm has no model.causal; a ??? value has no default yet)."""
    bad = sorted({f"{error} ({primary} {' '.join(overrides)})"
                  for primary, overrides, cfg in compositions()
                  for error in config_errors(cfg) if ": does not resolve:" not in error})
    assert not bad, "\n".join(bad)


# Combinations that fit together, with the required values given: no error at all.
GOOD = [("finetune", []), ("finetune", ["model=cnn", "data=digits"]),
        ("finetune", ["model=mlp", "data=diabetes"]), ("finetune", ["model=vit", "data=fashion_mnist"]),
        ("finetune", ["model=hf", "data=sst2"]), ("finetune", ["model=bert_tiny", "data=ag_news"]),
        ("finetune", ["data=csv", "data.files.train=t.csv"]),
        ("finetune", ["model=mlp", "data=tabular", "data.files.train=t.csv", "data.target=y"]),
        ("finetune", ["model=cnn", "data=image_folder", "data.path=images"]),
        ("pretrain", []), ("pretrain", ["model=gpt", "data=tinyshakespeare"]),
        ("pretrain", ["model=gpt_tiny", "data=wikitext2"]),
        ("pretrain", ["data=text", "data.files.train=c.txt"]),
        ("evaluate", ["run=r"]), ("predict", ["run=r"])]


def _errors(command: str, overrides: list[str]) -> list[str]:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return config_errors(compose(command, overrides))


@pytest.mark.parametrize(("command", "overrides"), GOOD, ids=[f"{c} {' '.join(o)}" for c, o in GOOD])
def test_composed_defaults_pass(command, overrides):
    assert _errors(command, overrides) == []


# A wrong value for each kind of spec: (override text, the same as a Python value).
def wrong_value(spec: schema.Spec) -> tuple[str, object]:
    if spec.choices:
        wrong = ("2", 2) if isinstance(spec.choices[0], int) else ("nonsense", "nonsense")
    elif spec.kind == "bool":
        wrong = ("maybe", "maybe")
    elif spec.kind == "str":  # text=/prompt= values are always quoted by the CLI: nest a list
        wrong = ("[[a]]", [["a"]]) if spec.many else ("true", True)
    else:  # int, float, list, mapping
        wrong = ("abc", "abc")
    assert not spec.accepts(wrong[1]), spec
    return wrong


def _null_default_keys() -> dict[tuple[str, ...], tuple[str, tuple[str, ...], DictConfig]]:
    """Each key whose default is null somewhere -> the first composition that has it."""
    found: dict = {}
    for primary, overrides, cfg in compositions():
        for names, value in _leaves_of(cfg):
            if value is None and names not in found:
                found[names] = (primary, overrides, cfg)
    return found


def _placeholders(cfg: DictConfig) -> list[str]:
    """Values for the ??? keys, so that the type check is what fails."""
    return [f"{key}=placeholder" for key in sorted(OmegaConf.missing_keys(cfg))]


def _addressable(names: tuple[str, ...]) -> bool:
    """Whether a command-line override reaches the key: not a name with a dot in it
    (data.upstream.sha256.class.txt), not one the CLI reads before Hydra (trainer.resume)."""
    return all("." not in n for n in names) and names != ("trainer", "resume")


def test_null_default_keys_are_known():
    names = {".".join(n) for n in _null_default_keys()}
    assert {"trainer.max_steps", "trainer.eval_every_steps", "trainer.max_train_samples",
            "trainer.early_stopping_patience", "device.threads", "top_k", "model.init_from",
            "data.image_size", "data.features", "split", "format"} <= names


def _run_app(command: str, args: list[str], capsys) -> tuple[int, str]:
    """The Hydra app of `command`, in this process, as `bigmodel COMMAND args` runs it.
    The logging Hydra set up for the run (and the started-job flag) are undone afterwards,
    so later tests do not log into this test's captured stream or run directory."""
    from bigmodel_cli import main
    from bigmodel_cli.cli import run_hydra_command

    root, started = logging.getLogger(), main.job_started
    handlers, level = root.handlers[:], root.level
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_:
            run_hydra_command(command, args)
    finally:
        for handler in set(root.handlers) - set(handlers):
            handler.close()
        root.handlers[:], main.job_started = handlers, started
        root.setLevel(level)
    return exit_.value.code, capsys.readouterr().err


def test_every_null_default_key_rejects_a_wrong_type(tmp_path, monkeypatch, capsys):
    """Every key whose default is null, given a value of the wrong type, exits 2 naming the
    key, the expected type and the value; one run per composition names all of its keys."""
    monkeypatch.chdir(tmp_path)  # run directories land here
    runs: dict[tuple, tuple[DictConfig, list]] = {}
    for names, (primary, overrides, cfg) in _null_default_keys().items():
        if _addressable(names):
            runs.setdefault((primary, overrides), (cfg, []))[1].append(names)
            continue
        node = parent = copy.deepcopy(cfg)  # no override reaches it: set it in the config
        for name in names[:-1]:
            parent = parent[name]
        parent[names[-1]] = wrong_value(spec_for(names))[1]
        assert any(e.startswith(f"{'.'.join(names)}: expected") for e in config_errors(node))
    assert sum(len(keys) for _, keys in runs.values()) >= 25
    for (primary, overrides), (cfg, keys) in runs.items():
        wrong = {".".join(n): wrong_value(spec_for(n)) for n in keys}
        args = [*overrides, *_placeholders(cfg), *(f"{k}={v[0]}" for k, v in wrong.items())]
        code, err = _run_app(primary, args, capsys)
        assert code == 2, err
        lines = {line.split(":")[0].strip(): line for line in err.splitlines()}
        for key, (_, value) in wrong.items():
            assert lines[key].startswith(f"  {key}: expected "), (key, err)
            assert lines[key].endswith(f", got {schema.show(value)}"), (key, err)
        assert err.count("error:") == 1 and "Traceback" not in err


def test_null_default_keys_still_take_good_values():
    assert _errors("finetune", ["trainer.max_steps=5", "trainer.eval_every_steps=10",
                                "trainer.max_train_samples=100", "trainer.early_stopping_patience=2",
                                "device.threads=2", "trainer.grad_clip=null"]) == []
    assert _errors("predict", ["run=r", "top_k=0", "format=text", "text=[a,2024]"]) == []


# (command, the options chosen) -> each override with the start of the message it must give.
# One composition per entry: every bad key is reported, so the overrides do not hide each other.
BAD = {
    ("finetune", ()): [
        ("optimizer.lr=0", "optimizer.lr: expected a number > 0, got 0 (int)"),
        ("trainer.batch_size=0", "trainer.batch_size: expected an integer >= 1, got 0"),
        ("trainer.epochs=true", "trainer.epochs: expected an integer >= 1, got True"),
        ("trainer.max_train_samples=1.5",
         "trainer.max_train_samples: expected an integer >= 1 or null, got 1.5 (float)"),
        ("trainer.max_steps=0", "trainer.max_steps: expected an integer >= 1 or null, got 0"),
        ("trainer.monitor_mode=maximum",
         "trainer.monitor_mode: expected one of max, min, got 'maximum'"),
        ("trainer.progress=fancy", "trainer.progress: expected one of auto, bar, log, off"),
        ("model.dropout=1.0", "model.dropout: expected a number in [0, 1), got 1.0"),
        ("model.hidden_size=-3", "model.hidden_size: expected an integer >= 1"),
        ("model.pooling=median", "model.pooling: expected one of mean, max"),
        ("data.max_length=0", "data.max_length: expected an integer >= 1"),
        ("data.validation_fraction=1", "data.validation_fraction: expected a number in (0, 1)"),
        ("data.tokenizer.kind=sentencepiece", "data.tokenizer.kind: expected one of wordpiece"),
        ("task.label_smoothing=1", "task.label_smoothing: expected a number in [0, 1)"),
        ("scheduler.warmup_ratio=1.5", "scheduler.warmup_ratio: expected a number in [0, 1]"),
        ("optimizer.betas=[0.9,1.0]",
         "optimizer.betas: expected a list of 2 (each a number in [0, 1)), got [0.9, 1.0]"),
        ("device.precision=fp8", "device.precision: expected one of fp32, bf16, fp16"),
        ("device.name=tpu", "device.name: expected one of auto, cpu, cuda, mps"),
    ],
    ("finetune", ("optimizer=sgd",)): [
        ("optimizer.lr=nan", "optimizer.lr: expected a number > 0, got nan"),
        ("optimizer.momentum=-0.5", "optimizer.momentum: expected a number >= 0"),
        ("data.tokenizer=null", "data.tokenizer: expected a mapping, got null"),
    ],
    ("finetune", ("model=cnn", "data=digits")): [
        ("data.channels=2", "data.channels: expected one of 1, 3, got 2"),
        ("data.augment.erasing=2", "data.augment.erasing: expected a number in [0, 1]"),
        ("model.widths=[16,0]", "model.widths: expected a list (each an integer >= 1)"),
    ],
    ("finetune", ("model=mlp", "data=diabetes")): [
        ("data.features=age", "data.features: expected a list (each a string) or null"),
        ("data.split_fractions.train=1.2", "data.split_fractions.train: expected a number in [0, 1]"),
    ],
    ("pretrain", ()): [
        ("task.mask_prob=1.5", "task.mask_prob: expected a number in (0, 1], got 1.5"),
        ("task.random_token_prob=-0.1", "task.random_token_prob: expected a number in [0, 1]"),
        ("model.n_heads=0", "model.n_heads: expected an integer >= 1"),
    ],
    ("pretrain", ("model=gpt",)): [("task.mask_prob=0", "task.mask_prob: expected a number in (0, 1]")],
    ("predict", ()): [
        ("top_k=-1", "top_k: expected an integer >= 0 or null, got -1 (int)"),
        ("format=xml", "format: expected one of jsonl, text, onnx or null, got 'xml'"),
        ("temperature=-1", "temperature: expected a number >= 0"),
        ("max_new_tokens=0", "max_new_tokens: expected an integer >= 1"),
    ],
    ("evaluate", ()): [
        ("split=dev", "split: expected one of train, validation, test or null, got 'dev'"),
        ("batch_size=0", "batch_size: expected an integer >= 1, got 0"),
    ],
}


@pytest.mark.parametrize(("command", "options"), list(BAD), ids=[f"{c} {' '.join(o)}" for c, o in BAD])
def test_out_of_range_values_are_rejected(command, options):
    cases = BAD[command, options]
    required = ["run=r"] if command in ("evaluate", "predict") else []
    errors = _errors(command, [*options, *required, *(override for override, _ in cases)])
    missed = [message for _, message in cases if not any(e.startswith(message) for e in errors)]
    assert not missed and len(errors) == len(cases), (missed, errors)


def test_range_boundaries_that_are_allowed():
    assert _errors("finetune", ["optimizer.lr=1e-9", "model.dropout=0", "trainer.batch_size=1",
                                "scheduler.warmup_ratio=1", "task.label_smoothing=0.99",
                                "data.validation_fraction=0.5"]) == []
    assert _errors("pretrain", ["task.mask_prob=1", "task.mask_token_prob=0"]) == []
    assert _errors("predict", ["run=r", "top_k=0", "temperature=0"]) == []


def test_interpolated_values_are_checked_as_what_they_resolve_to():
    errors = _errors("finetune", ["model=bert_tiny", "model.lr=0"])
    assert sorted(e.split(":")[0] for e in errors) == ["model.lr", "optimizer.lr"]  # lr: ${...model.lr...}
    errors = _errors("finetune", ["cache_dir=${oc.env:BIGMODEL_NO_SUCH_VARIABLE}"])
    assert len(errors) == 1 and errors[0].startswith("cache_dir: does not resolve:")


def test_keys_added_on_the_command_line_are_the_users_own():
    assert _errors("finetune", ["+extra.note=hi", "+model.extra_arg=3"]) == []


def test_a_mistake_exits_2_with_every_bad_key_in_one_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = _run_app("finetune", ["optimizer.lr=abc", "trainer.max_steps=abc",
                                      "device.threads=two", "model.dropout=1.0"], capsys)
    assert code == 2
    assert "error: invalid config values for finetune:\n" in err and err.count("error:") == 1
    assert "  optimizer.lr: expected a number > 0, got 'abc' (str)" in err
    assert "  trainer.max_steps: expected an integer >= 1 or null, got 'abc' (str)" in err
    assert "  device.threads: expected an integer >= 1 or null, got 'two' (str)" in err
    assert "  model.dropout: expected a number in [0, 1), got 1.0 (float)" in err


def test_spec_rules():
    assert number(gt=0).accepts(3) and not number(gt=0).accepts(True)  # bool is not a number
    assert not schema.integer().accepts(2.0) and schema.string().accepts(2024)  # `column=2024`
    assert not schema.string().accepts(False) and not number().accepts(float("inf"))
    assert one_of("a", "b", null=True).accepts(None) and not one_of(1, 3).accepts(True)
    assert number(ge=0, lt=1).describe() == "a number in [0, 1)"
    assert schema.integer(ge=1, null=True).describe() == "an integer >= 1 or null"
    assert number(le=0.5).describe() == "a number <= 0.5"
    assert spec_for(("data", "files", "validation")) == schema.KEYS["data.files.*"]
    assert spec_for(("data", "tokenizer")).kind == "map" and spec_for(("nope",)) is None


CHECK = """
import json, sys, time
from bigmodel_cli.cli import run_hydra_command
cpu, wall = time.process_time(), time.perf_counter()
try:
    run_hydra_command("finetune", sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "datasets", "tokenizers")
               or m.startswith(("bigmodel_cli.commands", "bigmodel_cli.data")))
print(json.dumps({"code": code, "cpu_s": time.process_time() - cpu,
                  "wall_s": time.perf_counter() - wall, "heavy": heavy}))
"""


def test_a_bad_value_fails_fast_before_torch_or_data(tmp_path, cli_env):
    """`bigmodel finetune optimizer.lr=abc` in a fresh process: exit 2 before torch, data or
    the command's code is imported, in under two seconds of CPU time after the interpreter
    started (CPU time, not wall time: other processes on the machine do not count). Importing
    torch and datasets alone costs 4.4 s of CPU here; the check itself took 0.89-1.17 s on an
    idle 2-core machine, so a one-second bound failed on a slow day without any regression."""
    out = subprocess.run([sys.executable, "-c", CHECK, "optimizer.lr=abc", "trainer.max_steps=x"],
                         cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=60)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 2 and result["heavy"] == [], result
    assert "optimizer.lr: expected" in out.stderr and "trainer.max_steps: expected" in out.stderr
    assert result["cpu_s"] < 2.0, result
