"""data.kind=image: labeled images (classification), held in memory as uint8 tensors.

prepare() computes the per-channel mean/std on train and writes preprocessing.json
(channels, image size, mean, std, augmentation) and labels.json into the run directory.
The encoder gets them as constructor arguments: normalisation and augmentation run in its
first module, on the training device (bigmodel_cli.data.augment).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bigmodel_cli.data.kinds import DataContext, EvalData, Prepared
from bigmodel_cli.data.tensor_batches import batches_factory
from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel.data")

PREPROCESSING = "preprocessing.json"


def _check_task(task) -> None:
    if task.name != "classification":
        raise UsageError(f"data.kind=image supports task=classification, not task={task.name}")


def prepare(cfg: DictConfig, run_dir: Path, ctx: DataContext, task) -> Prepared:
    from bigmodel_cli.data.images import load_image_dataset, pixel_stats
    from bigmodel_cli.jsonfiles import write_json

    _check_task(task)
    data = load_image_dataset(cfg.data, seed=ctx.seed, max_train_samples=ctx.max_train_samples,
                              max_eval_samples=ctx.max_eval_samples)
    mean, std = pixel_stats(data.splits["train"].pixels)
    augment = OmegaConf.to_container(cfg.data.augment, resolve=True)
    preprocessing = {"channels": data.channels, "image_size": data.image_size,
                     "mean": mean, "std": std, "augment": augment}
    log.info("data: %s", data.source)
    log.info("splits: %s; %d labels; images %dx%dx%d; mean %s, std %s (train)",
             ", ".join(f"{k} {len(v)}" for k, v in data.splits.items()), len(data.label_names),
             data.channels, data.image_size, data.image_size, mean, std)
    if ctx.is_main:
        write_json(run_dir / "labels.json", data.label_names)
        write_json(run_dir / PREPROCESSING, preprocessing)
    model_args = {"in_channels": data.channels, "image_size": data.image_size,
                  "mean": mean, "std": std, "augment": augment}
    return Prepared(splits=data.splits, make_batches=batches_factory(ctx), model_args=model_args,
                    label_names=data.label_names,
                    encoding={"channels": data.channels, "image_size": data.image_size},
                    source=data.source, folder=data.folder, notes=data.notes)


def eval_batches(trained, data_cfg: DictConfig, split: str | None, batch_size: int,
                 ctx: DataContext) -> EvalData:
    """One split of `data_cfg`, decoded and sized as in training."""
    from bigmodel_cli.data.images import load_image_dataset
    from bigmodel_cli.data.tensor_batches import TensorBatches
    from bigmodel_cli.data.text_kind import choose_split

    _check_task(trained.task)
    data = load_image_dataset(data_cfg, seed=ctx.seed, max_train_samples=ctx.max_train_samples,
                              max_eval_samples=ctx.max_eval_samples)
    split = choose_split(data.splits, split, data_cfg)
    if data.label_names != trained.label_names:
        raise UsageError(f"the labels of the data ({data.label_names}) differ from the run's "
                         f"labels.json ({trained.label_names})")
    return EvalData(split=split, batches=TensorBatches(data.splits[split].columns(), batch_size,
                                                       shuffle=False),
                    label_names=data.label_names)


def read_preprocessing(run_dir: Path) -> dict:
    path = Path(run_dir) / PREPROCESSING
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"run={run_dir}: incomplete run directory, {PREPROCESSING} is missing "
                         f"or unreadable ({exc})") from None


def load_assets(run_dir: Path, meta: dict) -> dict:
    """The run's preprocessing.json: channels, image size, normalisation."""
    return read_preprocessing(run_dir)


def read_inputs(cfg: DictConfig, stats: dict) -> Iterator[tuple[dict, Path]]:
    """({"index", "path"}, path) for `input=` an image, a folder of images, or a
    .csv/.tsv/.txt list of image paths."""
    from bigmodel_cli.data.files import path_inputs
    from bigmodel_cli.data.images import image_inputs

    return path_inputs(cfg, image_inputs, "this run classifies images: give input=IMAGE, "
                       "input=FOLDER or input=LIST.csv (a column of image paths, path_column=)")


def encode_inputs(trained, images: list, task) -> tuple[dict, list[bool]]:
    """Image files (paths) or encoded image bytes -> {"index", "pixels"}, decoded and
    resized as in training."""
    import torch

    from bigmodel_cli.data.images import load_image_bytes, load_image_file

    pre = trained.assets
    pixels = [load_image_bytes(x, pre["channels"], pre["image_size"], f"input {i}")
              if isinstance(x, bytes) else load_image_file(Path(x), pre["channels"], pre["image_size"])
              for i, x in enumerate(images)]
    return {"index": torch.arange(len(images)), "pixels": torch.stack(pixels)}, [False] * len(images)


# request_inputs decodes every image: serve runs it off the event loop.
DECODES_REQUESTS = True


def request_inputs(trained, inputs: list) -> list[bytes]:
    """A request's `inputs` -> encoded image bytes: base64 strings (JSON; a data: URL prefix
    is allowed) or the bytes of uploaded files. Each is decoded once here, so that an image
    that does not decode is refused (naming it) before it joins a batch with others."""
    from bigmodel_cli.data.files import request_bytes
    from bigmodel_cli.data.images import decode_image

    images = request_bytes(inputs, "an image")
    for i, item in enumerate(images):
        decode_image(item, trained.assets["channels"], f"inputs[{i}]")
    return images


def input_schema(trained) -> dict:
    pre = trained.assets
    return {"kind": "image", "items": "base64 string of a PNG/JPEG/... file (or multipart "
            "files in the field 'inputs')", "channels": pre["channels"],
            "image_size": pre["image_size"], "example": [_example_png(pre)]}


def _example_png(pre: dict) -> str:
    """A blank image of the run's size, base64-encoded: a request that runs as it is."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    mode = "L" if pre["channels"] == 1 else "RGB"
    Image.new(mode, (pre["image_size"], pre["image_size"])).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
