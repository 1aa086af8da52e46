"""Building optimizers from the optimizer/ config group.

Embedding tables with sparse gradients (`sparse=True`, e.g. model=fasttext) cannot be
updated by Adam/AdamW/SGD-with-momentum, and a dense update of a 20M-row table per step is
what makes such models slow. Their parameters get a sparse optimizer of the same family:
torch.optim.SparseAdam (same lr, betas, eps; no weight decay) for Adam/AdamW, plain SGD
(same lr) for SGD. Every other parameter gets the configured optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in model.modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse]


def build_optimizers(model: nn.Module, make_optimizer: Callable[..., torch.optim.Optimizer],
                     optimizer_cfg: Any) -> list[torch.optim.Optimizer]:
    sparse = sparse_parameters(model)
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    optimizers = [make_optimizer(dense)] if dense else []
    if sparse:
        if "betas" in optimizer_cfg:
            optimizers.append(torch.optim.SparseAdam(
                sparse, lr=optimizer_cfg.lr, betas=tuple(optimizer_cfg.betas), eps=optimizer_cfg.eps))
        else:
            optimizers.append(torch.optim.SGD(sparse, lr=optimizer_cfg.lr))
    return optimizers
