"""data.kind=audio: labeled clips (task=classification: keyword spotting) or transcribed
utterances (task=ctc: speech recognition), decoded once and held in memory as float32
waveforms at data.sample_rate.

prepare() computes the per-mel-band mean/std of the log-mel features on train and writes
preprocessing.json (sample rate, clip length, feature settings and statistics,
augmentation, the row groups) and labels.json (the classes; for ctc the blank and the
transcript alphabet) into the run directory. Features and augmentation run in the
encoder's first module, on the training device (bigmodel_cli.data.audio_features).
Classification clips are centre-cropped or zero-padded to data.clip_seconds; CTC
utterances keep their length and are batched with similar lengths (less padding).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bigmodel_cli.data.kinds import DataContext, EvalData, Prepared
from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel.data")

PREPROCESSING = "preprocessing.json"
BLANK = "<blank>"


def _transcribes(task) -> bool:
    """True for task=ctc (transcripts), False for classification (labels)."""
    if task.name not in ("classification", "ctc"):
        raise UsageError(f"data.kind=audio supports task=classification and task=ctc, not "
                         f"task={task.name}")
    return task.name == "ctc"


@dataclass
class Clips:
    """Fixed-length clips (classification): columns of one tensor each."""

    audio: object            # float32 [N, samples]
    labels: object           # int64 [N]
    groups: object           # int64 [N]

    def __len__(self) -> int:
        return int(self.audio.shape[0])

    def columns(self) -> dict:
        return {"audio": self.audio, "labels": self.labels, "group": self.groups}


@dataclass
class Utterances:
    """Utterances of their own lengths with character targets (ctc), stored flat."""

    audio: object            # float32 [total samples]
    offsets: object          # int64 [N + 1]
    targets: object          # int64 [total characters]
    target_offsets: object   # int64 [N + 1]
    groups: object           # int64 [N]

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def lengths(self):
        return self.offsets[1:] - self.offsets[:-1]


def feature_config(data_cfg: DictConfig) -> dict:
    return {"sample_rate": int(data_cfg.sample_rate),
            **OmegaConf.to_container(data_cfg.spectrogram, resolve=True)}


def clip_samples(data_cfg: DictConfig, transcribes: bool) -> int | None:
    return None if transcribes else round(float(data_cfg.clip_seconds) * int(data_cfg.sample_rate))


def prepare(cfg: DictConfig, run_dir: Path, ctx: DataContext, task) -> Prepared:
    from bigmodel_cli.data.audio import load_audio_dataset
    from bigmodel_cli.data.audio_features import AudioFeatures, log_mel_stats
    from bigmodel_cli.jsonfiles import write_json

    transcribes = _transcribes(task)
    data = load_audio_dataset(cfg.data, transcripts=transcribes, seed=ctx.seed,
                              max_train_samples=ctx.max_train_samples,
                              max_eval_samples=ctx.max_eval_samples)
    features = feature_config(cfg.data)
    mean, std = log_mel_stats(AudioFeatures(**features), data.splits["train"].waves)
    if transcribes:
        alphabet = sorted(set("".join(data.splits["train"].targets)))
        label_names = [BLANK, *alphabet]
    else:
        label_names = data.label_names
    groups = sorted({g for s in data.splits.values() for g in s.groups})
    clip = clip_samples(cfg.data, transcribes)
    augment = OmegaConf.to_container(cfg.data.augment, resolve=True)
    preprocessing = {"kind": "audio", "task": task.name, "sample_rate": features["sample_rate"],
                     "clip_samples": clip, "features": {**features, "mean": mean, "std": std},
                     "augment": augment, "groups": groups}
    log.info("data: %s", data.source)
    log.info("splits: %s; %d %s; %s at %d Hz; groups %s", ", ".join(
        f"{k} {len(v)}" for k, v in data.splits.items()), len(label_names),
        "symbols (blank + alphabet)" if transcribes else "labels",
        "utterances" if transcribes else f"clips of {clip} samples", features["sample_rate"],
        ", ".join(groups))
    if ctx.is_main:
        write_json(run_dir / "labels.json", label_names)
        write_json(run_dir / PREPROCESSING, preprocessing)
    task.set_groups(groups)
    if transcribes:
        task.set_symbols(label_names)
    splits = {name: _tensors(split, label_names, groups, clip, f"{data.source} [{name}]")
              for name, split in data.splits.items()}
    model_args = {"features": {**preprocessing["features"], **augment}, "clip_samples": clip}
    return Prepared(splits=splits, make_batches=_batches_factory(cfg, ctx), model_args=model_args,
                    label_names=label_names, encoding={"sample_rate": features["sample_rate"],
                                                       "clip_samples": clip},
                    source=data.source, folder=data.folder, notes=data.notes)


def _tensors(split, label_names: list[str], groups: list[str], clip: int | None, where: str):
    """An AudioSplit as Clips (clip: samples per clip) or Utterances (clip None)."""
    import torch

    from bigmodel_cli.data.audio import fit_clip

    group_ids = torch.tensor([groups.index(g) for g in split.groups], dtype=torch.int64)
    if clip is not None:
        audio = torch.from_numpy(np.stack([fit_clip(w, clip) for w in split.waves])) \
            if len(split) else torch.zeros(0, clip)
        labels = torch.tensor([label_names.index(t) for t in split.targets], dtype=torch.int64)
        return Clips(audio, labels, group_ids)
    symbols = {c: i for i, c in enumerate(label_names)}
    unknown = sorted({c for t in split.targets for c in t if c not in symbols})
    if unknown:
        log.warning("note: %s: characters %s are not in the run's alphabet and are left out of "
                    "the targets", where, " ".join(repr(c) for c in unknown[:10]))
    encoded = [[symbols[c] for c in t if c in symbols] for t in split.targets]
    return Utterances(
        audio=torch.from_numpy(np.concatenate(split.waves)) if len(split) else torch.zeros(0),
        offsets=_offsets([len(w) for w in split.waves]),
        targets=torch.tensor([i for e in encoded for i in e], dtype=torch.int64),
        target_offsets=_offsets([len(e) for e in encoded]), groups=group_ids)


def _offsets(lengths: list[int]):
    import torch

    return torch.tensor(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]), dtype=torch.int64)


def _batches_factory(cfg: DictConfig, ctx: DataContext):
    from bigmodel_cli.data.tensor_batches import batches_factory

    clips = batches_factory(ctx)

    def make(data, batch_size: int, train: bool):
        if isinstance(data, Clips):
            return clips(data, batch_size, train)
        from bigmodel_cli.data.audio_batches import UtteranceBatches

        return UtteranceBatches(data, batch_size, shuffle=train, seed=ctx.seed,
                                bucket_by_length=cfg.trainer.bucket_by_length,
                                rank=ctx.rank if train else 0,
                                world_size=ctx.world_size if train else 1)
    return make


def eval_batches(trained, data_cfg: DictConfig, split: str | None, batch_size: int,
                 ctx: DataContext) -> EvalData:
    """One split of `data_cfg`, decoded and sized as in training."""
    from bigmodel_cli.data.audio import load_audio_dataset
    from bigmodel_cli.data.text_kind import choose_split

    transcribes = _transcribes(trained.task)
    data = load_audio_dataset(data_cfg, transcripts=transcribes, seed=ctx.seed,
                              max_train_samples=ctx.max_train_samples,
                              max_eval_samples=ctx.max_eval_samples)
    split = choose_split(data.splits, split, data_cfg)
    if not transcribes and data.label_names != trained.label_names:
        raise UsageError(f"the labels of the data ({data.label_names}) differ from the run's "
                         f"labels.json ({trained.label_names})")
    pre = trained.assets
    groups = list(pre["groups"])
    groups += sorted({g for g in data.splits[split].groups} - set(groups))
    trained.task.set_groups(groups)
    if transcribes:
        trained.task.set_symbols(trained.label_names)
    tensors = _tensors(data.splits[split], trained.label_names, groups, pre["clip_samples"],
                       f"{data.source} [{split}]")
    return EvalData(split=split, batches=_batches_factory(trained.config, ctx)(
        tensors, batch_size, False), label_names=trained.label_names)


def load_assets(run_dir: Path, meta: dict) -> dict:
    """The run's preprocessing.json: sample rate, clip length, features, groups."""
    from bigmodel_cli.data.image_kind import read_preprocessing

    return read_preprocessing(run_dir)


