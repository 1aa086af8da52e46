"""SASRec (Kang & McAuley, 2018): a self-attentive sequential recommender from the shared
transformer block (bigmodel_cli.models.transformer), causal, with the item embeddings tied
to the output: the score of item j after position t is <h_t, e_j>.

Sequences are right-padded with item 0, so with causal attention a real position only
attends to real positions before it; no padding mask is needed and padded positions are
ignored by the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from bigmodel_cli.models.transformer import TransformerStack, init_weights


class SASRec(nn.Module):
    inputs = ("history",)
    tied_embeddings = ("item",)  # read by `logits` too: FSDP keeps it with the root

    def __init__(self, num_items: int, max_len: int = 200, d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 2, d_ff: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        self.item = nn.Embedding(num_items + 1, d_model, padding_idx=0)
        self.position = nn.Embedding(max_len, d_model)
        self.stack = TransformerStack(n_layers, d_model, n_heads, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)
        self.max_len = max_len
        init_weights(self.item)
        init_weights(self.position)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """[B, T] item indices (0: padding) -> [B, T, d_model] hidden states."""
        t = history.shape[1]
        pos = torch.arange(t, device=history.device)
        x = self.item(history) * self.item.embedding_dim ** 0.5 + self.position(pos)
        return self.stack(self.dropout(x), causal=True)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., d] -> scores of every item [..., num_items + 1] (tied weights)."""
        return hidden @ self.item.weight.T
