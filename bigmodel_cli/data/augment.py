"""Image preprocessing inside the model: uint8 pixels -> normalised floats, with random
augmentation in training only.

It runs on batches, on the device the model is on, as the model's first module, so the
same code serves training, evaluate and predict: in `model.eval()` it only scales and
normalises. Augmentation (Kornia, per image random parameters, drawn from torch's RNG so
that a seeded run is reproducible and a resumed one continues the same stream):
  crop_padding  pad by this many pixels (zeros) and crop back to the original size at a
                random place (0: off)
  hflip         flip left-right with probability 0.5 (off for digits and text-like images)
  erasing       probability of erasing a random rectangle (2-33% of the image, set to the
                mean colour, i.e. 0 after normalisation; 0: off)
Mean and std are per channel on the [0, 1] scale, computed on train; they are constructor
arguments (recorded with the checkpoint), not weights, so loading another run's weights
keeps this run's normalisation.
"""

from __future__ import annotations

import torch
from torch import nn


class ImagePreprocess(nn.Module):
    def __init__(self, mean: list[float], std: list[float], crop_padding: int = 0,
                 hflip: bool = False, erasing: float = 0.0) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel: {mean}, {std}")
        if crop_padding < 0 or not 0.0 <= erasing <= 1.0:
            raise ValueError(f"crop_padding must be >= 0 and erasing in [0, 1] "
                             f"(got {crop_padding}, {erasing})")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.crop_padding, self.hflip, self.erasing = int(crop_padding), bool(hflip), float(erasing)
        geometric: list[nn.Module] = []
        self.erase: nn.Module | None = None
        if self.crop_padding or self.hflip or self.erasing:
            import kornia.augmentation as K

            if self.crop_padding:
                geometric.append(_PaddedRandomCrop(self.crop_padding))
            if self.hflip:
                geometric.append(K.RandomHorizontalFlip(p=0.5))
            if self.erasing:
                self.erase = K.RandomErasing(p=self.erasing, scale=(0.02, 0.33),
                                             ratio=(0.3, 3.3), value=0.0)
        self.geometric = nn.Sequential(*geometric)

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
        if self.training and len(self.geometric):
            x = self.geometric(x)
        x = (x - self.mean) / self.std
        if self.training and self.erase is not None:
            x = self.erase(x)
        return x

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, crop_padding={self.crop_padding}, "
                f"hflip={self.hflip}, erasing={self.erasing}")


class _PaddedRandomCrop(nn.Module):
    """Zero-pad by `padding` and crop back to the input size at a random place per image."""

    def __init__(self, padding: int) -> None:
        super().__init__()
        import kornia.augmentation as K

        self.padding = padding
        self._crops: dict[tuple[int, int], nn.Module] = {}
        self._make = lambda size: K.RandomCrop(size, padding=padding, pad_if_needed=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if size not in self._crops:  # kornia's RandomCrop is built for one output size
            self._crops[size] = self._make(size)
        return self._crops[size](x)