def read_inputs(cfg: DictConfig, stats: dict) -> Iterator[tuple[dict, Path]]:
    """({"index", "path"}, path) for `input=` an audio file, a folder of them, or a
    .csv/.tsv/.txt list of audio paths."""
    from bigmodel_cli.data.audio import audio_inputs
    from bigmodel_cli.data.files import path_inputs

    return path_inputs(cfg, audio_inputs, "this run reads audio: give input=FILE.wav, "
                       "input=FOLDER or input=LIST.csv (a column of audio paths, path_column=)")


def encode_inputs(trained, inputs: list, task) -> tuple[dict, list[bool]]:
    """Audio files (paths) or their bytes -> a batch, decoded and resampled as in training:
    {"index", "audio"} clips (cropped or padded; a longer clip is flagged as truncated) or
    {"index", "audio", "audio_lengths"} utterances."""
    import torch

    from bigmodel_cli.data.audio import decode_audio, fit_clip

    pre = trained.assets
    waves = [decode_audio(x, pre["sample_rate"], f"input {i}" if isinstance(x, bytes) else str(x))
             for i, x in enumerate(inputs)]
    index = torch.arange(len(inputs))
    clip = pre["clip_samples"]
    if clip is not None:
        audio = torch.from_numpy(np.stack([fit_clip(w, clip) for w in waves]))
        return {"index": index, "audio": audio}, [len(w) > clip for w in waves]
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    audio = torch.zeros(len(waves), max(1, int(lengths.max())))
    for i, w in enumerate(waves):
        audio[i, :len(w)] = torch.from_numpy(w)
    return {"index": index, "audio": audio, "audio_lengths": lengths}, [False] * len(waves)


# request_inputs decodes every clip: serve runs it off the event loop.
DECODES_REQUESTS = True


def request_inputs(trained, inputs: list) -> list[bytes]:
    """A request's `inputs` -> audio file bytes: base64 strings (a data: URL prefix is
    allowed). Each is decoded once here, so that a clip that does not decode is refused
    (naming it) before it joins a batch with others."""
    from bigmodel_cli.data.audio import decode_audio
    from bigmodel_cli.data.files import request_bytes

    clips = request_bytes(inputs, "an audio file")
    for i, item in enumerate(clips):
        decode_audio(item, trained.assets["sample_rate"], f"inputs[{i}]")
    return clips


def input_schema(trained) -> dict:
    pre = trained.assets
    return {"kind": "audio", "items": "base64 string of a WAV/FLAC/OGG/MP3 file (any sample "
            "rate and channels: mixed down to mono and resampled)", "sample_rate":
            pre["sample_rate"], "clip_samples": pre["clip_samples"], "example": [_example_wav(pre)]}


def _example_wav(pre: dict) -> str:
    """Half a second of silence as a base64 WAV file: a request that runs as it is."""
    import base64
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(pre["sample_rate"] // 2, dtype=np.float32), pre["sample_rate"],
             format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
