"""An audio transformer for fixed-length clips (keyword spotting), built like the ViT:
the log-mel spectrogram [mel bands, frames] (bigmodel_cli.data.audio_features, the first
module) is cut into patch_mels x patch_frames patches, each projected to d_model (a strided
convolution), a learned class token is prepended, learned position embeddings are added,
and the shared pre-norm transformer stack (bigmodel_cli.models.transformer) encodes the
sequence; the class token's final state is the clip's features. Frames that do not fill a
whole patch at the end of the clip are dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from bigmodel_cli.data.audio_features import AudioFeatures
from bigmodel_cli.models.transformer import TransformerStack


class AudioTransformerEncoder(nn.Module):
    inputs = ("audio",)

    def __init__(self, features: dict, clip_samples: int | None, patch_mels: int = 8,
                 patch_frames: int = 4, d_model: int = 64, n_layers: int = 4, n_heads: int = 4,
                 d_ff: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        if clip_samples is None:
            raise ValueError("the audio transformer classifies fixed-length clips "
                             "(data.clip_seconds); for transcripts use model=speech_ctc")
        self.features = AudioFeatures(**features)
        if self.features.n_mels % patch_mels:
            raise ValueError(f"model.patch_mels={patch_mels} must divide the mel bands "
                             f"({self.features.n_mels}, data.spectrogram.n_mels)")
        frames = int(self.features.frames(clip_samples))
        if frames < patch_frames:
            raise ValueError(f"model.patch_frames={patch_frames} is longer than a clip "
                             f"({frames} frames)")
        self.patch = nn.Conv2d(1, d_model, (patch_mels, patch_frames), (patch_mels, patch_frames))
        num_patches = (self.features.n_mels // patch_mels) * (frames // patch_frames)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_emb = nn.Parameter(torch.randn(1, num_patches + 1, d_model) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.stack = TransformerStack(n_layers, d_model, n_heads, d_ff, dropout)
        self.output_dim = d_model

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.features(audio)[0].unsqueeze(1)                   # [B, 1, M, F]
        x = self.patch(x).flatten(2).transpose(1, 2)               # [B, N, D]
        if x.shape[1] + 1 != self.pos_emb.shape[1]:
            raise ValueError(f"this model takes clips of {self.pos_emb.shape[1] - 1} patches, "
                             f"got {x.shape[1]}")
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.stack(self.dropout(x + self.pos_emb))
        return x[:, 0]
