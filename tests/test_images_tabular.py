"""Units of the image and tabular data paths: decoding, splits, batches, augmentation,
models, tabular preprocessing and the regression task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bigmodel_cli.data.augment import ImagePreprocess
from bigmodel_cli.data.images import (
    decode_image,
    image_inputs,
    load_image_dataset,
    load_image_file,
    pixel_stats,
    resize,
)
from bigmodel_cli.data.tabular import Preprocessor, load_tabular_dataset
from bigmodel_cli.data.tensor_batches import TensorBatches
from bigmodel_cli.errors import UsageError
from bigmodel_cli.models.cnn import ResNetEncoder
from bigmodel_cli.models.mlp import MLPEncoder
from bigmodel_cli.models.vit import ViTEncoder
from bigmodel_cli.tasks.regression import RegressionTask

FASHION = {"kind": "image", "name": "fashion_mnist", "loader": "parquet", "path": None,
           "files": {"train": "train.parquet", "validation": None, "test": "test.parquet"},
           "labels_file": "labels.txt", "image_column": "image", "label_column": "label",
           "channels": 1, "image_size": None, "validation_fraction": 0.1, "eval_split": "test"}
DIGITS = {"kind": "image", "name": "digits", "loader": "sklearn_digits", "path": None,
          "channels": 1, "image_size": None, "validation_fraction": 0.1, "eval_split": "test",
          "split_fractions": {"train": 0.8, "validation": 0.1, "test": 0.1}}


def _png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_fashion_mnist_loads_a_seeded_stratified_subset(shared_data, monkeypatch):
    monkeypatch.setenv("BIGMODEL_DATA_DIR", str(shared_data))
    cfg = OmegaConf.create(FASHION)
    data = load_image_dataset(cfg, seed=1, max_train_samples=300, max_eval_samples=100)
    assert [len(data.splits[s]) for s in ("train", "validation", "test")] == [300, 100, 100]
    train = data.splits["train"]
    assert train.pixels.dtype == torch.uint8 and train.pixels.shape[1:] == (1, 28, 28)
    assert data.label_names[0] == "T-shirt/top" and len(data.label_names) == 10
    assert data.image_size == 28 and "held out 6000 of 60000" in data.notes[0]
    again = load_image_dataset(cfg, seed=1, max_train_samples=300, max_eval_samples=100)
    assert torch.equal(again.splits["train"].pixels, train.pixels)
    mean, std = pixel_stats(train.pixels)
    assert 0.2 < mean[0] < 0.4 and 0.25 < std[0] < 0.45


def test_digits_resized_to_another_size():
    data = load_image_dataset(OmegaConf.create({**DIGITS, "image_size": 28}), seed=0)
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 1438, "validation": 180,
                                                          "test": 179}
    assert data.splits["train"].pixels.shape[1:] == (1, 28, 28) and data.image_size == 28
    assert int(data.splits["train"].pixels.max()) == 255
    assert data.label_names == [str(i) for i in range(10)]


def test_image_folder_layouts_and_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            _png(tmp_path / "imgs" / cls / f"{i}.png", rng.integers(0, 255, (12, 9, 3), dtype=np.uint8))
    cfg = OmegaConf.create({**DIGITS, "loader": "folder", "path": str(tmp_path / "imgs"),
                            "channels": 3, "image_size": 16, "validation_fraction": 0.2})
    data = load_image_dataset(cfg, seed=0)
    assert data.label_names == ["cat", "dog"]
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 16, "validation": 4}
    assert data.splits["train"].pixels.shape[1:] == (3, 16, 16)
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(UsageError, match=r"notes\.txt: not an image"):
        load_image_dataset(cfg, seed=0)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(UsageError, match="no image files"):
        load_image_dataset(OmegaConf.merge(cfg, {"path": str(tmp_path / "empty")}), seed=0)
    with pytest.raises(UsageError, match="no class subfolders"):
        load_image_dataset(OmegaConf.merge(cfg, {"path": str(tmp_path / "empty" / "cat")}), seed=0)


def test_decode_resize_and_predict_inputs(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    _png(tmp_path / "a.png", gray)
    assert decode_image(tmp_path / "a.png", 1, "a").shape == (1, 8, 8)
    assert decode_image(tmp_path / "a.png", 3, "a").shape == (3, 8, 8)
    up = resize(torch.from_numpy(gray)[None, None], 28)
    assert up.dtype == torch.uint8 and up.shape == (1, 1, 28, 28)
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "b.png", gray)
    (tmp_path / "list.csv").write_text("path,other\na.png,1\nsub/b.png,2\n")
    assert [p.name for p in image_inputs(str(tmp_path / "list.csv"), "path")] == ["a.png", "b.png"]
    assert [p.name for p in image_inputs(str(tmp_path), "path")] == ["a.png", "b.png"]
    with pytest.raises(UsageError, match="no column 'file'"):
        list(image_inputs(str(tmp_path / "list.csv"), "file"))
    with pytest.raises(UsageError, match="no such file or folder"):
        list(image_inputs(str(tmp_path / "nothing.png"), "path"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no image files in this folder"):
        list(image_inputs(str(tmp_path / "empty"), "path"))
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(UsageError, match=r"bad\.png: not an image"):
        load_image_file(tmp_path / "bad.png", 1, 28)


def test_tensor_batches_protocol():
    cols = {"pixels": torch.arange(10)[:, None], "labels": torch.arange(10)}
    b = TensorBatches(cols, 4, shuffle=True, seed=3)
    assert len(b) == 3 and b.num_samples == 10
    b.set_epoch(1)
    first = [x["index"].tolist() for x in b]
    assert sorted(sum(first, [])) == list(range(10))
    assert [x["index"].tolist() for x in b.iter_from(1)] == first[1:]
    b.set_epoch(2)
    assert [x["index"].tolist() for x in b] != first
    ranks = [TensorBatches(cols, 4, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    halves = [next(iter(r))["index"].tolist() for r in ranks]
    assert sorted(halves[0] + halves[1]) == sorted(first[0])
    batch = next(iter(TensorBatches(cols, 4, shuffle=False)))
    assert torch.equal(batch["pixels"][:, 0], batch["labels"])


def test_augmentation_shapes_ranges_flip_and_eval():
    torch.manual_seed(0)
    pixels = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    pixels[:, :, :, :4] = 255  # left half white
    plain = ImagePreprocess([0.5], [0.5])
    x = plain(pixels)
    assert x.dtype == torch.float32 and x.min() == -1 and x.max() == 1
    flip = ImagePreprocess([0.5], [0.5], hflip=True).train()
    out = flip(pixels)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped | same).all() and 10 < int(flipped.sum()) < 54
    crop = ImagePreprocess([0.5], [0.5], crop_padding=2).train()
    out = crop(pixels)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert (out != x).flatten(1).any(1).sum() > 32          # most images moved
    erase = ImagePreprocess([0.5], [0.5], erasing=1.0).train()
    out = erase(torch.full((16, 1, 8, 8), 255, dtype=torch.uint8))
    assert ((out == 0).flatten(1).any(1)).all()             # a rectangle set to the mean
    for module in (flip, crop, erase):
        module.eval()
        assert torch.equal(module(pixels), x)               # eval mode: no augmentation
    assert not dict(flip.state_dict())                      # nothing of it in checkpoints


def test_image_models_shapes_and_transfer():
    aug = {"crop_padding": 1, "hflip": True, "erasing": 0.1}
    cnn = ResNetEncoder(1, [0.3], [0.3], aug, widths=[8, 16], blocks_per_stage=2)
    pixels = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    assert cnn(pixels).shape == (3, 16) and cnn.output_dim == 16
    assert cnn(pixels[:, :, :8, :8]).shape == (3, 16)        # any size: pooled
    # Other normalisation and augmentation, the same architecture: every tensor transfers.
    small = ResNetEncoder(1, [0.5], [0.2], None, widths=[8, 16], blocks_per_stage=2)
    loaded = small.load_state_dict(cnn.state_dict())
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []
    for name, tensor in small.state_dict().items():
        assert torch.equal(tensor, cnn.state_dict()[name]), name
    wider = ResNetEncoder(1, [0.5], [0.2], None, widths=[8, 32], blocks_per_stage=2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        wider.load_state_dict(cnn.state_dict())
    vit = ViTEncoder(1, 28, [0.3], [0.3], aug, patch_size=7, d_model=16, n_layers=2,
                     n_heads=2, d_ff=32)
    assert vit(pixels).shape == (3, 16)
    assert type(vit.stack).__module__ == "bigmodel_cli.models.transformer"
    with pytest.raises(ValueError, match="must divide"):
        ViTEncoder(1, 28, [0.3], [0.3], patch_size=5)
    mlp = MLPEncoder(5, [8, 4], 0.0)
    assert mlp(torch.randn(2, 5)).shape == (2, 4)


def test_tabular_preprocessing_fitted_on_train_and_saved(tmp_path):
    import pandas as pd

    train = pd.DataFrame({"area": [50.0, 70.0, 90.0, np.nan], "city": ["a", "b", "a", "c"],
                          "price": [1.0, 2.0, 3.0, 4.0]})
    pre = Preprocessor.fit(train, ["area", "city"], "price", "regression", None)
    x = pre.transform(train, "train")
    assert x.shape == (4, 4) and pre.feature_names == ["area", "city=a", "city=b", "city=c"]
    assert abs(x[:3, 0].mean()) < 1e-6 and x[3, 0] == 0.0   # missing: the train mean
    pre.save(tmp_path / "preprocessing.json")
    again = Preprocessor.load(tmp_path / "preprocessing.json")
    new = pd.DataFrame({"area": [70.0], "city": ["zzz"]})   # an unseen category: all zeros
    assert np.array_equal(again.transform(new, "new"), pre.transform(new, "new"))
    assert again.transform(new, "new")[0, 1:].tolist() == [0.0, 0.0, 0.0]
    assert again.target_mean == 2.5
    with pytest.raises(UsageError, match="no column 'city'"):
        again.transform(pd.DataFrame({"area": [1.0]}), "new.csv")
    cls = Preprocessor.fit(train, ["area"], "city", "classification", None)
    assert cls.label_names == ["a", "b", "c"]
    assert cls.split(train, "train").labels.tolist() == [0, 1, 0, 2]


def test_diabetes_and_missing_target(tmp_path):
    cfg = OmegaConf.create({"kind": "tabular", "name": "diabetes", "loader": "sklearn_diabetes",
                            "path": None, "target": "target", "features": None,
                            "categorical": None, "validation_fraction": 0.1,
                            "split_fractions": {"train": 0.8, "validation": 0.1, "test": 0.1}})
    data = load_tabular_dataset(cfg, task="regression", seed=0)
    assert {s: len(f) for s, f in data.frames.items()} == {"train": 354, "validation": 44, "test": 44}
    assert len(data.features) == 10 and "target" not in data.features
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,4\n")
    files = OmegaConf.merge(cfg, {"loader": "files", "files": {"train": str(tmp_path / "t.csv"),
                                                              "validation": None, "test": None}})
    with pytest.raises(UsageError, match="no target column 'target'"):
        load_tabular_dataset(files, task="regression", seed=0)


def test_regression_task_reports_original_units():
    task = RegressionTask()
    task.set_target_scale([100.0], [10.0])
    model = task.build_model(MLPEncoder(3, [], 0.0), 1)
    batch = {"index": torch.arange(4), "features": torch.randn(4, 3),
             "targets": torch.tensor([[90.0], [100.0], [110.0], [120.0]])}
    out = task.forward(model, batch)
    torch.testing.assert_close(out["value"], out["scaled"] * 10 + 100)
    torch.testing.assert_close(out["target_scaled"], torch.tensor([[-1.0], [0.0], [1.0], [2.0]]))
    metrics = task.new_metrics(1)
    metrics.update(out, batch, task.eval_loss(out, batch))
    m = metrics.compute()
    y, p = batch["targets"].numpy(), out["value"].detach().numpy()
    assert m["mse"] == pytest.approx(float(((y - p) ** 2).mean()), rel=1e-5)
    assert m["rmse"] == pytest.approx(m["mse"] ** 0.5) and set(m) >= {"mae", "r2", "loss"}
    assert m["loss"] == pytest.approx(m["mse"] / 100, rel=1e-4)  # standardised MSE
    assert set(model.state_dict()) >= {"target_mean", "target_std"}
