"""The onnxruntime backend: an exported folder presented as the model a task calls.

`OnnxModel(batch)` returns what the torch model returns (classification: the logits tensor;
regression: {"scaled", "value"}), so the task's `predict_records` makes the same records
from either backend. Predictor (and so predict and serve) choose it with `backend=onnx`
(or `onnx-int8`, the quantized folder).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bigmodel_cli.errors import UsageError

BACKENDS = ("torch", "onnx", "onnx-int8")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_session(model_file: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fusions too
    if threads:  # device.threads; null: onnxruntime's default
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """Calls an onnxruntime session with a batch dict, returns torch tensors."""

    def __init__(self, session, inputs: list[str], outputs: list[str]) -> None:
        self.session, self.inputs, self.outputs = session, inputs, outputs

    def __call__(self, batch: dict):
        import torch

        feeds = {name: batch[name].detach().cpu().numpy() for name in self.inputs}
        results = [torch.from_numpy(x) for x in self.session.run(self.outputs, feeds)]
        if self.outputs == ["logits"]:
            return results[0]
        return dict(zip(self.outputs, results))

    def eval(self) -> OnnxModel:
        return self

    def to(self, *args, **kwargs) -> OnnxModel:
        return self


def export_folder(run_dir: Path, backend: str) -> Path:
    return Path(run_dir) / "export" / backend


def load_export(folder: Path, ckpt_dir: Path, threads: int | None) -> OnnxModel:
    """The folder's session; UsageError (exit 2) when it is missing, corrupt or was exported
    from another checkpoint than the one asked for."""
    from bigmodel_cli.export import require_onnx

    require_onnx()
    manifest_file, model_file = folder / "manifest.json", folder / "model.onnx"
    what = f"backend={folder.name}"
    hint = f"export it with: bigmodel export run={ckpt_dir.parent.parent}"
    for needed in (manifest_file, model_file):
        if not needed.is_file():
            raise UsageError(f"{what}: no {needed.name} in {folder} ({hint})")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        expected = manifest["model_sha256"]
        inputs = [i["name"] for i in manifest["inputs"]]
        outputs = [o["name"] for o in manifest["outputs"]]
        source = manifest["source"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{what}: unreadable manifest.json in {folder} ({exc}; {hint})") from None
    if sha256(model_file) != expected:
        raise UsageError(f"{what}: {model_file} does not match its manifest (corrupt or "
                         f"replaced; {hint})")
    weights = ckpt_dir / "model.safetensors"
    if weights.is_file() and sha256(weights) != source:
        raise UsageError(f"{what}: {folder} was exported from another checkpoint than "
                         f"{ckpt_dir} ({hint})")
    try:
        session = make_session(model_file, threads)
    except Exception as exc:
        raise UsageError(f"{what}: onnxruntime cannot load {model_file} ({exc}; {hint})") from None
    return OnnxModel(session, inputs, outputs)
