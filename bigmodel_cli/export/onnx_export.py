"""`bigmodel export`: a trained classification or regression run -> an ONNX folder.

Steps: load the run on CPU, trace the model (the TorchScript exporter; torch.export's
where that one cannot), check onnxruntime against torch on
the validation rows (an fp32 export that disagrees on more than 0.1% of labels fails),
optionally quantize (dynamic int8) and score both on the test split, then write the folder.
Everything is written into a temporary folder beside the target and renamed at the end,
so a failure leaves no half-written folder. A LoRA run's adapters are merged into the base
weights for the graph; parity is checked against the unmerged torch model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel")

EXPORTABLE = ("classification", "regression")
MAX_DISAGREEMENT = 0.001
AXES = {"input_ids": {0: "batch", 1: "sequence"}, "lengths": {0: "batch"},
        "pixels": {0: "batch"}, "features": {0: "batch"}}


def export_run(cfg: DictConfig) -> dict:
    from bigmodel_cli.commands.common import load_run
    from bigmodel_cli.engine.runtime import select_device
    from bigmodel_cli.export import require_onnx

    if cfg.format != "onnx":
        raise UsageError(f"format={cfg.format}: must be onnx")
    if cfg.quantize not in ("none", "int8"):
        raise UsageError(f"quantize={cfg.quantize}: must be none or int8")
    from bigmodel_cli.inference import run_data_kind

    if run_data_kind(cfg.run, cfg.ckpt) == "audio":
        raise UsageError(f"run={cfg.run}: audio runs cannot be exported yet (their first module "
                         "computes log-mel features with torch.stft, which the ONNX graph does "
                         "not carry); use `bigmodel predict` or `bigmodel serve` on the run")
    require_onnx()
    device = select_device("cpu", cfg.device.threads)
    trained = load_run(str(cfg.run), cfg.ckpt, device)
    check_exportable(trained, f"run={cfg.run}")
    name = "onnx" if cfg.quantize == "none" else "onnx-int8"
    out = Path(cfg.output).expanduser() if cfg.output else trained.run_dir / "export" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _build(cfg, trained, tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _print(manifest, out)
    return {"output": str(out), "parity": manifest["parity"], "int8": manifest.get("int8")}


# Why a task is not exported, and what to use instead.
NOT_EXPORTABLE = {
    "clm": "its predictions are a generation loop (one forward per new token), not one graph; "
           "generate with `bigmodel predict run=...` or `bigmodel serve run=...` (backend=torch), "
           "which decode with a KV cache",
    "mlm": "fill-mask is a pretraining task, not a deployable model; use `bigmodel predict "
           "run=...` (backend=torch), or finetune the run for classification and export that",
}


def check_exportable(trained, what: str) -> None:
    """UsageError (exit 2) for a run whose task has no ONNX export, saying why."""
    name = trained.task.name
    if name not in EXPORTABLE:
        reason = NOT_EXPORTABLE.get(name, "its predictions rank every item, not one graph; use "
                                          "`bigmodel predict run=...` (backend=torch)")
        raise UsageError(f"{what}: a {name} run cannot be exported to ONNX ({reason})")


def _build(cfg: DictConfig, trained, folder: Path) -> dict:
    from bigmodel_cli.export.backend import make_session, sha256

    val = _rows(cfg, trained, "validation", cfg.parity_rows)
    inputs = list(trained.model.encoder.inputs)
    outputs = ["logits"] if trained.task.name == "classification" else ["value", "scaled"]
    fp32_file = folder / "model.onnx"
    lora = trained.meta.get("lora")
    graph_model = trained.model
    if lora:
        from bigmodel_cli.models.lora import merged_copy

        graph_model = merged_copy(trained.model)
    exporter = _export_graph(graph_model, inputs, outputs, val[0], fp32_file, cfg.opset)
    _preprocess(fp32_file, inputs, val[0])
    session = make_session(fp32_file, cfg.device.threads)
    parity = _parity(trained, session, inputs, outputs, val)
    log.info("parity (%s exporter) on %d validation rows: max abs diff %.3g%s", exporter,
             parity["rows"], parity["max_abs_diff"],
             f", labels agree {parity['label_agreement']:.4%}" if "label_agreement" in parity else "")
    if parity["failed"]:
        raise RuntimeError(f"onnxruntime disagrees with torch on {parity['detail']}; "
                           "nothing was written")
    report = None
    if cfg.quantize == "int8":
        report = _quantize(cfg, trained, folder, session, inputs, outputs)
    _write_assets(trained, folder)
    import onnx
    import onnxruntime

    from bigmodel_cli.engine.runtime import versions

    manifest = {
        "format": "onnx", "opset": cfg.opset, "exporter": exporter, "task": trained.task.name,
        "data_kind": trained.meta.get("data_kind", "text"), "quantize": cfg.quantize,
        "inputs": [{"name": k, "dtype": "int64" if k in ("input_ids", "lengths") else "float32",
                    "dynamic_axes": AXES[k]} for k in inputs],
        "outputs": [{"name": k, "dtype": "float32", "dynamic_axes": {0: "batch"}} for k in outputs],
        "labels": trained.label_names,
        "model_sha256": sha256(fp32_file), "model_bytes": fp32_file.stat().st_size,
        "source": {"run": str(trained.run_dir), "checkpoint": str(trained.ckpt_dir),
                   "sha256": sha256(trained.ckpt_dir / "model.safetensors"),
                   "step": trained.meta.get("step")},
        "lora": lora and {"merged": True, "base": lora["base"]},
        "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "parity": parity,
    }
    if report is not None:
        manifest["int8"] = report
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False),
                                          encoding="utf-8")
    return manifest


def _rows(cfg: DictConfig, trained, split: str, limit: int | None) -> list[dict]:
    """Model-input batches of a split (the whole split, not the training run's debug
    subset, up to `limit` rows), with their "labels"/"targets"."""
    from bigmodel_cli.data import kinds

    train_cfg = trained.config
    data_cfg = train_cfg.data
    if cfg.data_path is not None:
        data_cfg = OmegaConf.merge(data_cfg, {"path": cfg.data_path})
    ctx = kinds.DataContext(seed=train_cfg.seed, cache_dir=Path(cfg.cache_dir).expanduser(),
                            max_train_samples=train_cfg.trainer.max_train_samples,
                            max_eval_samples=None)
    try:
        data = kinds.module(data_cfg).eval_batches(trained, data_cfg, split, cfg.batch_size, ctx)
    except UsageError:
        data = kinds.module(data_cfg).eval_batches(trained, data_cfg, None, cfg.batch_size, ctx)
    batches, count = [], 0
    for batch in data.batches:
        batches.append(batch)
        count += int(next(iter(batch[k] for k in trained.model.encoder.inputs)).shape[0])
        if limit is not None and count >= limit:
            break
    return batches


def _export_graph(model, inputs: list[str], outputs: list[str], batch: dict, path: Path,
                  opset: int) -> str:
    """Trace `model` into `path`; the TorchScript exporter first, torch.export's after."""
    import torch

    graph = _Graph(model, inputs, outputs).eval()
    example = tuple(batch[k][:4] for k in inputs)
    axes = {k: AXES[k] for k in inputs} | {k: {0: "batch"} for k in outputs}
    errors = []
    for dynamo in (False, True):
        dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
        # forward(*tensors): torch.export sees one argument, the tuple of inputs
        kwargs = ({"dynamic_shapes": (tuple({d: dims[n] for d, n in AXES[k].items()} for k in inputs),)}
                  if dynamo else {"dynamic_axes": axes})
        try:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(graph, example, str(path), input_names=inputs,
                                  output_names=outputs, opset_version=opset, dynamo=dynamo,
                                  verbose=False, **kwargs)
            _single_file(path)
            _check_runs(path, inputs, batch)
            return "torch.export" if dynamo else "torchscript"
        except Exception as exc:  # the other exporter may manage
            errors.append(f"{'torch.export' if dynamo else 'torchscript'}: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}")
            path.unlink(missing_ok=True)
    raise RuntimeError("the model could not be exported to ONNX: " + "; ".join(errors))


