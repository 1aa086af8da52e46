"""Throughput of transformer language models: model FLOPs per token and MFU.

FLOPs per trained token, the standard estimate (Kaplan et al. 2020; PaLM's MFU, Chowdhery
et al. 2022, appendix B):

    6 * N  +  12 * n_layers * d_model * T

6N: a forward (2N multiply-adds) and a backward (4N) through the N weights a token passes,
here every parameter but the position embeddings (a lookup, no matmul); the token embedding,
tied to the LM head's output projection, counts once, at every position. 12 * L * d * T:
the attention scores and their weighted sum (QK^T and AV) over a context of T tokens
(T = data.max_length), forward and backward, without the causal mask's halving. A masked LM
projects only its masked positions onto the vocabulary: the estimate counts all of them.

MFU (model FLOPs utilisation) = tokens/s * FLOPs per token / (peak FLOPs of the devices).
The peaks are the dense (no sparsity) datasheet figures of a few CUDA devices, bf16 (used
for bf16 and fp16 runs) and plain fp32; any other device, the CPU included, has no MFU.
"""

from __future__ import annotations

from torch import nn

# torch.cuda.get_device_name() contains the key (the first match wins) -> peak FLOP/s.
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "fp32": 51e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},          # SXM (an H100 NVL has 835e12 bf16)
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp32": 91.6e12},
    "L4": {"bf16": 121e12, "fp32": 30.3e12},
    "RTX 4090": {"bf16": 165e12, "fp32": 82.6e12},
    "V100": {"fp32": 15.7e12},                         # no bf16
    "T4": {"fp32": 8.1e12},
}
LM_TASKS = ("mlm", "clm")


def flops_per_token(model: nn.Module, task_name: str, context: int | None) -> int | None:
    """The estimate above for a transformer LM (task mlm/clm on model=bert/gpt), else None."""
    encoder = getattr(model, "encoder", None)
    stack = getattr(encoder, "stack", None)
    if task_name not in LM_TASKS or stack is None or not context:
        return None
    position = {id(p) for p in encoder.pos_emb.parameters()} if hasattr(encoder, "pos_emb") \
        else set()
    n = sum(p.numel() for p in model.parameters() if id(p) not in position)
    return 6 * n + 12 * len(stack.blocks) * encoder.output_dim * context


def peak_flops(device, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s of one device for this precision, or None; the device's name or why not)."""
    if device.type != "cuda":
        return None, f"no MFU on {device.type} (peak FLOPs are known for CUDA devices only)"
    import torch

    return device_peak(torch.cuda.get_device_name(device), precision)


def device_peak(name: str, precision: str) -> tuple[float | None, str]:
    """PEAK_FLOPS by a CUDA device's name: (peak or None, the name or why not)."""
    for key, peaks in PEAK_FLOPS.items():
        if key in name:
            peak = peaks.get("bf16" if precision in ("bf16", "fp16") else "fp32")
            if peak is None:
                return None, f"no MFU: no {precision} peak known for {name}"
            return peak, name
    return None, f"no MFU: the peak FLOPs of {name} are not in the table"


def summary(model: nn.Module, task_name: str, context: int | None, tokens_per_s: float,
            device, precision: str, world_size: int) -> dict:
    """The throughput fields of metrics.json (all None for a model the estimate does not cover)."""
    per_token = flops_per_token(model, task_name, context)
    if per_token is None:
        return {"flops_per_token": None, "model_flops_per_s": None, "mfu": None, "mfu_note": None}
    peak, note = peak_flops(device, precision)
    achieved = tokens_per_s * per_token
    return {"flops_per_token": per_token, "model_flops_per_s": round(achieved),
            "mfu": None if peak is None else round(achieved / (peak * world_size), 4),
            "mfu_note": note}
