"""Export benchmark: torch eager vs onnxruntime fp32 vs int8, and KV-cached generation.

    python bench/export_bench.py RUN_DIR [RUN_DIR ...]   # runs exported with
                                                          # bigmodel export (+ quantize=int8)
    python bench/export_bench.py --generation             # tokens/s, 200 tokens, cache on/off

Items/s at batch 1 and 64 on the runs' validation rows, file sizes, and the manifest's
int8 test scores. Figures, not assertions: timings depend on the machine's load.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _rate(fn, batches, seconds: float = 2.0) -> float:
    items, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in batches:
            fn(batch)
            items += int(next(iter(batch.values())).shape[0])
    return items / (time.perf_counter() - start)


def bench_run(run_dir: Path) -> dict:
    import torch
    from omegaconf import OmegaConf

    from bigmodel_cli.commands.common import load_run
    from bigmodel_cli.export.backend import load_export
    from bigmodel_cli.export.onnx_export import _rows

    trained = load_run(str(run_dir), "best", torch.device("cpu"))
    cfg = OmegaConf.create({"data_path": None, "cache_dir": str(Path.home() / ".cache/bigmodel"),
                            "batch_size": 64})
    inputs = list(trained.model.encoder.inputs)
    val = [{k: b[k] for k in inputs} for b in _rows(cfg, trained, "validation", 256)]
    ones = [{k: v[i:i + 1] for k, v in val[0].items()} for i in range(32)]
    result = {"run": str(run_dir)}
    backends = {"torch": trained.model}
    for name in ("onnx", "onnx-int8"):
        folder = run_dir / "export" / name
        if folder.is_dir():
            backends[name] = load_export(folder, trained.ckpt_dir, torch.get_num_threads())
            manifest = json.loads((folder / "manifest.json").read_text())
            result[f"{name}_bytes"] = (folder / "model.onnx").stat().st_size
            if "int8" in manifest:
                result["int8_report"] = {k: manifest["int8"][k] for k in
                                         ("metric", "fp32_score", "int8_score")}
    with torch.inference_mode():
        for name, model in backends.items():
            result[f"{name}_batch_1"] = _rate(model, ones)
            result[f"{name}_batch_64"] = _rate(model, val)
    return result


def bench_generation(tokens: int = 200) -> dict:
    import torch

    from bigmodel_cli.models.text_transformer import TextTransformer
    from bigmodel_cli.tasks.generation import generate
    from bigmodel_cli.tasks.language_model import LanguageModel

    class Ids:
        def decode(self, ids):
            return ""

    torch.manual_seed(0)
    model = LanguageModel(TextTransformer(100, n_layers=4, d_model=256, n_heads=4, d_ff=1024,
                                          max_len=256, dropout=0.0, causal=True), False).eval()
    out = {}
    with torch.inference_mode():
        for cached in (False, True):
            start = time.perf_counter()
            generate(model, Ids(), [5, 6, 7, 8], max_new_tokens=tokens, temperature=0, top_k=0,
                     generator=None, device="cpu", use_cache=cached)
            out["cache" if cached else "no_cache"] = tokens / (time.perf_counter() - start)
    out["speedup"] = out["cache"] / out["no_cache"]
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--generation"]:
        print(json.dumps({"generation_tokens_per_s": bench_generation()}, indent=2))
    else:
        for arg in sys.argv[1:]:
            print(json.dumps(bench_run(Path(arg)), indent=2))
