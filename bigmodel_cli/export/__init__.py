"""Export of a trained run to ONNX (`bigmodel export`) and the onnxruntime backend that
predict (and serve) run it with.

The export folder holds everything a plain onnxruntime program needs: model.onnx,
manifest.json (inputs, outputs, dynamic axes, opset, source checkpoint and its sha256,
versions, parity and int8 reports), labels.json and tokenizer.json or preprocessing.json.
"""

INSTALL_HINT = "pip install 'bigmodel[export]'"


def require_onnx() -> None:
    """UsageError naming the install command when onnx or onnxruntime is missing."""
    from bigmodel_cli.errors import UsageError

    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            raise UsageError(f"export needs the `{name}` package: {INSTALL_HINT}") from None