def _preprocess(path: Path, inputs: list[str], batch: dict) -> None:
    """onnxruntime's recommended pre-processing before quantization (symbolic shape inference,
    then its basic graph optimizations, standard ONNX ops only), for fp32 and int8 alike: the
    shape arithmetic between the layers folds into constants (BERT d_model 128: 220 -> 170
    kernels per call after the session's own optimizations; fp32 +4%, int8 +6% items/s at
    batch 1). A graph it cannot handle is kept as exported."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = path.resolve()
    done = path.with_name(path.stem + ".pre.onnx")
    try:
        # In a scratch working directory: where its shape inference is incomplete,
        # onnxruntime saves the partial graph (weights included) into the working directory
        # before it raises.
        with (warnings.catch_warnings(), tempfile.TemporaryDirectory() as scratch,
              contextlib.chdir(scratch)):
            warnings.simplefilter("ignore")
            quant_pre_process(str(path), str(done))
        _check_runs(done, inputs, batch)
    except Exception as exc:  # an optimization, not a requirement
        log.info("onnx pre-processing skipped (%s: %s)", type(exc).__name__, exc)
        done.unlink(missing_ok=True)
        return
    done.replace(path)


def _single_file(path: Path) -> None:
    """torch.export's exporter keeps weights in model.onnx.data: fold them into model.onnx
    (one file to copy and hash; ONNX files stay under protobuf's 2 GB here)."""
    import onnx

    data = path.with_name(path.name + ".data")
    if data.exists():
        onnx.save(onnx.load(str(path)), str(path))
        data.unlink()


def _check_runs(path: Path, inputs: list[str], batch: dict) -> None:
    """The graph runs on a batch of another size than the example it was traced with."""
    from bigmodel_cli.export.backend import make_session

    make_session(path, None).run(None, {k: batch[k].numpy() for k in inputs})


class _Graph:
    """The model as a function of its input tensors, returning the task's output tensors."""

    def __new__(cls, model, inputs, outputs):
        from torch import nn

        class Graph(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *tensors):
                out = self.model(dict(zip(inputs, tensors)))
                return out if outputs == ["logits"] else tuple(out[k] for k in outputs)

        return Graph()


def _outputs(trained, session, inputs: list[str], outputs: list[str], batch: dict):
    """(torch, onnxruntime) primary outputs of one batch, as numpy."""
    import torch

    with torch.no_grad():
        ref = trained.model(batch)
    ref = ref if outputs == ["logits"] else ref["value"]
    got = session.run([outputs[0]], {k: batch[k].numpy() for k in inputs})[0]
    return ref.float().numpy(), got


def _parity(trained, session, inputs, outputs, batches) -> dict:
    import numpy as np

    diff, rows, agree, scale = 0.0, 0, 0, 0.0
    for batch in batches:
        ref, got = _outputs(trained, session, inputs, outputs, batch)
        diff = max(diff, float(np.abs(ref - got).max()))
        scale = max(scale, float(np.abs(ref).max()))
        rows += ref.shape[0]
        if outputs == ["logits"]:
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
    report = {"rows": rows, "max_abs_diff": diff, "split": "validation"}
    if outputs == ["logits"]:
        report["label_agreement"] = agree / max(rows, 1)
        report["failed"] = 1 - report["label_agreement"] > MAX_DISAGREEMENT
        report["detail"] = f"{rows - agree} of {rows} labels"
    else:  # regression: outputs within 0.1% of their scale
        report["failed"] = diff > MAX_DISAGREEMENT * max(scale, 1.0)
        report["detail"] = f"values (max abs diff {diff:.3g}, scale {scale:.3g})"
    return report


def _quantize(cfg, trained, folder: Path, fp32_session, inputs, outputs) -> dict:
    """Dynamic int8 (weights int8, activations quantized on the fly): model.onnx becomes the
    quantized graph; test-split scores, sizes and speeds of both are reported."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from bigmodel_cli.export.backend import make_session

    fp32_file, int8_file = folder / "model.onnx", folder / "model.int8.onnx"
    fp32_bytes = fp32_file.stat().st_size
    quantize_dynamic(str(fp32_file), str(int8_file), weight_type=QuantType.QInt8)
    int8_session = make_session(int8_file, cfg.device.threads)
    test = _rows(cfg, trained, "test", None)
    report = {"split_rows": sum(int(b[inputs[0]].shape[0]) for b in test),
              "fp32_bytes": fp32_bytes, "int8_bytes": int8_file.stat().st_size}
    for tag, session in (("fp32", fp32_session), ("int8", int8_session)):
        report[f"{tag}_score"] = _score(session, inputs, outputs, test)
        report[f"{tag}_items_per_s"] = _speed(session, inputs, outputs, test)
    report["metric"] = "accuracy" if outputs == ["logits"] else "r2"
    fp32_file.unlink()
    int8_file.rename(fp32_file)
    return report


def _score(session, inputs, outputs, batches) -> float:
    import numpy as np

    preds, truth = [], []
    for batch in batches:
        got = session.run([outputs[0]], {k: batch[k].numpy() for k in inputs})[0]
        if outputs == ["logits"]:
            preds.append(got.argmax(-1))
            truth.append(batch["labels"].numpy())
        else:
            preds.append(got)
            truth.append(batch["targets"].numpy().reshape(got.shape))
    p, t = np.concatenate(preds), np.concatenate(truth)
    if outputs == ["logits"]:
        return float((p == t).mean())
    from sklearn.metrics import r2_score

    return float(r2_score(t, p))


def timing_samples(batches: list[dict], inputs: list[str], singles: int = 32,
                   fulls: int = 4) -> tuple[list[dict], list[dict]]:
    """(`singles` rows as batches of one, `fulls` whole batches), spread evenly over
    `batches`: evaluation batches come sorted by length, so the first ones hold the
    shortest texts (4-8 tokens of THUCNews headlines that average ~18), where fixed costs per
    call dominate. A text row keeps no padding, as predict gives a lone text none."""
    rows = [(b, i) for b in batches for i in range(int(b[inputs[0]].shape[0]))]
    picked = [rows[j * len(rows) // singles] for j in range(min(singles, len(rows)))]
    single = []
    for batch, i in picked:
        row = {k: batch[k][i:i + 1] for k in inputs}
        if "lengths" in row and "input_ids" in row:
            row["input_ids"] = row["input_ids"][:, :int(row["lengths"][0])]
        single.append(row)
    n = min(fulls, len(batches))
    full = [{k: batches[j * len(batches) // n][k] for k in inputs} for j in range(n)]
    return single, full


def _speed(session, inputs, outputs, batches, seconds: float = 1.0) -> dict:
    """Items per second at batch 1 and at the split's batch size (about `seconds` each)."""
    single, full = timing_samples(batches, inputs)
    result = {}
    for tag, tensors in (("batch_1", single), ("batch_full", full)):
        feeds = [{k: v.numpy() for k, v in feed.items()} for feed in tensors]
        items, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for feed in feeds:
                session.run([outputs[0]], feed)
                items += int(feed[inputs[0]].shape[0])
        result[tag] = items / (time.perf_counter() - start)
    return result


def _write_assets(trained, folder: Path) -> None:
    """labels.json, and what reads raw inputs: tokenizer.json + preprocessing.json (text),
    the run's preprocessing.json (images, tables)."""
    from bigmodel_cli.data.text_kind import encoding_of

    shutil.copy2(trained.run_dir / "labels.json", folder / "labels.json")
    for name in ("tokenizer.json", "preprocessing.json"):
        if (trained.run_dir / name).is_file():
            shutil.copy2(trained.run_dir / name, folder / name)
    if trained.meta.get("data_kind", "text") == "text":
        encoding = encoding_of(trained.meta)
        (folder / "preprocessing.json").write_text(json.dumps({
            "kind": "text", "max_length": encoding["max_length"],
            "add_special_tokens": encoding["add_special_tokens"], "pad_id": 0,
            "inputs": "input_ids: token ids of tokenizer.json, right-padded with pad_id; "
                      "lengths: the number of real tokens per text"}, indent=2), encoding="utf-8")


def _print(manifest: dict, out: Path) -> None:
    p = manifest["parity"]
    line = f"parity: {p['rows']} validation rows, max abs diff {p['max_abs_diff']:.3g}"
    if "label_agreement" in p:
        line += f", label agreement {p['label_agreement']:.4%}"
    print(line, flush=True)
    q = manifest.get("int8")
    if q:
        print(f"int8: test {q['metric']} fp32 {q['fp32_score']:.4f} -> int8 {q['int8_score']:.4f}; "
              f"size {q['fp32_bytes'] / 1e6:.2f} MB -> {q['int8_bytes'] / 1e6:.2f} MB; items/s at "
              f"batch 1 {q['fp32_items_per_s']['batch_1']:.0f} -> {q['int8_items_per_s']['batch_1']:.0f}, "
              f"batched {q['fp32_items_per_s']['batch_full']:.0f} -> "
              f"{q['int8_items_per_s']['batch_full']:.0f}", flush=True)
    print(out, flush=True)
