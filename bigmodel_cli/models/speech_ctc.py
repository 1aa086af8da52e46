"""A speech encoder for CTC: log-mel features (bigmodel_cli.data.audio_features, the first
module), a convolutional front end that subsamples time, then a bidirectional LSTM
(`encoder: lstm`) or the shared transformer stack (`encoder: transformer`, with learned
position embeddings and padding masked out). It returns one vector per (subsampled) frame
and each utterance's number of frames; task=ctc puts the per-frame character head on top.

The front end: `conv_layers` 3x3 convolutions (batch norm, ReLU), each halving the mel
bands, the first `log2(time_stride)` of them also halving time; then a linear projection
of channels x bands to the encoder's width. Frame lengths follow the strides exactly.

The BiLSTM runs each direction as its own unidirectional nn.LSTM over the padded batch, the
backward one on every utterance reversed within its own length, so padding never reaches
a real frame (exact, as packing would be). Packed sequences run PyTorch's per-step CPU
kernel, about 10x slower here than the fused one a plain padded batch gets; the fused
kernel is prepared once per input shape, so the time axis is padded to a multiple of
PAD_FRAMES frames to keep the number of shapes small.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from bigmodel_cli.data.audio_features import AudioFeatures
from bigmodel_cli.models.transformer import TransformerStack

PAD_FRAMES = 16


class BiLSTM(nn.Module):
    """A bidirectional LSTM over right-padded batches [B, T, D] with `lengths` [B]."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        sizes = [input_size] + [2 * hidden_size] * (num_layers - 1)
        self.forward_layers = nn.ModuleList(nn.LSTM(n, hidden_size, batch_first=True) for n in sizes)
        self.backward_layers = nn.ModuleList(nn.LSTM(n, hidden_size, batch_first=True) for n in sizes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        t = torch.arange(x.shape[1], device=x.device)[None]
        last = lengths[:, None] - 1
        # position t of the reversed utterance: its frame length-1-t; padding stays in place
        reverse = torch.where(t <= last, last - t, t)[:, :, None]
        for i, (fw, bw) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if i:
                x = self.dropout(x)
            ahead, _ = fw(x)
            back, _ = bw(x.gather(1, reverse.expand(-1, -1, x.shape[2])))
            x = torch.cat([ahead, back.gather(1, reverse.expand(-1, -1, back.shape[2]))], dim=2)
        return x


class SpeechCTCEncoder(nn.Module):
    inputs = ("audio", "audio_lengths")
    frame_outputs = True    # [B, T, D] per frame and frame lengths, not one vector per input

    def __init__(self, features: dict, clip_samples: int | None = None, channels: int = 16,
                 conv_layers: int = 2, time_stride: int = 2, encoder: str = "lstm",
                 hidden_size: int = 128, num_layers: int = 2, n_heads: int = 4,
                 d_ff: int = 512, max_frames: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        halvings = int(math.log2(time_stride))
        if 2 ** halvings != time_stride or halvings > conv_layers:
            raise ValueError(f"model.time_stride={time_stride} must be a power of 2, at most "
                             f"2 ** model.conv_layers ({2 ** conv_layers})")
        if encoder not in ("lstm", "transformer"):
            raise ValueError(f"model.encoder={encoder!r}: choose lstm or transformer")
        self.features = AudioFeatures(**features)
        self.clip_samples = clip_samples  # recorded; utterances keep their own lengths
        self.time_strides = [2 if i < halvings else 1 for i in range(conv_layers)]
        layers, c_in, bands = [], 1, self.features.n_mels
        for stride in self.time_strides:
            layers += [nn.Conv2d(c_in, channels, 3, (2, stride), 1, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
            c_in, bands = channels, (bands - 1) // 2 + 1
        self.frontend = nn.Sequential(*layers)
        self.kind = encoder
        self.proj = nn.Linear(channels * bands, hidden_size)
        self.dropout = nn.Dropout(dropout)
        if encoder == "lstm":
            self.rnn = BiLSTM(hidden_size, hidden_size, num_layers, dropout)
            self.output_dim = 2 * hidden_size
        else:
            self.pos_emb = nn.Parameter(torch.randn(1, max_frames, hidden_size) * 0.02)
            self.stack = TransformerStack(num_layers, hidden_size, n_heads, d_ff, dropout)
            self.output_dim = hidden_size

    def frame_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        for stride in self.time_strides:  # a 3-wide kernel with padding 1
            frames = (frames - 1) // stride + 1
        return frames

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor):
        """-> (frames [B, T', output_dim], frame lengths [B])."""
        x, lengths = self.features(audio, audio_lengths)          # [B, M, F], [B]
        x = self.frontend(x.unsqueeze(1))                          # [B, C, M', F']
        lengths = self.frame_lengths(lengths).clamp(min=1, max=x.shape[-1])
        x = self.dropout(self.proj(x.flatten(1, 2).transpose(1, 2)))   # [B, F', H]
        if self.kind == "lstm":
            frames = x.shape[1]
            x = F.pad(x, (0, 0, 0, -frames % PAD_FRAMES))       # a few shapes, not one per batch
            x = self.rnn(x, lengths)[:, :frames]
        else:
            if x.shape[1] > self.pos_emb.shape[1]:
                raise ValueError(f"an utterance of {x.shape[1]} frames is longer than "
                                 f"model.max_frames={self.pos_emb.shape[1]}")
            mask = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
            x = self.stack(x + self.pos_emb[:, :x.shape[1]], mask)
        return self.dropout(x), lengths
