"""A multi-layer perceptron for tabular features (already standardised and one-hot encoded
by bigmodel_cli.data.tabular): Linear -> ReLU -> Dropout per hidden size."""

from __future__ import annotations

import torch
from torch import nn


class MLPEncoder(nn.Module):
    inputs = ("features",)

    def __init__(self, num_features: int, hidden_sizes: list[int] = (128, 64),
                 dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = num_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(size, hidden), nn.ReLU(), nn.Dropout(dropout)]
            size = hidden
        self.layers = nn.Sequential(*layers)
        self.output_dim = size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
