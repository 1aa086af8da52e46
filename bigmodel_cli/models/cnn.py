"""A small ResNet for images: basic blocks (two 3x3 convolutions with batch norm and a
residual connection), stages of growing width that halve the resolution, global average
pooling. It takes uint8 pixels: normalisation and (in training) augmentation happen in its
first module (bigmodel_cli.data.augment). The convolutions work at any image size; only the
task's head depends on the number of classes, so weights carry over between datasets with
the same number of channels.

With `features` (data.kind=audio) it takes waveforms instead: its first module computes
normalised log-mel spectrograms (bigmodel_cli.data.audio_features), which the convolutions
see as images one pixel high with one channel per mel band, [B, mel bands, 1, frames]: the
3x3 convolutions then slide over time only (a temporal-convolution ResNet). On
spoken_words an epoch took about a tenth of the time of a one-channel [1, bands, frames]
image, and validation accuracy was 0.71 after 2 epochs against 0.22.
"""

from __future__ import annotations

import torch
from torch import nn

from bigmodel_cli.data.audio_features import AudioFeatures
from bigmodel_cli.data.augment import ImagePreprocess


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """stem (3x3 conv, widths[0]) -> one stage per width (`blocks_per_stage` basic blocks;
    every stage after the first starts with stride 2) -> global average pooling."""

    inputs = ("pixels",)

    def __init__(self, in_channels: int = 1, mean: list[float] | None = None,
                 std: list[float] | None = None, augment: dict | None = None,
                 image_size: int | None = None, widths: list[int] = (16, 32, 64),
                 blocks_per_stage: int = 1, features: dict | None = None,
                 clip_samples: int | None = None) -> None:
        super().__init__()
        if not widths or blocks_per_stage < 1:
            raise ValueError("model.widths needs at least one stage and model.blocks_per_stage >= 1")
        self.image_size = image_size  # recorded; the network itself takes any size
        if features is not None:  # waveforms -> spectrograms, one channel per mel band
            self.preprocess = SpectrogramImage(AudioFeatures(**features))
            self.inputs = ("audio",)
            in_channels = self.preprocess.features.n_mels
        else:
            self.preprocess = ImagePreprocess(mean, std, **(augment or {}))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, channels = [], widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, stride=2 if i > 0 and j == 0 else 1))
                channels = width
        self.stages = nn.Sequential(*blocks)
        self.output_dim = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in blocks:  # each residual branch starts as the identity (zero-init last BN)
            nn.init.zeros_(block.bn2.weight)
        # Channels-last weights and activations: oneDNN's CPU convolutions run ~1.6x faster.
        self.to(memory_format=torch.channels_last)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(pixels).contiguous(memory_format=torch.channels_last)
        return self.stages(self.stem(x)).mean(dim=(2, 3))


class SpectrogramImage(nn.Module):
    """Waveforms [B, T] -> log-mel spectrograms as images [B, mel bands, 1, frames]."""

    def __init__(self, features: AudioFeatures) -> None:
        super().__init__()
        self.features = features

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.features(audio)[0].unsqueeze(2)
