"""Layer 3 for images and tables: tiny real runs (trainer=debug, small models) through the
same commands, then evaluate reproduces the test metrics and predict reads raw inputs;
layer 2: bad input gets one clear message and exit code 2."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import evaluate_matches as _evaluate_matches
from conftest import read_json, run_dir_of

FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot"]
RUN_FILES = {".hydra", "finetune.log", "metrics.jsonl", "metrics.json", "labels.json",
             "preprocessing.json", "checkpoints", "plots", "run.json"}
TINY_CNN = ("model=cnn", "model.widths=[8,16]", "trainer=debug")


def _no_traceback(result):
    assert "Traceback" not in result.stderr, result.stderr


def _fashion_pngs(shared_data: Path, folder: Path, n: int) -> list[int]:
    """The first n Fashion-MNIST test images as PNG files; returns their labels."""
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(shared_data / "fashion_mnist" / "test.parquet").slice(0, n)
    folder.mkdir(parents=True, exist_ok=True)
    for i, record in enumerate(table.column("image").to_pylist()):
        Image.open(io.BytesIO(record["bytes"])).save(folder / f"img{i}.png")
    return table.column("label").to_pylist()


@pytest.fixture(scope="session")
def fashion_cnn_run(session_cli) -> Path:
    return run_dir_of(session_cli("finetune", *TINY_CNN, "data=fashion_mnist"), session_cli.cwd)


def test_fashion_mnist_cnn_run_evaluate_predict(session_cli, fashion_cnn_run, shared_data, tmp_path):
    run = fashion_cnn_run
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert read_json(run / "labels.json") == FASHION_LABELS
    pre = read_json(run / "preprocessing.json")
    assert pre["channels"] == 1 and pre["image_size"] == 28
    assert 0.2 < pre["mean"][0] < 0.4 and 0.25 < pre["std"][0] < 0.45   # computed on train
    assert pre["augment"] == {"crop_padding": 1, "hflip": True, "erasing": 0.0}
    metrics = read_json(run / "metrics.json")
    assert metrics["splits"] == {"train": 400, "validation": 200, "test": 200}
    # Chance is 0.10 (one standard deviation on 200 images: 0.021); 26 steps reach 0.215.
    assert metrics["task"] == "classification" and metrics["best_validation"]["accuracy"] > 0.18
    eval_dir = _evaluate_matches(session_cli, run, ("accuracy", "f1_macro", "loss"))
    assert (eval_dir / "plots" / "confusion_matrix.png").stat().st_size > 1000
    assert (eval_dir / "confusion_matrix.csv").read_text().splitlines()[0].split(",")[1:] == FASHION_LABELS

    # predict reads a list of image paths (relative to the list); folders and single files
    # go through the same reader (test_images_tabular.py::test_decode_resize_and_predict_inputs)
    _fashion_pngs(shared_data, tmp_path / "imgs" / "sub", 3)
    (tmp_path / "imgs" / "list.csv").write_text("path\nsub/img2.png\nsub/img0.png\n")
    result = session_cli("predict", f"run={run}", f"input={tmp_path / 'imgs' / 'list.csv'}", "top_k=2")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["img2.png", "img0.png"]
    assert [r["index"] for r in records] == [0, 1]
    for r in records:
        assert r["label"] == FASHION_LABELS[r["label_id"]] and len(r["top_k"]) == 2


def test_cnn_on_digits_starts_from_the_fashion_mnist_run(cli, fashion_cnn_run):
    """Digits resized to 28x28 (data.image_size) finetune the Fashion-MNIST CNN: every
    convolution and batch norm loads, the head (other labels) is new."""
    result = cli("finetune", *TINY_CNN, "data=digits", "data.image_size=28",
                 f"model.init_from={fashion_cnn_run}", "optimizer.lr=0.01", "trainer.epochs=5")
    run = run_dir_of(result, cli.cwd)
    report = read_json(run / "init_from.json")
    assert sorted(report["new"]) == ["head.bias", "head.weight"]
    assert report["loaded"] > 20 and "head.weight" in report["dropped"]
    assert read_json(run / "preprocessing.json")["image_size"] == 28
    assert read_json(run / "labels.json") == [str(i) for i in range(10)]
    # Chance is 0.10 (10 classes; one standard deviation on 179 images: 0.022); this run
    # reaches 0.23, so 0.18 fails an untrained or mis-wired model.
    assert read_json(run / "metrics.json")["test"]["accuracy"] > 0.18


def test_vit_on_digits(cli):
    result = cli("finetune", "model=vit", "model.d_model=32", "model.d_ff=64", "model.n_layers=1",
                 "data=digits", "trainer=debug")
    run = run_dir_of(result, cli.cwd)
    metrics = read_json(run / "metrics.json")
    assert metrics["splits"] == {"train": 400, "validation": 180, "test": 179}
    assert metrics["test"]["samples"] == 179
    # The reported size is that of the model in the checkpoint, with the overrides applied.
    from bigmodel_cli.engine.checkpoint import build_model, load_weights, read_meta

    best = run / "checkpoints" / "best"
    model, _ = build_model(read_meta(best))
    load_weights(model, best)
    assert metrics["parameters"] == sum(p.numel() for p in model.parameters())
    assert tuple(model.head.weight.shape) == (10, 32) and len(model.encoder.stack.blocks) == 1
    _evaluate_matches(cli, run, ("accuracy", "f1_macro", "loss"))


def test_diabetes_regression_evaluate_predict_with_saved_standardisation(cli, tmp_path):
    from omegaconf import OmegaConf

    from bigmodel_cli.data.tabular import load_tabular_dataset

    run = run_dir_of(cli("finetune", "model=mlp", "data=diabetes", "trainer=debug"), cli.cwd)
    metrics = read_json(run / "metrics.json")
    assert metrics["task"] == "regression" and metrics["monitor"] == "r2"
    assert set(metrics["test"]) >= {"mse", "rmse", "mae", "r2", "loss"}
    assert read_json(run / "labels.json") == ["target"]
    pre = read_json(run / "preprocessing.json")
    assert pre["task"] == "regression" and len(pre["numeric"]) == 10 and pre["target_std"] > 10
    eval_dir = _evaluate_matches(cli, run, ("mse", "rmse", "mae", "r2", "loss"))
    assert (eval_dir / "plots" / "predicted_vs_true.png").stat().st_size > 1000
    evaluated = np.loadtxt(eval_dir / "predictions.csv", delimiter=",", skiprows=1)
    # predict on the raw test rows (original units) gives what evaluate scored
    data_cfg = OmegaConf.load(run / ".hydra" / "config.yaml").data
    test = load_tabular_dataset(data_cfg, task="regression", seed=42).frames["test"]
    test.to_csv(tmp_path / "rows.csv", index=False)
    result = cli("predict", f"run={run}", f"input={tmp_path / 'rows.csv'}")
    assert result.returncode == 0, result.stderr
    predicted = [json.loads(line)["prediction"] for line in result.stdout.splitlines()]
    np.testing.assert_allclose(predicted, evaluated[:, 1], rtol=1e-5)
    np.testing.assert_allclose(test["target"], evaluated[:, 0])


def _houses(path: Path, rows: int = 240) -> None:
    rng = np.random.default_rng(0)
    area = rng.uniform(30, 150, rows)
    city = rng.choice(["north", "south", "east"], rows)
    price = 2.0 * area + np.where(city == "north", 100.0, 0.0) + rng.normal(0, 5, rows)
    lines = ["area,city,rooms,price"] + [f"{a:.1f},{c},{int(a // 30)},{p:.2f}"
                                         for a, c, p in zip(area, city, price)]
    path.write_text("\n".join(lines) + "\n")


def test_tabular_csv_regression_and_classification_with_one_hot(cli, tmp_path):
    _houses(tmp_path / "houses.csv")
    run = run_dir_of(cli("finetune", "model=mlp", "data=tabular", "task=regression",
                         f"data.files.train={tmp_path / 'houses.csv'}", "data.target=price",
                         "trainer=debug", "trainer.epochs=5"), cli.cwd)
    pre = read_json(run / "preprocessing.json")
    assert pre["categorical"] == {"city": ["east", "north", "south"]}
    assert pre["feature_names"] == ["area", "city=east", "city=north", "city=south", "rooms"]
    assert read_json(run / "metrics.json")["best_validation"]["r2"] > 0.5
    (tmp_path / "new.csv").write_text("city,area,rooms\nnorth,100,3\nwest,100,3\n")  # west: unseen
    result = cli("predict", f"run={run}", f"input={tmp_path / 'new.csv'}")
    assert result.returncode == 0, result.stderr
    north, west = (json.loads(line)["prediction"] for line in result.stdout.splitlines())
    assert 150 < north < 450 and north > west                 # original units (a price)

    run = run_dir_of(cli("finetune", "model=mlp", "data=tabular",
                         f"data.files.train={tmp_path / 'houses.csv'}", "data.target=city",
                         "data.features=[area,price]", "trainer=debug"), cli.cwd)
    assert read_json(run / "labels.json") == ["east", "north", "south"]
    assert read_json(run / "metrics.json")["test"] is None  # no test file: none scored
    assert set(read_json(run / "metrics.json")["best_validation"]) >= {"accuracy", "f1_macro"}


def test_bad_image_and_table_input_exit_2(cli, tmp_path):
    """A file that is not an image in a class folder, a CSV without the target column.
    (An empty folder, a folder without classes and bad predict inputs raise the same
    UsageError in the units: test_images_tabular.py.)"""
    from PIL import Image

    folder = tmp_path / "pets"
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (10, 12), (i * 40, 0, 0)).save(folder / "cat" / f"{i}.png")
        Image.new("RGB", (10, 12), (0, i * 40, 0)).save(folder / "dog" / f"{i}.jpg")
    (folder / "dog" / "readme.txt").write_text("not an image")
    result = cli("finetune", *TINY_CNN, "data=image_folder", f"data.path={folder}")
    assert result.returncode == 2 and "readme.txt: not an image" in result.stderr
    _no_traceback(result)
    _houses(tmp_path / "houses.csv", 20)
    result = cli("finetune", "model=mlp", "data=tabular", "task=regression",
                 f"data.files.train={tmp_path / 'houses.csv'}", "data.target=value")
    assert result.returncode == 2 and "no target column 'value'" in result.stderr
    assert "area, city, rooms, price" in result.stderr
    _no_traceback(result)
