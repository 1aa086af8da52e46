"""The experiment presets (conf/experiment/): each composes with its command, sets only keys that
exist, is listed in that command's --help, and overrides given after it still win."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bigmodel_cli.config import conf_dir

CONF = Path(conf_dir())
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
HEADER = re.compile(r"^# bigmodel (pretrain|finetune) experiment=(\w+)")


def preset(name: str) -> tuple[str, dict, dict]:
    """(the command named in the preset's header, its group choices, the keys it sets)."""
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    lines = text.splitlines()
    assert lines[0] == "# @package _global_", f"{name}: presets are global"
    match = HEADER.match(lines[1])
    assert match and match[2] == name, f"{name}: line 2 must be '# bigmodel COMMAND experiment={name}'"
    body = yaml.safe_load(text)
    choices = {}
    for entry in body.pop("defaults"):
        (key, option), = entry.items()
        choices[key.removeprefix("override /")] = option
    return match[1], choices, body


def leaves(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _compose(command: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name=command, overrides=overrides, return_hydra_config=True)


def test_there_is_a_preset_for_every_benchmark_recipe():
    assert {"transfer_pretrain", "transfer_finetune_1pct", "gpt_shakespeare", "hf_sst2",
            "lstm_news", "fasttext_news", "fasttext_news_20k", "cnn_fashion_mnist",
            "vit_fashion_mnist", "cnn_digits", "mlp_diabetes", "bert_news"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_with_its_command_and_sets_existing_keys(name):
    command, choices, values = preset(name)
    cfg = _compose(command, [f"experiment={name}"])
    assert {g: cfg.hydra.runtime.choices[g] for g in choices} == choices
    # The same groups without the preset: every key the preset sets must already exist there
    # (merging a preset may add keys that struct mode would refuse on the command line).
    plain = _compose(command, [f"{g}={o}" for g, o in choices.items()])
    for key, value in leaves(values).items():
        assert OmegaConf.select(plain, key, default="<missing>") != "<missing>", \
            f"{name}: {key} is not a key of `bigmodel {command}` with {choices}"
        assert OmegaConf.select(cfg, key) == value, f"{name}: {key}"
    # Every interpolation resolves (optimizer.lr from model.lr, ...); hydra's is left out, as
    # resolving the run dir creates it.
    OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                           resolve=True)


def test_overrides_after_the_preset_win():
    cfg = _compose("pretrain", ["experiment=transfer_pretrain", "trainer.max_steps=7",
                                "model=bert_tiny", "task.mask_prob=0.2"])
    assert cfg.trainer.max_steps == 7 and cfg.task.mask_prob == 0.2
    assert cfg.hydra.runtime.choices.model == "bert_tiny"
    assert cfg.model.d_model == 128 and cfg.trainer.batch_size == 128  # the rest of the preset


def bigmodel(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "bigmodel_cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_the_cli_takes_a_preset_without_plus_and_a_later_override():
    done = bigmodel("finetune", "experiment=lstm_news", "model=fasttext", "trainer.epochs=1",
                    "--cfg", "job")
    assert done.returncode == 0, done.stderr
    cfg = yaml.safe_load(done.stdout)
    assert cfg["model"]["_target_"].endswith("FastTextEncoder") and cfg["trainer"]["epochs"] == 1
    assert cfg["data"]["name"] == "thucnews"


def test_help_lists_each_preset_under_its_command():
    listed = {}
    for command in ("pretrain", "finetune"):
        done = bigmodel(command, "--help")
        assert done.returncode == 0, done.stderr
        section = done.stdout.split("== Experiment presets")[1].split("Overrides after")[0]
        for line in section.splitlines()[1:]:
            if match := re.match(r"bigmodel (\w+) experiment=", line):
                current = match[1]
            names = line.split("experiment=")[-1]
            listed.setdefault(current, set()).update(n.strip() for n in names.split(",") if n.strip())
        assert done.stdout.count("experiment=NAME --cfg job") == 1
    expected = {}
    for name in PRESETS:
        expected.setdefault(preset(name)[0], set()).add(name)
    assert listed == expected
