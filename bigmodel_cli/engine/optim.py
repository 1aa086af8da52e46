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
                     optimizer_cfg: Any, head_lr_mult: float = 1.0) -> list[torch.optim.Optimizer]:
    """With `head_lr_mult` != 1 (model.head_lr_mult), the parameters outside `model.encoder`
    (a new task head) learn at lr * head_lr_mult: a pretrained encoder wants a small lr,
    a freshly initialised head a larger one."""
    sparse = sparse_parameters(model)
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    groups: Any = dense
    if head_lr_mult != 1.0 and hasattr(model, "encoder"):
        encoder_ids = {id(p) for p in model.encoder.parameters()}
        body = [p for p in dense if id(p) in encoder_ids]
        head = [p for p in dense if id(p) not in encoder_ids]
        groups = [g for g in ({"params": body},
                              {"params": head, "lr": optimizer_cfg.lr * head_lr_mult}) if g["params"]]
    optimizers = [make_optimizer(groups)] if dense else []
    if sparse:
        if "betas" in optimizer_cfg:
            optimizers.append(torch.optim.SparseAdam(
                sparse, lr=optimizer_cfg.lr, betas=tuple(optimizer_cfg.betas), eps=optimizer_cfg.eps))
        else:
            optimizers.append(torch.optim.SGD(sparse, lr=optimizer_cfg.lr))
    return optimizers
