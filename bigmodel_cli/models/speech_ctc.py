"""A speech encoder for CTC: log-mel features (bigmodel_cli.data.audio_features, the first
module), a convolutional front end that subsamples time, then a bidirectional LSTM
(`encoder: lstm`) or the shared transformer stack (`encoder: transformer`, with learned
position embeddings and padding masked out). It returns one vector per (subsampled) frame
and each utterance's number of frames; task=ctc puts the per-frame character head on top.

The front end: `conv_layers` 3x3 convolutions (batch norm, ReLU), each halving the mel
bands, the first `log2(time_stride)` of them also halving time; then a linear projection
of channels x bands to the encoder's width. Frame lengths follow the strides exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bigmodel_cli.data.audio_features import AudioFeatures
from bigmodel_cli.models.transformer import TransformerStack


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
            self.rnn = nn.LSTM(hidden_size, hidden_size, num_layers, batch_first=True,
                               bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
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
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                                       enforce_sorted=False)
            out, _ = self.rnn(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        else:
            if x.shape[1] > self.pos_emb.shape[1]:
                raise ValueError(f"an utterance of {x.shape[1]} frames is longer than "
                                 f"model.max_frames={self.pos_emb.shape[1]}")
            mask = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
            x = self.stack(x + self.pos_emb[:, :x.shape[1]], mask)
        return self.dropout(x), lengths
