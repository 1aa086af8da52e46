"""Layer 2: CLI routing, help, version, and Hydra's own flags per command.

The routing tests run the console entry point in a process (`cli_process`): what a user's
shell sees, exit codes included. The rest run in this process (`cli`)."""

from __future__ import annotations

import subprocess
import sys

from bigmodel_cli import __version__
from bigmodel_cli.cli import hydra_quote, quote_free_text


def test_root_help_lists_commands_without_importing_torch(cli):
    code = ("import sys; from bigmodel_cli.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("finetune", "evaluate", "predict", "report"):
        assert command in result.stdout
    assert "Train a model on a labeled dataset" in result.stdout


def test_version(cli_process):
    result = cli_process("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"bigmodel {__version__}"


def test_no_command_shows_usage(cli_process):
    import click
    from packaging.version import Version

    result = cli_process()
    # no_args_is_help: a usage error (exit 2) since click 8.2, exit 0 before it.
    assert result.returncode == (2 if Version(click.__version__) >= Version("8.2") else 0)
    out = result.stdout + result.stderr
    assert "Usage: " in out and " [OPTIONS] COMMAND [ARGS]..." in out
    commands = out.split("Commands:", 1)[1].split()
    for command in ("pretrain", "finetune", "evaluate", "predict", "report"):
        assert command in commands, command


def test_unknown_command_is_usage_error(cli_process):
    result = cli_process("pretrian")
    assert result.returncode == 2
    assert "No such command 'pretrian'" in result.stderr
    assert "Traceback" not in result.stderr


def test_command_help_is_hydras_with_config_groups(cli):
    result = cli("finetune", "--help")
    assert result.returncode == 0, result.stderr
    assert "== Configuration groups ==" in result.stdout
    groups = result.stdout.split("== Configuration groups ==", 1)[1].split("==", 1)[0]
    listed = {line.split(":", 1)[0].strip(): set(line.split(":", 1)[1].replace(" ", "").split(","))
              for line in groups.splitlines() if ":" in line}
    expected = {"model": "bert,bert_tiny,cnn,fasttext,gpt,gpt_tiny,hf,lstm,mlp,vit",
                "data": "ag_news,csv,diabetes,digits,fashion_mnist,image_folder,news,news_corpus,"
                        "sst2,tabular,text,tinyshakespeare,wikitext2",
                "task": "classification,lm,regression", "optimizer": "adam,adamw,sgd",
                "scheduler": "constant,cosine,linear_warmup", "device": "auto,cpu,cuda,mps",
                "trainer": "debug,default"}
    for group, names in expected.items():
        assert set(names.split(",")) <= listed.get(group, set()), (group, listed.get(group))
    assert "bigmodel finetune" in result.stdout


def test_cfg_job_prints_composed_config_with_overrides(cli):
    result = cli("finetune", "model=fasttext", "optimizer=sgd", "optimizer.lr=0.5",
                 "+extra.note=hi", "~scheduler", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "FastTextEncoder" in out and "torch.optim.SGD" in out and "lr: 0.5" in out
    assert "note: hi" in out
    assert "scheduler:" not in out
    assert not (cli.cwd / "outputs").exists()  # --cfg runs nothing


def test_cfg_package_and_info(cli):
    result = cli("finetune", "--cfg", "job", "-p", "optimizer")
    assert result.returncode == 0, result.stderr
    assert result.stdout.lstrip().startswith("# @package optimizer")
    assert "model:" not in result.stdout
    info = cli("evaluate", "--info", "defaults")
    assert info.returncode == 0, info.stderr
    assert "Defaults List" in info.stdout


def test_free_text_values_are_quoted_for_hydra():
    assert quote_free_text(["text=央行宣布, 下调"]) == ["text='央行宣布, 下调'"]
    assert quote_free_text(["text=it's"]) == ["text='it\\'s'"]
    assert quote_free_text(["text=[甲,乙]"]) == ["text=['甲','乙']"]
    assert quote_free_text(["optimizer.lr=0.1", "text='kept'"]) == ["optimizer.lr=0.1", "text='kept'"]
    assert quote_free_text(["data.path=/数据"]) == ["data.path='/数据'"]
    assert hydra_quote("a\\") == "'a\\\\'"


def test_two_commands_in_one_process_in_the_same_second_keep_their_own_runs(
        tmp_path, cli_env, monkeypatch):
    """A script (or a test session) that runs two trainings in one process within one second:
    the second claims its own run directory and the first run's files stay as they were."""
    import datetime as dt

    import hydra.core.utils

    from bigmodel_cli.launch import run_hydra_command

    class _FrozenClock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 1, 12, 0, 0)

    monkeypatch.setattr(hydra.core.utils, "datetime", _FrozenClock)
    monkeypatch.chdir(tmp_path)
    for key, value in cli_env.items():
        monkeypatch.setenv(key, value)
    args = ["model=mlp", "data=diabetes", "trainer=debug"]
    for _ in range(2):
        try:
            run_hydra_command("finetune", args)
        except SystemExit as exit_:
            assert exit_.code in (0, None)
    day = tmp_path / "outputs" / "finetune" / "2026-01-01"
    assert sorted(p.name for p in day.iterdir()) == ["12-00-00", "12-00-00-2"]
    for run in day.iterdir():
        assert (run / "metrics.json").is_file() and (run / "checkpoints" / "best").is_dir()
        assert len((run / "finetune.log").read_text().split("training: ")) == 2  # one run's log
