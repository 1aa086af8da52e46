"""The transformer block every transformer model here is built from (BERT, GPT, ViT).

Pre-norm blocks (LayerNorm before attention and before the MLP, residual around each),
attention through `torch.nn.functional.scaled_dot_product_attention`, which picks a fused
kernel when one fits. `mask` is a bool tensor [B, T], True at real tokens; `causal=True`
lets position t attend only to positions <= t.

`activation_checkpointing=True` keeps only each block's input during the forward pass and
recomputes the block in backward (non-reentrant `torch.utils.checkpoint`, RNG state
preserved, so dropout draws the same masks): activation memory drops from every
intermediate of every block to one tensor per block, for about one more forward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, cache: dict | None = None) -> torch.Tensor:
        b, t, d = x.shape
        head_dim = d // self.n_heads
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, head_dim).permute(2, 0, 3, 1, 4)
        attn_mask = None
        if cache is not None:  # generation: keys/values of earlier positions are reused
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
            past = k.shape[2] - t
            if causal and past:  # new queries see every cached key and their own past
                if t > 1:  # one new query sees every key: no mask at all
                    attn_mask = torch.ones(t, k.shape[2], dtype=torch.bool,
                                           device=x.device).tril(past)
                causal = False
        if mask is not None:  # keys that are padding get no attention
            attn_mask = mask[:, None, None, :]
            if causal:
                attn_mask = attn_mask & torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
                causal = False
        if attn_mask is not None and torch.onnx.is_in_onnx_export():
            attn_mask = _additive(attn_mask, q.dtype)
        # The default scale, given explicitly: an ONNX graph then holds a constant instead of
        # a shape -> sqrt computation in every block (one kernel call each at inference).
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=causal, scale=1.0 / math.sqrt(head_dim),
            dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool attention mask as 0 / -inf to add to the scores. The ONNX exporter turns a bool
    mask into this too, but follows every softmax with an IsNaN/Where guard against fully
    masked rows, which never occur here: every row keeps its first key (lengths >= 1)."""
    return torch.where(mask, 0.0, float("-inf")).to(dtype)


class TransformerBlock(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, cache: dict | None = None) -> torch.Tensor:
        x = x + self._dropout(self.attn(self.norm1(x), mask, causal, cache))
        return x + self._dropout(self.mlp(self.norm2(x)))

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        # Skipped at inference, where it is the identity: the module call alone costs about
        # as much as a one-row linear, which matters in a KV-cached generation step.
        return self.dropout(x) if self.training else x


class TransformerStack(nn.Module):
    """`n_layers` blocks and a final LayerNorm (pre-norm blocks leave the output unnormalised)."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int,
                 dropout: float = 0.0, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, d_ff, dropout)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.apply(init_weights)
        # GPT-2's scaling: each residual branch's output projection shrinks with depth.
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * n_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, caches: list[dict] | None = None) -> torch.Tensor:
        """`caches`: one dict per block, filled with its keys/values (a KV cache)."""
        recompute = self.activation_checkpointing and caches is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:
                x = checkpoint(block, x, mask, causal, use_reentrant=False)
            else:
                x = block(x, mask, causal, None if caches is None else caches[i])
        return self.norm(x)


def init_weights(module: nn.Module) -> None:
    """BERT/GPT initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
