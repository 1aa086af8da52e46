"""Layer 1: every YAML under conf/ composes, and every `_target_` instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bigmodel_cli.config import conf_dir

CONF = Path(conf_dir())
PRIMARY = ("pretrain", "finetune", "evaluate", "predict", "serve", "export")
ALL_YAML = sorted(p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml"))
GROUP_OPTIONS = sorted(
    (p.parent.relative_to(CONF).as_posix(), p.stem)
    for p in CONF.rglob("*.yaml")
    if p.parent != CONF and not p.relative_to(CONF).as_posix().startswith(("hydra/", "experiment/"))
)


def _compose(name: str, overrides: list[str], hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name=name, overrides=overrides, return_hydra_config=hydra_cfg)


def test_every_yaml_is_covered_below():
    covered = {f"{p}.yaml" for p in PRIMARY} | {"common.yaml"}
    covered |= {f"{g}/{o}.yaml" for g, o in GROUP_OPTIONS}
    covered |= {p for p in ALL_YAML if p.startswith("hydra/")}  # test_primary_configs_compose
    covered |= {p for p in ALL_YAML if p.startswith("experiment/")}  # tests/test_experiments.py
    assert set(ALL_YAML) == covered
    assert len(GROUP_OPTIONS) >= 19


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_configs_compose(name):
    cfg = _compose(name, [], hydra_cfg=True)
    assert cfg.hydra.job.name == name
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]  # resolving creates it
    assert run_dir == "${bigmodel_unique:outputs/${hydra.job.name}/${now:%Y-%m-%d}/${now:%H-%M-%S}}"
    logging_cfg = OmegaConf.to_container(cfg.hydra.job_logging, resolve=False)
    assert logging_cfg["handlers"]["file"]["filename"].endswith("/${hydra.job.name}.log")
    assert "Configuration groups" in cfg.hydra.help.template
    assert OmegaConf.is_missing(cfg, "run") if name in ("evaluate", "predict", "serve", "export") else cfg.model


# Options that only fit one kind of data, and the model and data each kind is tried with.
KIND_OF = {("model", "cnn"): "image", ("model", "vit"): "image", ("model", "mlp"): "tabular",
           ("task", "regression"): "tabular", ("model", "mf"): "interactions",
           ("task", "rating"): "interactions", ("model", "sasrec"): "interactions",
           ("task", "next_item"): "interactions", ("model", "speech_ctc"): "audio",
           ("model", "audio_transformer"): "audio", ("task", "ctc"): "audio"}
KIND_DEFAULTS = {"image": {"model": "cnn", "data": "digits"},
                 "tabular": {"model": "mlp", "data": "diabetes"},
                 "interactions": {"model": "mf", "task": "rating", "data": "movielens"},
                 "audio": {"model": "speech_ctc", "task": "ctc", "data": "spoken_words"}}
# The audio transformer classifies clips (no per-frame outputs for ctc).
CLIP_CLASSIFIERS = {("model", "audio_transformer")}
# Sequential recommendation options go with each other (and the rest with model=mf).
SEQUENTIAL = {("model", "sasrec"), ("task", "next_item")}
MODEL_ARGS = {"text": {"vocab_size": 50, "padding_idx": 0},
              "image": {"in_channels": 1, "image_size": 8, "mean": [0.5], "std": [0.25],
                        "augment": {"crop_padding": 1, "hflip": True, "erasing": 0.5}},
              "tabular": {"num_features": 4},
              "interactions": {"num_users": 4, "num_items": 5},
              "audio": {"features": {"sample_rate": 16000, "n_mels": 8, "mean": [0.0] * 8,
                                     "std": [1.0] * 8, "time_masks": 1, "time_mask_frames": 2},
                        "clip_samples": 4000}}


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_group_option_composes_and_instantiates(group, option):
    """Each option composes, builds, and takes one optimizer step through its task."""
    from bigmodel_cli.commands.transfer import model_config

    if (group, option) == ("model", "hf"):
        pytest.importorskip("transformers")
    # A language-model task needs a transformer; image and tabular options get a model and
    # data of their kind; every other option fits finetune's defaults.
    command, extra = ("pretrain", ["model=bert_tiny"]) if (group, option) == ("task", "lm") \
        else ("finetune", [])
    kind = KIND_OF.get((group, option)) or _compose("finetune", [f"{group}={option}"]).data.kind
    defaults = dict(KIND_DEFAULTS.get(kind, {}))
    if (group, option) in SEQUENTIAL:
        defaults.update(model="sasrec", task="next_item")
    if kind == "audio" and (group, option) in CLIP_CLASSIFIERS:
        defaults.update(model="audio_transformer", task="classification")
    extra += [f"{g}={o}" for g, o in defaults.items() if g != group]
    cfg = _compose(command, [*extra, f"{group}={option}"])
    node = OmegaConf.select(cfg, group.replace("/", "."))
    assert node is not None and cfg.data.kind == kind
    sequential = cfg.task._target_.endswith("NextItemTask")
    args = {"num_items": 5, "max_len": 6} if sequential else MODEL_ARGS[kind]
    model = instantiate(model_config(cfg, None), **args)
    task = instantiate(cfg.task)
    full = task.build_model(model, 3)
    sparse = getattr(getattr(model, "embedding", None), "sparse", False)
    optimizer = instantiate(cfg.optimizer)(full.head.parameters() if sparse else full.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=10)
    batch = {"index": torch.arange(2), "input_ids": torch.randint(5, 50, (2, 6)),
             "lengths": torch.tensor([6, 4]), "pixels": torch.randint(0, 256, (2, 1, 8, 8)).byte(),
             "features": torch.randn(2, 4), "labels": torch.tensor([0, 2]),
             "targets": torch.randn(2, 3)}
    if kind == "interactions":   # rating: user-item pairs; next item: item sequences
        batch.update(users=torch.tensor([1, 4]), items=torch.tensor([2, 0]),
                     ratings=torch.tensor([4.0, 2.0]), history=torch.randint(1, 6, (2, 6)),
                     targets=torch.randint(0, 6, (2, 6)))
    if kind == "audio":          # waveforms; ctc: character targets (1, 2; 0 is the blank)
        batch.update(audio=torch.randn(2, 4000) * 0.1, audio_lengths=torch.tensor([4000, 3000]),
                     targets=torch.randint(1, 3, (2, 3)), target_lengths=torch.tensor([3, 2]))
    outputs = task.forward(full, batch)
    if task.name == "classification":
        assert outputs.shape == (2, 3)
    task.loss(outputs, batch).backward()
    optimizer.step()
    scheduler.step()
    keys = {"text": ("name", "files", "text_column", "label_column", "max_length", "tokenizer"),
            "image": ("name", "loader", "channels", "image_size", "augment", "eval_split"),
            "tabular": ("name", "loader", "target", "features", "categorical", "eval_split"),
            "interactions": ("name", "loader", "user_column", "item_column", "min_rating",
                             "max_length", "eval_split"),
            "audio": ("name", "loader", "sample_rate", "clip_seconds", "spectrogram", "augment",
                      "eval_split")}
    for key in keys[kind]:
        assert key in cfg.data.keys()  # (`in cfg.data` is False for a required ??? value)


def test_optuna_sweeper_direction_follows_the_monitor():
    import bigmodel_cli.main  # noqa: F401  registers the bigmodel_direction resolver

    for mode, direction in (("max", "maximize"), ("min", "minimize")):
        cfg = _compose("finetune", ["hydra/sweeper=optuna_monitor", f"trainer.monitor_mode={mode}"],
                       hydra_cfg=True)
        assert cfg.hydra.sweeper.direction == direction
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
