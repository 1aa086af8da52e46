"""A Vision Transformer: the image is cut into patch_size x patch_size patches, each
projected to d_model (a strided convolution), a learned class token is prepended, learned
position embeddings are added, and the shared pre-norm transformer stack
(bigmodel_cli.models.transformer) encodes the sequence; the class token's final state is
the image's features. Pixels arrive as uint8: normalisation and augmentation happen in the
first module (bigmodel_cli.data.augment).
"""

from __future__ import annotations

import torch
from torch import nn

from bigmodel_cli.data.augment import ImagePreprocess
from bigmodel_cli.models.transformer import TransformerStack


class ViTEncoder(nn.Module):
    inputs = ("pixels",)

    def __init__(self, in_channels: int, image_size: int, mean: list[float], std: list[float],
                 augment: dict | None = None, patch_size: int = 4, d_model: int = 64,
                 n_layers: int = 4, n_heads: int = 4, d_ff: int = 128,
                 dropout: float = 0.0, activation_checkpointing: bool = False) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"model.patch_size={patch_size} must divide the image size "
                             f"{image_size} (set data.image_size or model.patch_size)")
        self.image_size, self.patch_size = image_size, patch_size
        self.preprocess = ImagePreprocess(mean, std, **(augment or {}))
        self.patch = nn.Conv2d(in_channels, d_model, patch_size, patch_size)
        num_patches = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_emb = nn.Parameter(torch.randn(1, num_patches + 1, d_model) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.stack = TransformerStack(n_layers, d_model, n_heads, d_ff, dropout,
                                      activation_checkpointing)
        self.output_dim = d_model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(pixels)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"this ViT takes {self.image_size}x{self.image_size} images, "
                             f"got {tuple(x.shape[-2:])}")
        x = self.patch(x).flatten(2).transpose(1, 2)              # [B, N, D]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.stack(self.dropout(x + self.pos_emb))
        return x[:, 0]
