"""Learning-rate schedules (configured as `scheduler=`), as torch LambdaLR multipliers."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    return int(round(total_steps * warmup_ratio))


def constant(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.0) -> LambdaLR:
    warmup = _warmup_steps(total_steps, warmup_ratio)
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)


def linear_warmup(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.05) -> LambdaLR:
    warmup = _warmup_steps(total_steps, warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return LambdaLR(optimizer, factor)


def cosine(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.05,
           min_lr_ratio: float = 0.0) -> LambdaLR:
    warmup = _warmup_steps(total_steps, warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
