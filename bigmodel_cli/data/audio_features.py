"""Audio features inside the model: waveforms -> normalised log-mel spectrograms, with
random augmentation in training only.

It runs on batches, on the device the model is on, as the audio models' first module, so
the same code serves training, evaluate and predict (in `model.eval()` it only computes and
normalises the features). The spectrogram is `torch.stft` (Hann window, centred frames);
the mel filterbank is librosa's (`librosa.filters.mel`, Slaney scale and normalisation).
Mean and std are per mel band, computed on train (`log_mel_stats`); like the image
statistics they are constructor arguments recorded with the checkpoint, not weights.

Augmentation, drawn from torch's RNG (a seeded run is reproducible, a resumed one continues
the same stream):
  time_shift_ms     shift each clip by up to this much (either way, zero-filled; a clip
                    of its own length, as in CTC batches, is only delayed, never cut)
  time_masks        SpecAugment time masks per clip, each up to time_mask_frames wide
  freq_masks        SpecAugment frequency masks per clip, each up to freq_mask_bins wide
Masked values are set to 0, the train mean after normalisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float,
                   f_max: float | None) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] triangular mel filters (librosa)."""
    from librosa.filters import mel

    return torch.from_numpy(mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min,
                                fmax=f_max)).float()


class AudioFeatures(nn.Module):
    def __init__(self, sample_rate: int, n_mels: int = 40, win_ms: float = 25.0,
                 hop_ms: float = 10.0, f_min: float = 20.0, f_max: float | None = None,
                 mean: list[float] | None = None, std: list[float] | None = None,
                 time_shift_ms: float = 0.0, time_masks: int = 0, time_mask_frames: int = 0,
                 freq_masks: int = 0, freq_mask_bins: int = 0) -> None:
        super().__init__()
        self.sample_rate, self.n_mels = int(sample_rate), int(n_mels)
        self.win_length = round(sample_rate * win_ms / 1000)
        self.hop_length = round(sample_rate * hop_ms / 1000)
        if self.win_length < 2 or self.hop_length < 1:
            raise ValueError(f"data.features: win_ms={win_ms} and hop_ms={hop_ms} are too short "
                             f"at {sample_rate} Hz")
        self.n_fft = 2 ** math.ceil(math.log2(self.win_length))
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        self.register_buffer("mel", mel_filterbank(sample_rate, self.n_fft, n_mels, f_min, f_max),
                             persistent=False)
        mean = [0.0] * n_mels if mean is None else mean
        std = [1.0] * n_mels if std is None else std
        if len(mean) != n_mels or len(std) != n_mels:
            raise ValueError(f"mean and std need one value per mel band ({n_mels})")
        self.register_buffer("mean", torch.tensor(mean).float().view(1, -1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).float().view(1, -1, 1), persistent=False)
        self.time_shift = round(sample_rate * time_shift_ms / 1000)
        self.time_masks, self.time_mask_frames = int(time_masks), int(time_mask_frames)
        self.freq_masks, self.freq_mask_bins = int(freq_masks), int(freq_mask_bins)

    def frames(self, samples: torch.Tensor | int):
        """The number of feature frames of a clip of `samples` samples (centred STFT)."""
        return samples // self.hop_length + 1

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, T] float waveforms -> [B, n_mels, frames] log mel energies (not normalised)."""
        spec = torch.stft(audio.float(), self.n_fft, self.hop_length, self.win_length,
                          self.window, center=True, return_complex=True)
        power = spec.real.square() + spec.imag.square()
        return torch.log(torch.matmul(self.mel, power) + 1e-6)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None):
        """-> (features [B, n_mels, frames], frame lengths [B] or None)."""
        if self.training and self.time_shift:
            audio, lengths = self._shift(audio, lengths)
        x = (self.log_mel(audio) - self.mean) / self.std
        frame_lengths = None
        if lengths is not None:
            frame_lengths = self.frames(lengths).clamp(max=x.shape[-1])
            valid = torch.arange(x.shape[-1], device=x.device)[None] < frame_lengths[:, None]
            x = x * valid[:, None, :]
        if self.training:
            x = _masks(x, self.freq_masks, self.freq_mask_bins, 1, None)
            x = _masks(x, self.time_masks, self.time_mask_frames, 2, frame_lengths)
        return x, frame_lengths

    def _shift(self, audio: torch.Tensor, lengths: torch.Tensor | None):
        b, t = audio.shape
        s = self.time_shift
        low = 0 if lengths is not None else -s
        offset = torch.randint(low, s + 1, (b, 1), device=audio.device)
        source = torch.arange(t, device=audio.device)[None] - offset
        inside = (source >= 0) & (source < t)
        shifted = audio.gather(1, source.clamp(0, t - 1)) * inside
        if lengths is not None:
            lengths = (lengths + offset[:, 0]).clamp(max=t)
        return shifted, lengths

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, n_mels={self.n_mels}, n_fft={self.n_fft}, "
                f"hop={self.hop_length}, time_shift={self.time_shift}, "
                f"time_masks={self.time_masks}x{self.time_mask_frames}, "
                f"freq_masks={self.freq_masks}x{self.freq_mask_bins}")


def _masks(x: torch.Tensor, count: int, width: int, dim: int,
           lengths: torch.Tensor | None) -> torch.Tensor:
    """`count` random spans of up to `width` positions along `dim` (1: mel bands, 2: frames),
    drawn per clip (within its own length when given), set to 0."""
    if not count or not width:
        return x
    b, size = x.shape[0], x.shape[dim]
    limit = torch.full((b,), size, device=x.device) if lengths is None else lengths
    positions = torch.arange(size, device=x.device)[None]
    for _ in range(count):
        w = torch.randint(0, width + 1, (b,), device=x.device)
        start = (torch.rand(b, device=x.device) * (limit - w + 1).clamp(min=1)).long()
        span = (positions >= start[:, None]) & (positions < (start + w)[:, None])
        x = x.masked_fill(span[:, None, :] if dim == 2 else span[:, :, None], 0.0)
    return x


@torch.no_grad()
def log_mel_stats(features: AudioFeatures, waves: list, batch: int = 256) -> tuple[list[float], list[float]]:
    """Per mel band mean and standard deviation of the log mel energies of `waves` (train),
    over every frame of every clip (batched; the frames of the padding are left out)."""
    total = torch.zeros(features.n_mels, dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    features = features.eval()
    for i in range(0, len(waves), batch):
        chunk = [torch.as_tensor(w) for w in waves[i:i + batch]]
        audio = nn.utils.rnn.pad_sequence(chunk, batch_first=True)
        x = features.log_mel(audio).double()                       # [B, M, F]
        frames = features.frames(torch.tensor([len(w) for w in chunk]))
        valid = (torch.arange(x.shape[-1])[None] < frames[:, None])[:, None, :]
        total += (x * valid).sum((0, 2))
        squares += (x.square() * valid).sum((0, 2))
        count += int(frames.sum())
    mean = total / max(count, 1)
    std = (squares / max(count, 1) - mean.square()).clamp(min=1e-8).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]
