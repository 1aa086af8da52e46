"""BERT- and GPT-style text transformers: one class, `causal` tells them apart.

Token + learned position embeddings -> the shared pre-norm TransformerStack (padding masked
out of attention; with `causal`, each position sees only itself and earlier positions).
`token_states` gives one vector per token (what language-model heads read); `forward`
pools them into one vector per text (what classification heads read): the mean of the
real tokens, or the last real token (the one that has seen the whole text under a causal
mask), or the first.
"""

from __future__ import annotations

import torch
from torch import nn

from bigmodel_cli.models.transformer import TransformerStack, init_weights

POOLINGS = ("mean", "last", "first", "max")


class TextTransformer(nn.Module):
    inputs = ("input_ids", "lengths")

    def __init__(self, vocab_size: int, padding_idx: int = 0, n_layers: int = 4,
                 d_model: int = 256, n_heads: int = 4, d_ff: int = 1024, max_len: int = 128,
                 dropout: float = 0.1, causal: bool = False, pooling: str = "mean",
                 activation_checkpointing: bool = False) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.vocab_size, self.max_len, self.causal, self.pooling = vocab_size, max_len, causal, pooling
        self.output_dim = d_model
        self.tok_emb = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)
        self.pos_emb = nn.Embedding(max_len, d_model)
        self.emb_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        init_weights(self.tok_emb)
        init_weights(self.pos_emb)
        self.stack = TransformerStack(n_layers, d_model, n_heads, d_ff, dropout,
                                      activation_checkpointing)

    def token_states(self, input_ids: torch.Tensor, lengths: torch.Tensor,
                     caches: list[dict] | None = None, offset: int = 0) -> torch.Tensor:
        """With `caches` (generation, one unpadded row): the positions from `offset` on,
        attending to the keys/values cached for the positions before."""
        t = offset + input_ids.shape[1]
        if t > self.max_len:
            raise ValueError(f"a sequence of {t} tokens is longer than the model's max_len "
                             f"{self.max_len}: lower data.max_length or raise model.max_len")
        positions = torch.arange(offset, t, device=input_ids.device)
        x = self.dropout(self.emb_norm(self.tok_emb(input_ids) + self.pos_emb(positions)))
        # A causal mask alone is enough when every row is full (packed blocks, a generation
        # step): the fused kernel then runs without an explicit mask.
        full = caches is not None or (not torch.onnx.is_in_onnx_export()
                                      and bool((lengths == input_ids.shape[1]).all()))
        # An empty text (length 0) still attends to its first position: never a fully masked row.
        mask = None if full else positions[None, :] - offset < lengths.clamp(min=1)[:, None]
        return self.stack(x, mask, self.causal, caches)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        states = self.token_states(input_ids, lengths)
        if self.pooling == "first":
            return states[:, 0]
        if self.pooling == "last":
            return states[torch.arange(states.shape[0]), (lengths - 1).clamp(min=0)]
        mask = (torch.arange(states.shape[1], device=states.device)[None, :]
                < lengths[:, None]).unsqueeze(-1)
        if self.pooling == "max":
            return states.masked_fill(~mask, float("-inf")).max(1).values
        return (states * mask).sum(1) / lengths.clamp(min=1)[:, None].to(states.dtype)
