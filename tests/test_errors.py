"""Layer 2: each kind of bad input gets one clear message and the documented exit code.

Exit codes: 0 ok, 1 the job failed, 2 usage or config error, 130 interrupted.
They run in this process (`cli`), through the same exit-code mapping as the console
script; a config error and Ctrl-C also run as a process (`cli_process`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import TINY_FASTTEXT


def _one_clear_message(result):
    assert "Traceback" not in result.stderr, result.stderr


def test_unknown_group_option_lists_choices(cli):
    result = cli("finetune", "model=lstmm")
    assert result.returncode == 2
    assert "lstmm" in result.stderr and "fasttext" in result.stderr and "lstm" in result.stderr
    _one_clear_message(result)


def test_unknown_key_is_rejected(cli):
    result = cli("finetune", "optimizer.lrr=0.1")
    assert result.returncode == 2
    assert "lrr" in result.stderr
    _one_clear_message(result)


def test_bad_value_type_names_key_and_type_before_loading_data(cli_process):
    result = cli_process("finetune", "optimizer.lr=abc", "trainer.epochs=two")
    assert result.returncode == 2
    assert "optimizer.lr: expected a number" in result.stderr
    assert "trainer.epochs: expected an integer" in result.stderr
    _one_clear_message(result)
    assert "data:" not in result.stderr  # failed before any data was looked at


def test_bad_override_syntax(cli):
    result = cli("finetune", "optimizer.lr=(")
    assert result.returncode == 2
    assert "Error parsing override 'optimizer.lr=('" in result.stderr
    _one_clear_message(result)


def test_missing_dataset_lists_every_place_looked(cli, tmp_path):
    result = cli("finetune", "data=news", "data.name=nonexistent", "trainer=debug",
                 env={"BIGMODEL_DATA_DIR": str(tmp_path / "nowhere")})
    assert result.returncode == 2
    err = result.stderr
    assert "dataset 'nonexistent' not found" in err
    assert "$BIGMODEL_DATA_DIR" in err and "./data" in err and "download from" in err
    assert "To provide it" in err
    _one_clear_message(result)


def test_csv_without_named_column(cli, tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("review,stars\ngood,1\nbad,0\n", encoding="utf-8")
    result = cli("finetune", "data=csv", f"data.files.train={csv}", "trainer=debug")
    assert result.returncode == 2
    assert "no column 'text'" in result.stderr and "review, stars" in result.stderr
    _one_clear_message(result)


def test_unavailable_device(cli):
    result = cli("finetune", "device=cuda", "trainer=debug", *TINY_FASTTEXT,
                 env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert "device=cuda: no CUDA device is available here" in result.stderr
    _one_clear_message(result)


def test_run_dir_that_is_not_a_run_dir(cli, tmp_path):
    result = cli("evaluate", f"run={tmp_path}")
    assert result.returncode == 2
    assert "not a run directory" in result.stderr
    _one_clear_message(result)
    missing = cli("predict", f"run={tmp_path / 'missing'}", "text=hello")
    assert missing.returncode == 2
    assert "no such directory" in missing.stderr


def test_missing_required_run_argument(cli):
    result = cli("evaluate")
    assert result.returncode == 2
    assert "missing required value: run (give it on the command line: run=...)" in result.stderr
    _one_clear_message(result)


def test_corrupt_and_missing_checkpoint(cli, news_lstm_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(news_lstm_run, run)
    weights = run / "checkpoints" / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    result = cli("evaluate", f"run={run}")
    assert result.returncode == 2
    assert "corrupt or incompatible weights" in result.stderr
    _one_clear_message(result)
    (run / "checkpoints" / "best" / "meta.json").write_text("{not json", encoding="utf-8")
    result = cli("predict", f"run={run}", "text=hi")
    assert result.returncode == 2 and "corrupt checkpoint metadata" in result.stderr
    shutil.rmtree(run / "checkpoints" / "best")
    result = cli("predict", f"run={run}", "text=hi")
    assert result.returncode == 2 and "no best checkpoint" in result.stderr


def test_predict_input_errors(cli, news_lstm_run, tmp_path):
    result = cli("predict", f"run={news_lstm_run}")
    assert result.returncode == 2 and "give exactly one of" in result.stderr
    result = cli("predict", f"run={news_lstm_run}", f"input={tmp_path / 'none.txt'}")
    assert result.returncode == 2 and "no such file" in result.stderr
    bad = tmp_path / "in.csv"
    bad.write_text("title\nhello\n", encoding="utf-8")
    result = cli("predict", f"run={news_lstm_run}", f"input={bad}")
    assert result.returncode == 2 and "no column 'text'" in result.stderr


def test_job_failure_is_exit_1_and_keeps_what_was_written(cli):
    # A monitor metric that validation does not produce fails the job after training began.
    result = cli("finetune", "trainer=debug", *TINY_FASTTEXT, "trainer.monitor=bleu")
    assert result.returncode == 1
    assert "bleu" in result.stderr
    assert "Traceback" not in result.stderr
    run = next(Path(cli.cwd, "outputs", "finetune").glob("*/*"))
    log = (run / "finetune.log").read_text(encoding="utf-8")
    assert "Traceback" in log  # the traceback is kept in the run's log
    assert (run / "metrics.jsonl").is_file()


def test_ctrl_c_exits_130_and_keeps_checkpoint_and_metrics(cli_process):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "bigmodel_cli", "finetune", *TINY_FASTTEXT, "trainer=debug",
         "trainer.max_train_samples=20000", "trainer.epochs=20", "trainer.eval_every_steps=10",
         "hydra.run.dir=outputs/interrupted"],
        cwd=cli_process.cwd, env=cli_process.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = Path(cli_process.cwd, "outputs", "interrupted")
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "last" / "meta.json").is_file():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    import json

    from bigmodel_cli.engine.checkpoint import resolve_checkpoint
    last = resolve_checkpoint(run, "last")
    meta = json.loads((last / "meta.json").read_text())
    assert meta["step"] >= 10
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "validation" for r in records)
