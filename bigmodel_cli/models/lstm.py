"""A bidirectional multi-layer LSTM text encoder."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

POOLINGS = ("max", "mean", "last")


def reverse_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first `length` steps in place of padding: [a b c PAD] -> [c b a PAD]."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class LSTMEncoder(nn.Module):
    """Embedding -> bidirectional multi-layer LSTM -> pooling over time.

    Batches come length-bucketed, so little padding is computed. Padding never reaches a
    real position: the forward direction sees it only after a text ends, and the backward
    direction runs over each text reversed within its own length. The result does not
    depend on what else is in the batch (the same as packed sequences, without packing's
    cost on CPU). `forward` returns one feature vector per text.
    """

    inputs = ("input_ids", "lengths")

    def __init__(
        self,
        vocab_size: int,
        padding_idx: int,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 2,
        bidirectional: bool = True,
        dropout: float = 0.2,
        pooling: str = "max",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.pooling = pooling
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        directions = 2 if bidirectional else 1
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList()
        for layer in range(num_layers):
            size_in = embedding_dim if layer == 0 else hidden_size * directions
            self.forward_layers.append(nn.LSTM(size_in, hidden_size, batch_first=True))
            if bidirectional:
                self.backward_layers.append(nn.LSTM(size_in, hidden_size, batch_first=True))
        self.dropout = nn.Dropout(dropout)
        self.output_dim = hidden_size * directions

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.clamp(min=1)
        x = self.dropout(self.embedding(input_ids))
        # oneDNN has no bf16 LSTM on many CPUs: under CPU autocast the recurrence runs in fp32.
        cpu = x.device.type == "cpu"
        with torch.autocast("cpu", enabled=False) if cpu else contextlib.nullcontext():
            x = x.float() if cpu else x
            for i, forward_lstm in enumerate(self.forward_layers):
                if i > 0:
                    x = self.dropout(x)
                out, _ = forward_lstm(x)
                if self.bidirectional:
                    back, _ = self.backward_layers[i](reverse_valid(x, lengths))
                    out = torch.cat([out, reverse_valid(back, lengths)], dim=-1)
                x = out
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        if self.pooling == "max":
            features = x.masked_fill(~mask, float("-inf")).amax(dim=1)
        elif self.pooling == "mean":
            features = (x * mask).sum(1) / lengths[:, None].to(x.dtype)
        else:  # the forward state at each text's last token, the backward state at its first
            last = x.gather(1, (lengths - 1)[:, None, None].expand(-1, 1, x.shape[-1])).squeeze(1)
            if self.bidirectional:
                half = x.shape[-1] // 2
                last = torch.cat([last[:, :half], x[:, 0, half:]], dim=-1)
            features = last
        return self.dropout(features)
