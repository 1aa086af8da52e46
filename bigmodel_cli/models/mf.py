"""Biased matrix factorisation: rating(u, i) = b_u + b_i + <p_u, q_i> (the task adds the
global mean), trained with an L2 penalty (`reg`) on the rows each batch uses. Index 0 of users and items is "unknown" (not seen in train): its embedding
and bias are padding rows, zero and never trained, so an unknown user gets the item's bias
(and the other way round)."""

from __future__ import annotations

import torch
from torch import nn


class BiasedMF(nn.Module):
    inputs = ("users", "items")

    def __init__(self, num_users: int, num_items: int, dim: int = 64, init_std: float = 0.01,
                 dropout: float = 0.0, reg: float = 0.0) -> None:
        super().__init__()
        self.user = nn.Embedding(num_users + 1, dim, padding_idx=0)
        self.item = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.user_bias = nn.Embedding(num_users + 1, 1, padding_idx=0)
        self.item_bias = nn.Embedding(num_items + 1, 1, padding_idx=0)
        for table in (self.user, self.item):
            nn.init.normal_(table.weight, std=init_std)
        for table in (self.user_bias, self.item_bias):
            nn.init.zeros_(table.weight)
        for table in (self.user, self.item):
            with torch.no_grad():
                table.weight[0].zero_()
        self.dropout = nn.Dropout(dropout)
        self.reg = reg

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """reg * the squared norms of the rows this batch uses (per rating, as in SGD
        matrix factorisation): frequent users and items are held back as often as they occur."""
        rows = (self.user(users).pow(2).sum(-1) + self.item(items).pow(2).sum(-1)
                + self.user_bias(users).squeeze(-1) ** 2 + self.item_bias(items).squeeze(-1) ** 2)
        return self.reg * rows.mean()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B] users, [B] items -> [B] scores (without the global mean)."""
        dot = (self.dropout(self.user(users)) * self.item(items)).sum(-1)
        return dot + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """[B] users -> [B, num_items + 1]: every item's score (column 0: unknown)."""
        return (self.user(users) @ self.item.weight.T + self.user_bias(users)
                + self.item_bias.weight.T)
