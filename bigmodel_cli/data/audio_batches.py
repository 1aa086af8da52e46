"""Batches of utterances of their own lengths (task=ctc), held flat in memory: each batch
is padded to its longest utterance, with "audio_lengths", the character "targets" (padded
with 0, the blank) and "target_lengths". With `bucket_by_length`, utterances of similar
lengths are batched together, as texts are (TextBatches.batch_order)."""

from __future__ import annotations

import numpy as np
import torch

from bigmodel_cli.data.batching import TextBatches


class UtteranceBatches(TextBatches):
    def batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        data = self.data
        idx = torch.from_numpy(np.ascontiguousarray(index))
        starts, lengths = data.offsets[idx], data.lengths[idx]
        t_starts = data.target_offsets[idx]
        t_lengths = data.target_offsets[idx + 1] - t_starts
        audio = torch.zeros(len(idx), max(1, int(lengths.max()) if len(idx) else 1))
        targets = torch.zeros(len(idx), max(1, int(t_lengths.max()) if len(idx) else 1),
                              dtype=torch.int64)
        for row, (s, n, ts, tn) in enumerate(zip(starts.tolist(), lengths.tolist(),
                                                 t_starts.tolist(), t_lengths.tolist())):
            audio[row, :n] = data.audio[s:s + n]
            targets[row, :tn] = data.targets[ts:ts + tn]
        return {"index": idx, "audio": audio, "audio_lengths": lengths, "targets": targets,
                "target_lengths": t_lengths, "group": data.groups[idx]}
