"""Building optimizers from the optimizer/ config group.

Embedding tables with sparse gradients (`sparse=True`, e.g. model=fasttext) cannot be
updated by Adam/AdamW/SGD-with-momentum, and a dense update of a 20M-row table per step is
what makes such models slow. Their parameters get a sparse optimizer of the same family:
RowSparseAdam (torch.optim.SparseAdam's update; same lr, betas, eps; no weight decay) for
Adam/AdamW, plain SGD (same lr) for SGD. Every other parameter gets the configured optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class RowSparseAdam(torch.optim.SparseAdam):
    """torch.optim.SparseAdam's update (the moments and weights of the rows a step's gradient
    touches; one step count per parameter), computed on the gathered rows.

    SparseAdam does it with sparse-tensor arithmetic (a coalesce, two `sparse_mask`es and
    three sparse additions into the dense tables), which took three quarters of a fastText
    step. Here the gradient's row ids are made unique once, the rows are gathered with
    `index_select`, updated densely with the same operations in the same order, and written
    back with `index_copy_` / `index_add_`. The state keys are SparseAdam's, so checkpoints
    of either load into the other.
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad
        if not grad.is_sparse:
            raise RuntimeError("RowSparseAdam needs sparse gradients; use Adam for dense ones")
        rows, values = _summed_rows(grad)
        if rows.numel() == 0:
            return
        if group.get("maximize", False):
            values = -values
        state = self.state[p]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        state["step"] += 1
        beta1, beta2 = group["betas"]
        m_old = state["exp_avg"].index_select(0, rows)
        v_old = state["exp_avg_sq"].index_select(0, rows)
        m = values.sub(m_old).mul_(1 - beta1).add_(m_old)
        v = values.pow(2).sub_(v_old).mul_(1 - beta2).add_(v_old)
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
        step = state["step"]
        step_size = float(group["lr"]) * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        p.index_add_(0, rows, m.div_(v.sqrt_().add_(group["eps"])).mul_(-step_size))


def _summed_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique row ids, their summed gradient rows) of a sparse gradient of a 2-D table."""
    rows, values = grad._indices()[0], grad._values()
    if grad.is_coalesced():
        return rows, values
    unique, inverse = torch.unique(rows, return_inverse=True)
    summed = values.new_zeros((unique.numel(),) + tuple(values.shape[1:]))
    return unique, summed.index_add_(0, inverse, values)


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
            optimizers.append(RowSparseAdam(
                sparse, lr=optimizer_cfg.lr, betas=tuple(optimizer_cfg.betas), eps=optimizer_cfg.eps))
        else:
            optimizers.append(torch.optim.SGD(sparse, lr=optimizer_cfg.lr))
    return optimizers
