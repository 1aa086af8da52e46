"""A fastText-style baseline: mean of unigram and hashed n-gram embeddings."""

from __future__ import annotations

import torch
from torch import nn

# Multipliers for hashing n-grams of token ids into buckets (large odd constants, as in
# fastText's hashing of character n-grams).
_HASH_PRIMES = (1, 116049371, 2654435761, 805459861)


class FastTextEncoder(nn.Module):
    """EmbeddingBag over token unigrams plus n-grams (n = 2..ngrams) hashed into buckets.

    N-gram ids are computed on the fly from the padded token ids, so no n-gram vocabulary
    is stored. `forward` returns the mean embedding of each text. With `sparse`, a step
    touches only the rows a batch used (as fastText does), which is what makes training
    this 20M-parameter table fast; the engine gives such parameters a sparse optimizer.
    """

    inputs = ("input_ids", "lengths")

    def __init__(
        self,
        vocab_size: int,
        padding_idx: int,
        embedding_dim: int = 100,
        ngram_buckets: int = 200000,
        ngrams: int = 2,
        sparse: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= ngrams <= len(_HASH_PRIMES):
            raise ValueError(f"ngrams must be between 1 and {len(_HASH_PRIMES)}, got {ngrams}")
        if ngrams > 1 and ngram_buckets < 1:
            raise ValueError("ngram_buckets must be positive when ngrams > 1")
        self.vocab_size = vocab_size
        self.padding_idx = padding_idx
        self.ngrams = ngrams
        self.ngram_buckets = ngram_buckets if ngrams > 1 else 0
        self.embedding = nn.EmbeddingBag(
            vocab_size + self.ngram_buckets, embedding_dim, mode="mean", padding_idx=padding_idx,
            sparse=sparse,
        )
        # fastText's initialisation: small uniform vectors. torch's default N(0, 1) would
        # leave every rarely seen n-gram as large noise in the mean.
        nn.init.uniform_(self.embedding.weight, -1.0 / embedding_dim, 1.0 / embedding_dim)
        with torch.no_grad():
            self.embedding.weight[padding_idx].zero_()
        self.output_dim = embedding_dim

    def ngram_ids(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Unigram ids followed by hashed n-gram ids; positions past the text are padding."""
        seq_len = input_ids.shape[1]
        positions = torch.arange(seq_len, device=input_ids.device)[None, :]
        parts = [input_ids]
        for n in range(2, self.ngrams + 1):
            if seq_len < n:
                break
            hashed = torch.zeros_like(input_ids[:, : seq_len - n + 1])
            for offset in range(n):
                hashed = hashed + input_ids[:, offset : seq_len - n + 1 + offset] * _HASH_PRIMES[offset]
            hashed = self.vocab_size + hashed.remainder(self.ngram_buckets)
            valid = positions[:, : seq_len - n + 1] + n <= lengths[:, None]
            parts.append(torch.where(valid, hashed, torch.full_like(hashed, self.padding_idx)))
        return torch.cat(parts, dim=1)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        ids = self.ngram_ids(input_ids, lengths)
        if torch.onnx.is_in_onnx_export():
            return self._bag_mean(ids)
        return self.embedding(ids)

    def _bag_mean(self, ids: torch.Tensor) -> torch.Tensor:
        """EmbeddingBag's mean as a gather and a masked mean: ONNX has no EmbeddingBag, and
        the exporters write it as a Loop over the texts, an order of magnitude slower in
        onnxruntime. The padding row is zero (never trained), so only the count needs the mask."""
        vectors = nn.functional.embedding(ids, self.embedding.weight)
        counts = (ids != self.padding_idx).sum(1, keepdim=True).clamp(min=1)
        return vectors.sum(1) / counts.to(vectors.dtype)
