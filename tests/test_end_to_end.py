"""Layer 3: tiny real runs (trainer=debug: 400/200/200 rows, 2 epochs) on real data, then
evaluate on the run reproduces its test metrics, then predict returns the documented JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_FASTTEXT, read_json, run_dir_of

RUN_FILES = {".hydra", "finetune.log", "metrics.jsonl", "metrics.json", "tokenizer.json",
             "labels.json", "checkpoints", "plots", "run.json"}
NEWS_LABELS = ["finance", "realty", "stocks", "education", "science", "society", "politics",
               "sports", "game", "entertainment"]


def assert_run_dir(run: Path, labels: list[str]) -> dict:
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert {p.name for p in (run / ".hydra").iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best", "last"}
    assert {p.name for p in (run / "checkpoints" / "best").iterdir()} == {"model.safetensors", "meta.json"}
    assert {p.name for p in (run / "checkpoints" / "last").iterdir()} == {"model.safetensors", "meta.json", "state.pt"}
    assert {p.name for p in (run / "plots").iterdir()} == {"training_curves.png"}
    assert read_json(run / "labels.json") == labels
    state = torch.load(run / "checkpoints" / "last" / "state.pt", weights_only=True)
    assert state["step"] > 0 and state["optimizers"]
    from safetensors import safe_open
    with safe_open(run / "checkpoints" / "best" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith(("module.", "_orig_mod.")) for k in keys)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    splits = [r["split"] for r in records]
    assert "train" in splits and splits.count("validation") == 2 and splits[-1] in ("validation", "test")
    metrics = read_json(run / "metrics.json")
    for key in ("best_validation", "last_validation", "test", "train_time_s", "samples_per_s",
                "parameters", "device", "versions", "steps"):
        assert key in metrics, key
    assert metrics["splits"]["train"] == 400 and metrics["device"] == "cpu"
    assert "training:" in (run / "finetune.log").read_text(encoding="utf-8")
    return metrics


def evaluate_matches(cli, run: Path, metrics: dict, split: str = "test", env=None) -> Path:
    result = cli("evaluate", f"run={run}", env=env)
    eval_dir = run_dir_of(result, cli.cwd)
    assert {p.name for p in eval_dir.iterdir()} >= {"metrics.json", "per_class.csv",
                                                     "confusion_matrix.csv", "plots", "evaluate.log"}
    assert (eval_dir / "plots" / "confusion_matrix.png").stat().st_size > 1000
    got = read_json(eval_dir / "metrics.json")
    assert got["split"] == split
    expected = metrics["test"] if split == "test" else metrics["best_validation"]
    for key in ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro"):
        assert got["metrics"][key] == pytest.approx(expected[key], abs=1e-9), key
    assert got["metrics"]["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert got["metrics"]["samples"] == expected["samples"]
    return eval_dir


def check_prediction(line: str, labels: list[str], index: int, top_k: int = 3) -> dict:
    record = json.loads(line)
    assert set(record) == {"index", "label", "label_id", "top_k"}
    assert record["index"] == index
    assert record["label"] == labels[record["label_id"]]
    assert len(record["top_k"]) == top_k
    assert record["top_k"][0]["label"] == record["label"]
    probs = [p["prob"] for p in record["top_k"]]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    return record


def test_news_lstm_run_evaluate_predict(session_cli, news_lstm_run, tmp_path):
    metrics = assert_run_dir(news_lstm_run, NEWS_LABELS)
    assert metrics["splits"] == {"train": 400, "validation": 200, "test": 200}
    eval_dir = evaluate_matches(session_cli, news_lstm_run, metrics)
    per_class = (eval_dir / "per_class.csv").read_text(encoding="utf-8").splitlines()
    assert per_class[0] == "label,precision,recall,f1,support" and len(per_class) == 11
    confusion = (eval_dir / "confusion_matrix.csv").read_text(encoding="utf-8").splitlines()
    assert len(confusion) == 11 and confusion[0].split(",")[1:] == NEWS_LABELS

    # text=, one and several (non-ASCII, commas and quotes survive the shell -> Hydra trip)
    result = session_cli("predict", f"run={news_lstm_run}", "text=央行宣布下调存款准备金率, it's")
    assert result.returncode == 0, result.stderr
    check_prediction(result.stdout.strip(), NEWS_LABELS, 0)
    result = session_cli("predict", f"run={news_lstm_run}", "text=[央行宣布下调存款准备金率,湖人队击败凯尔特人]",
                         "top_k=2")
    lines = result.stdout.strip().splitlines()
    assert [check_prediction(l, NEWS_LABELS, i, 2)["index"] for i, l in enumerate(lines)] == [0, 1]

    # stdin: one JSON line per non-empty input line; empty lines skipped with a note;
    # invalid UTF-8 replaced; a very long text truncated.
    stdin = "央行宣布下调存款准备金率\n\n".encode() + b"\xff\xfe bad bytes\n" + ("长" * 5000).encode() + b"\n"
    result = session_cli("predict", f"run={news_lstm_run}", "input=-", input=stdin)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().strip().splitlines()
    assert [json.loads(l)["index"] for l in lines] == [0, 2, 3]
    err = result.stderr.decode()
    assert "skipped 1 empty input line" in err and "truncated" in err

    # files: .txt, .csv (text column), .jsonl, written to output=
    (tmp_path / "titles.txt").write_text("央行宣布下调存款准备金率\n湖人队击败凯尔特人\n", encoding="utf-8")
    (tmp_path / "titles.csv").write_text('id,text\n1,"央行宣布, 下调存款准备金率"\n2,湖人队击败凯尔特人\n',
                                         encoding="utf-8")
    (tmp_path / "titles.jsonl").write_text('{"text": "央行宣布下调存款准备金率"}\n{"text": "湖人队"}\n',
                                           encoding="utf-8")
    for name in ("titles.txt", "titles.csv", "titles.jsonl"):
        out = tmp_path / f"{name}.preds.jsonl"
        result = session_cli("predict", f"run={news_lstm_run}", f"input={tmp_path / name}",
                             f"output={out}")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == ""
        lines = out.read_text(encoding="utf-8").strip().splitlines()
        assert [check_prediction(l, NEWS_LABELS, i)["index"] for i, l in enumerate(lines)] == [0, 1]


@pytest.mark.parametrize(("model", "data", "labels", "eval_split"), [
    (TINY_FASTTEXT, "news", NEWS_LABELS, "test"),
    (("model=lstm",), "sst2", ["negative", "positive"], "validation"),
    (TINY_FASTTEXT, "sst2", ["negative", "positive"], "validation"),
])
def test_tiny_runs_evaluate_and_predict(cli, model, data, labels, eval_split):
    result = cli("finetune", *model, f"data={data}", "trainer=debug")
    run = run_dir_of(result, cli.cwd)
    metrics = read_json(run / "metrics.json")
    if eval_split == "validation":  # SST-2 has no labeled test split
        assert metrics["test"] is None
        assert set(metrics["splits"]) == {"train", "validation"}
        assert {p.name for p in run.iterdir()} == RUN_FILES
    else:
        assert_run_dir(run, labels)
    # evaluate finds the data where training found it, even with $BIGMODEL_DATA_DIR unset
    evaluate_matches(cli, run, metrics, eval_split, env={"BIGMODEL_DATA_DIR": ""})
    result = cli("predict", f"run={run}", "text=a gripping, funny film", "top_k=2")
    assert result.returncode == 0, result.stderr
    check_prediction(result.stdout.strip(), labels, 0, 2)


def test_second_run_reuses_tokenized_cache_and_same_seed_same_result(cli, tmp_path):
    env = {"BIGMODEL_CACHE_DIR": str(tmp_path / "fresh-cache")}
    first = run_dir_of(cli("finetune", *TINY_FASTTEXT, "trainer=debug", "hydra.run.dir=outputs/a",
                           env=env), cli.cwd)
    second = run_dir_of(cli("finetune", *TINY_FASTTEXT, "trainer=debug", "hydra.run.dir=outputs/b",
                            env=env), cli.cwd)
    assert "loaded from cache" not in (first / "finetune.log").read_text(encoding="utf-8")
    assert "loaded from cache" in (second / "finetune.log").read_text(encoding="utf-8")
    a, b = read_json(first / "metrics.json"), read_json(second / "metrics.json")
    assert a["test"] == b["test"] and a["best_validation"] == b["best_validation"]
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()


def test_multirun_one_run_dir_per_job_and_a_summary_that_reports_failures(cli):
    result = cli("finetune", "-m", *TINY_FASTTEXT, "trainer=debug", "trainer.epochs=1",
                 "optimizer.lr=0.01,0.02,abc")
    assert result.returncode == 1, result.stderr[-2000:]  # one job failed
    sweeps = list(Path(cli.cwd, "outputs", "finetune", "multirun").glob("*/*"))
    assert len(sweeps) == 1
    sweep = sweeps[0]
    assert len(list(sweep.glob("*/metrics.json"))) == 2
    overrides = sorted((j / ".hydra" / "overrides.yaml").read_text() for j in sweep.glob("[0-9]"))
    assert "optimizer.lr=0.01" in overrides[0] and "optimizer.lr=0.02" in overrides[1]
    rows = read_json(sweep / "summary.json")
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]  # best first, failures last
    assert rows[0]["value"] >= rows[1]["value"] and rows[0]["monitor"] == "accuracy"
    assert "optimizer.lr: expected a number" in rows[2]["error"]
    header = (sweep / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("job,overrides,status,error,monitor,value,test_accuracy")
    assert "optimizer.lr=abc" in result.stderr and "failed: invalid config value" in result.stderr
    report = cli("report", str(sweep), "--json")
    assert report.returncode == 0
    assert [r["job"] for r in json.loads(report.stdout)] == [r["job"] for r in rows]
    table = cli("report", str(sweep))
    assert "optimizer.lr=0.02" in table.stdout and "failed" in table.stdout
    one = cli("report", str(sweep / "0"), "--json")
    assert json.loads(one.stdout)["status"] == "ok"
    listing = cli("report", str(cli.cwd))  # neither a run nor a sweep: the runs under it
    assert listing.returncode == 0 and listing.stdout.count("finetune") >= 3
    assert cli("report", str(cli.cwd / "nowhere")).returncode == 2


def test_user_csv_with_string_labels_and_no_validation(cli, tmp_path, shared_data):
    import pandas as pd

    rows = pd.read_csv(shared_data / "sst2" / "train.csv.gz").head(300)
    pd.DataFrame({"review": rows["text"], "sentiment": rows["label"].map({0: "neg", 1: "pos"})}) \
        .to_csv(tmp_path / "train.csv", index=False)
    result = cli("finetune", "data=csv", f"data.files.train={tmp_path / 'train.csv'}",
                 "data.text_column=review", "data.label_column=sentiment", *TINY_FASTTEXT,
                 "trainer=debug")
    run = run_dir_of(result, cli.cwd)
    assert read_json(run / "labels.json") == ["neg", "pos"]
    metrics = read_json(run / "metrics.json")
    assert metrics["splits"] == {"train": 270, "validation": 30}
    assert any("held out 30 of 300" in n for n in metrics["data_notes"])
    assert metrics["test"] is None


def test_ag_news_local_files_are_resplit_with_a_warning(cli):
    result = cli("finetune", "data=ag_news", *TINY_FASTTEXT, "trainer=debug", "trainer.epochs=1")
    run = run_dir_of(result, cli.cwd)
    assert "re-split its test split (7600 rows) into train 6080, validation 760, test 760" in result.stderr
    metrics = read_json(run / "metrics.json")
    assert read_json(run / "labels.json") == ["World", "Sports", "Business", "Sci/Tech"]
    assert metrics["splits"] == {"train": 400, "validation": 200, "test": 200}


def test_engine_options_accumulation_early_stopping_eval_every(cli):
    # 400 rows, batch 32 -> 13 batches per epoch -> 7 optimizer steps with accumulation 2.
    result = cli("finetune", *TINY_FASTTEXT, "trainer=debug", "trainer.grad_accum_steps=2",
                 "trainer.epochs=30", "trainer.eval_every_steps=7", "trainer.early_stopping_patience=2",
                 "trainer.monitor=loss", "trainer.monitor_mode=min", "optimizer=sgd",
                 "optimizer.lr=1e-30", "scheduler=cosine")
    run = run_dir_of(result, cli.cwd)
    metrics = read_json(run / "metrics.json")
    # lr 1e-30 (lr must be > 0): too small to change a float32 weight, so the validation loss
    # never improves after the first evaluation and training stops after 1 + patience
    # evaluations, long before 30 epochs.
    assert "early stopping: no loss improvement in 2 evaluations" in result.stderr
    assert metrics["steps"] == 21 and metrics["best_step"] == 7
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "validation"] == [7, 14, 21]
