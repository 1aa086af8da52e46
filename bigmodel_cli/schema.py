"""The type and range of every config key: one table, checked before any work starts.

`KEYS` maps each dotted key path (`trainer.max_steps`, `model.hidden_size`) to a `Spec`:
its type, whether null is allowed, and its range or choices. A key belongs here whatever its
YAML default is, null included, so `trainer.max_steps=abc` is caught as early as
`optimizer.lr=abc`. One table serves every command and every option of every group: a key
that several options share (`model.dropout`) has one spec, whose choices are the union of
what those options accept; the code that uses a value may still check it more closely.

Adding a key to conf/ means adding its line here; tests/test_config_types.py composes every
option of every group and fails on a key without one (and on a line here that no config has).
A new group `logger` is a block of `"logger.<key>": ...` lines. `a.b.*` declares every child
of the mapping `a.b`, whatever its name (data.files.*: split -> file). A key with declared
keys below it must be a mapping; declare it `mapping(null=True)` where null is allowed too.
Keys named `_target_`, `_partial_` (and Hydra's other `_..._` keys) and everything under
`hydra` are not checked here. A key added on the command line with `+key=value` that is not in
the table is the user's own and passes unchecked, as Hydra allows it.

Why a table rather than structured-config dataclasses: OmegaConf schemas know types but not
ranges or choices, stop at the first bad value, and would need a schema named in the defaults
list of every option file; the table checks type and range in one pass, reports every bad key
at once, and leaves the YAML as it is. It imports neither torch nor Hydra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spec:
    """What one key may hold. kind: int | float | bool | str | list | map."""

    kind: str
    null: bool = False                 # null (None) is allowed
    ge: float | None = None            # value >= ge
    gt: float | None = None            # value > gt
    le: float | None = None            # value <= le
    lt: float | None = None            # value < lt
    choices: tuple = ()                # the value is one of these
    item: Spec | None = None           # list: the spec of every item
    length: int | None = None          # list: exactly this many items
    many: bool = False                 # str: a list of strings is fine too

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.null
        if self.choices:
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or self.kind == "bool":  # True is an int in Python
            return isinstance(value, bool) and self.kind == "bool"
        if self.kind == "int":
            return isinstance(value, int) and self._in_range(value)
        if self.kind == "float":
            return (isinstance(value, (int, float)) and math.isfinite(value)
                    and self._in_range(value))
        if self.kind == "str":  # `text_column=2024` parses as an int; a name is still fine
            if self.many and isinstance(value, list):
                return all(_is_text(v) for v in value)
            return _is_text(value)
        if self.kind == "list":
            return (isinstance(value, list) and self.length in (None, len(value))
                    and all(self.item is None or self.item.accepts(v) for v in value))
        if self.kind == "map":
            return isinstance(value, dict)
        raise ValueError(f"unknown spec kind {self.kind!r}")

    def _in_range(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        """What is expected, for the error message: `an integer >= 1 or null`."""
        if self.choices:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        elif self.kind == "list":
            text = f"a list of {self.length}" if self.length else "a list"
            text += f" (each {self.item.describe()})" if self.item else ""
        else:
            text = _KIND_NAMES[self.kind] + self._range_text()
            if self.many:
                text += " or a list of strings"
        return text + (" or null" if self.null else "")

    def _range_text(self) -> str:
        low = (">=", "[", self.ge) if self.ge is not None else (">", "(", self.gt)
        high = ("<=", "]", self.le) if self.le is not None else ("<", ")", self.lt)
        if low[2] is not None and high[2] is not None:
            return f" in {low[1]}{_num(low[2])}, {_num(high[2])}{high[1]}"
        for sign, _, bound in (low, high):
            if bound is not None:
                return f" {sign} {_num(bound)}"
        return ""


_KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "a boolean (true or false)",
               "str": "a string", "map": "a mapping"}


def _is_text(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# The spec constructors the table is written with.

def integer(ge: int | None = None, le: int | None = None, null: bool = False) -> Spec:
    return Spec("int", null=null, ge=ge, le=le)


def number(ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, null: bool = False) -> Spec:
    return Spec("float", null=null, ge=ge, gt=gt, le=le, lt=lt)


def string(null: bool = False, many: bool = False) -> Spec:
    return Spec("str", null=null, many=many)


def one_of(*choices: Any, null: bool = False) -> Spec:
    return Spec(type(choices[0]).__name__, null=null, choices=choices)


def list_of(item: Spec, length: int | None = None, null: bool = False) -> Spec:
    return Spec("list", null=null, item=item, length=length)


def mapping(null: bool = False) -> Spec:
    return Spec("map", null=null)


BOOL = Spec("bool")
COUNT = integer(ge=1)                   # a size or a number of things: at least 1
PROBABILITY = number(ge=0, le=1)
DROPOUT = number(ge=0, lt=1)            # 1 would drop everything
POSITIVE = number(gt=0)
NON_NEGATIVE = number(ge=0)
PATH = string()
SPLIT = one_of("train", "validation", "test")

# Every key of every primary config (finetune, pretrain, evaluate, predict) and config group.
# Top-level keys are shared by the commands that have them.
KEYS: dict[str, Spec] = {
    # conf/common.yaml
    "seed": integer(ge=0),
    "cache_dir": PATH,

    # evaluate.yaml, predict.yaml
    "run": PATH,
    "ckpt": string(),                                  # best | last | a checkpoint directory
    "split": one_of("train", "validation", "test", null=True),
    "batch_size": COUNT,
    "data_path": string(null=True),
    "text": string(null=True, many=True),
    "prompt": string(null=True, many=True),
    "input": string(null=True),                        # a file, or - for stdin
    "text_column": string(),
    "path_column": string(),
    "output": string(null=True),
    "format": one_of("jsonl", "text", "onnx", null=True),   # predict: jsonl|text; export: onnx
    "top_k": integer(ge=0, null=True),
    "max_new_tokens": COUNT,
    "temperature": NON_NEGATIVE,

    "user": string(null=True, many=True),              # recommendation: user id(s)
    "history": list_of(string(), null=True),           # sequential recommendation: item ids

    "backend": one_of("torch", "onnx", "onnx-int8"),    # predict, serve: the model's runtime

    # export.yaml
    "quantize": one_of("none", "int8"),
    "opset": integer(ge=13),
    "parity_rows": COUNT,

    # serve.yaml
    "host": string(),
    "port": integer(ge=0, le=65535),                   # 0: any free port
    "max_batch_size": COUNT,
    "max_wait_ms": NON_NEGATIVE,
    "max_inputs_per_request": COUNT,
    "max_body_bytes": COUNT,
    "request_timeout_s": POSITIVE,
    "api_key_env": string(null=True),
    "workers": COUNT,
    "shutdown_grace_s": NON_NEGATIVE,
    "max_new_tokens_limit": COUNT,
    "max_temperature": NON_NEGATIVE,

    # trainer/
    "trainer.epochs": COUNT,
    "trainer.max_steps": integer(ge=1, null=True),
    "trainer.batch_size": COUNT,
    "trainer.eval_batch_size": COUNT,
    "trainer.grad_accum_steps": COUNT,
    "trainer.grad_clip": number(gt=0, null=True),
    "trainer.eval_every_steps": integer(ge=1, null=True),
    "trainer.log_every_steps": COUNT,
    "trainer.monitor": string(),                       # a validation metric's name
    "trainer.monitor_mode": one_of("max", "min"),
    "trainer.early_stopping_patience": integer(ge=1, null=True),
    "trainer.max_train_samples": integer(ge=1, null=True),
    "trainer.max_eval_samples": integer(ge=1, null=True),
    "trainer.bucket_by_length": BOOL,
    "trainer.skip_nonfinite": BOOL,
    "trainer.pause_after_steps": integer(ge=1, null=True),
    "trainer.resume": string(null=True),               # a run dir, a checkpoint dir, or auto
    "trainer.progress": one_of("auto", "bar", "log", "off"),
    "trainer.strategy": one_of("auto", "ddp", "fsdp"),

    # device/
    "device.name": one_of("auto", "cpu", "cuda", "mps"),
    "device.threads": integer(ge=1, null=True),
    "device.precision": one_of("fp32", "bf16", "fp16"),
    "device.compile": BOOL,
    # logger/: the trackers (none: metrics.jsonl only); several at once merge their blocks.
    "logger.csv.file": string(),
    "logger.tensorboard.dir": string(),
    "logger.mlflow.tracking_uri": string(),
    "logger.mlflow.experiment": string(),
    "logger.mlflow.artifact_location": string(null=True),
    "logger.wandb.project": string(),
    "logger.wandb.entity": string(null=True),
    "logger.wandb.mode": one_of("online", "offline", "disabled", "dryrun", "shared"),

    # optimizer/
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.betas": list_of(number(ge=0, lt=1), length=2),
    "optimizer.eps": NON_NEGATIVE,
    "optimizer.momentum": NON_NEGATIVE,
    "optimizer.nesterov": BOOL,

    # scheduler/
    "scheduler.warmup_ratio": PROBABILITY,
    "scheduler.min_lr_ratio": PROBABILITY,

    # task/
    "task.head_dropout": DROPOUT,
    "task.label_smoothing": DROPOUT,
    "task.monitor": string(),
    "task.monitor_mode": one_of("max", "min"),
    "task.top_k": COUNT,                               # recommendation: K of HR@K, items listed
    "task.causal": BOOL,
    "task.mask_prob": number(gt=0, le=1),              # 0 would leave nothing to predict
    "task.mask_token_prob": PROBABILITY,
    "task.random_token_prob": PROBABILITY,

    # model/: every option's keys (lstm fasttext bert gpt hf cnn mlp vit and their tiny ones)
    "model.lr": POSITIVE,
    "model.init_from": string(null=True),              # a run dir or a checkpoint dir
    "model.freeze_encoder": BOOL,
    "model.head_lr_mult": POSITIVE,
    "model.dropout": DROPOUT,
    "model.pooling": one_of("mean", "max", "last", "first", "cls", "pooler"),
    "model.embedding_dim": COUNT,
    "model.hidden_size": COUNT,
    "model.num_layers": COUNT,
    "model.bidirectional": BOOL,
    "model.ngram_buckets": integer(ge=0),              # 0 only with ngrams=1
    "model.ngrams": integer(ge=1, le=4),
    "model.sparse": BOOL,
    "model.n_layers": COUNT,
    "model.d_model": COUNT,
    "model.dim": COUNT,                                # mf: embedding size
    "model.init_std": POSITIVE,
    "model.sgd_lr": POSITIVE,                          # the model's optimizer.lr with optimizer=sgd
    "model.batch_size": COUNT,                         # the model's suggested trainer.batch_size
    "model.reg": NON_NEGATIVE,                         # mf: L2 penalty on the rows a batch uses
    "model.weight_decay": NON_NEGATIVE,                # the model's suggested AdamW weight decay
    "model.epochs": COUNT,                             # the model's suggested trainer.epochs
    "model.n_heads": COUNT,
    "model.d_ff": COUNT,
    "model.max_len": COUNT,
    "model.causal": BOOL,
    "model.name_or_path": string(),
    "model.pretrained": BOOL,
    "model.widths": list_of(COUNT),
    "model.blocks_per_stage": COUNT,
    "model.hidden_sizes": list_of(COUNT),
    "model.patch_size": COUNT,
    "model.patch_mels": COUNT,                         # audio_transformer: patch height (mel bands)
    "model.patch_frames": COUNT,                       # audio_transformer: patch width (frames)
    "model.channels": COUNT,                           # speech_ctc: front-end channels
    "model.conv_layers": COUNT,
    "model.time_stride": one_of(1, 2, 4, 8),
    "model.encoder": one_of("lstm", "transformer"),
    "model.max_frames": COUNT,
    "model.activation_checkpointing": BOOL,            # bert gpt vit hf: recompute blocks in backward
    "model.lora.enabled": BOOL,                        # bert gpt hf: LoRA adapters (peft)
    "model.lora.r": COUNT,
    "model.lora.alpha": POSITIVE,
    "model.lora.dropout": DROPOUT,
    "model.lora.target_modules": list_of(string(), null=True),   # null: the family's default
    "model.lora.lr": POSITIVE,                         # model.lr while LoRA is on

    # data/: every option's keys (text, image and tabular datasets)
    "data.kind": one_of("text", "image", "audio", "tabular", "interactions"),
    "data.name": string(),
    "data.loader": one_of("parquet", "sklearn_digits", "folder", "files", "sklearn_diabetes",
                          "movielens", "file", "manifest"),
    "data.path": string(null=True),
    "data.files.*": string(null=True),                 # split -> file name (text: or a glob)
    "data.labels_file": string(null=True),
    "data.text_column": string(),
    "data.label_column": string(null=True),            # null: unlabeled text
    # data.kind=interactions (recommendation)
    "data.file": string(null=True),
    "data.user_column": string(null=True),
    "data.item_column": string(null=True),
    "data.rating_column": string(null=True),           # null: implicit feedback
    "data.time_column": string(null=True),             # null: the file order is the time order
    "data.min_rating": number(null=True),
    "data.image_column": string(),
    "data.upstream": mapping(null=True),
    "data.upstream.url": string(),
    "data.upstream.files.*": string(),
    "data.upstream.labels_file": string(),
    "data.upstream.sha256.*": string(null=True),       # file -> checksum
    "data.upstream.git_blob.*": string(),
    "data.hub": mapping(null=True),
    "data.hub.id": string(),
    "data.hub.config": string(null=True),
    "data.hub.splits.*": string(),                     # our split -> the Hub's split
    "data.hub.text_column": string(),
    "data.hub.label_column": string(null=True),
    "data.resplit_from": one_of("train", "validation", "test", null=True),
    "data.resplit_fractions.train": PROBABILITY,
    "data.resplit_fractions.validation": PROBABILITY,
    "data.resplit_fractions.test": PROBABILITY,
    "data.split_fractions.train": PROBABILITY,
    "data.split_fractions.validation": PROBABILITY,
    "data.split_fractions.test": PROBABILITY,
    "data.validation_fraction": number(gt=0, lt=1),
    "data.sample_by": one_of("line", "paragraph", "document", null=True),
    "data.validation_from": one_of("random", "tail"),
    "data.eval_split": SPLIT,
    "data.pack": BOOL,
    "data.max_length": COUNT,
    "data.tokenizer.kind": one_of("wordpiece", "bpe", "char", "word"),
    "data.tokenizer.vocab_size": COUNT,
    "data.tokenizer.min_frequency": integer(ge=0),
    "data.tokenizer.lowercase": BOOL,
    "data.tokenizer.sample_texts": integer(ge=1, null=True),   # null: every train text
    "data.target": string(),
    "data.features": list_of(string(), null=True),     # null: every column but the target
    "data.categorical": list_of(string(), null=True),
    "data.epochs": COUNT,
    "data.batch_size": COUNT,                          # the default trainer.batch_size for this dataset
    "data.channels": one_of(1, 3),
    "data.image_size": integer(ge=1, null=True),
    "data.augment.crop_padding": integer(ge=0),
    "data.augment.hflip": BOOL,
    "data.augment.erasing": PROBABILITY,
    # data.kind=audio
    "data.path_column": string(),
    "data.transcript_column": string(null=True),
    "data.group_column": string(null=True),
    "data.sample_rate": integer(ge=1000),
    "data.clip_seconds": number(gt=0),
    "data.spectrogram.n_mels": integer(ge=2),
    "data.spectrogram.win_ms": POSITIVE,
    "data.spectrogram.hop_ms": POSITIVE,
    "data.spectrogram.f_min": NON_NEGATIVE,
    "data.spectrogram.f_max": number(gt=0, null=True),    # null: half the sample rate
    "data.augment.time_shift_ms": NON_NEGATIVE,
    "data.augment.time_masks": integer(ge=0),
    "data.augment.time_mask_frames": integer(ge=0),
    "data.augment.freq_masks": integer(ge=0),
    "data.augment.freq_mask_bins": integer(ge=0),
}


def exempt(names: tuple[str, ...]) -> bool:
    """Keys this table does not describe: Hydra's own (`hydra.*`, `_target_`, ...)."""
    return names[0] == "hydra" or (names[-1].startswith("_") and names[-1].endswith("_"))


# A key with declared keys below it (`data.tokenizer`) must be a mapping; say `mapping(null=True)`
# where it may also be null (data.hub).
_PARENTS = {key.rsplit(".", n)[0] for key in KEYS for n in range(1, key.count(".") + 1)}
_MAPPING = mapping()


def spec_for(names: tuple[str, ...]) -> Spec | None:
    """The spec of the key at `names` (("data", "files", "train")): its own entry, else its
    parent's `.*` entry, else a mapping if keys are declared below it; None if undeclared.
    A name may itself hold a dot (data.upstream.sha256 has `class.txt`), hence the tuple."""
    path, parent = ".".join(names), ".".join(names[:-1])
    if path in KEYS:
        return KEYS[path]
    if parent and f"{parent}.*" in KEYS:
        return KEYS[f"{parent}.*"]
    return _MAPPING if path in _PARENTS else None


def show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    return f"{value!r} ({type(value).__name__})"


def value_error(path: str, spec: Spec, value: Any) -> str | None:
    """`path: expected ..., got ...` when `value` is not what `spec` allows, else None."""
    if spec.accepts(value):
        return None
    return f"{path}: expected {spec.describe()}, got {show(value)}"
