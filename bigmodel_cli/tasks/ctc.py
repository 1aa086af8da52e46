"""Speech recognition with CTC: a per-frame character head on an encoder with per-frame
outputs (model=speech_ctc), the CTC loss, greedy decoding, word and character error rates.

The symbols are the run's labels.json: index 0 is the CTC blank, then the transcript
alphabet of the train split (characters, the space included). Greedy decoding takes the
most probable symbol of each frame, merges repeats and drops blanks. WER and CER are
jiwer's (corpus level: all edits over all reference words / characters), overall and per
row group (data.group_column, e.g. the synthesizer).
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

BLANK_ID = 0


class CTCModel(nn.Module):
    def __init__(self, encoder: nn.Module, num_labels: int, head_dropout: float = 0.0) -> None:
        super().__init__()
        if not getattr(encoder, "frame_outputs", False):
            raise ValueError("task=ctc needs an encoder with per-frame outputs "
                             "(model=speech_ctc)")
        self.encoder = encoder
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.output_dim, num_labels)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """{"logits": [B, T, symbols], "lengths": frames per utterance [B]}."""
        frames, lengths = self.encoder(*(batch[k] for k in self.encoder.inputs))
        return {"logits": self.head(self.dropout(frames)), "lengths": lengths}


def greedy_decode(logits: torch.Tensor, lengths: torch.Tensor, symbols: list[str]) -> list[str]:
    """Per utterance: the best symbol of each frame, repeats merged, blanks dropped."""
    best = logits.argmax(-1).cpu()
    out = []
    for row, n in zip(best, lengths.cpu().tolist()):
        ids = torch.unique_consecutive(row[:n]).tolist()
        out.append("".join(symbols[i] for i in ids if i != BLANK_ID))
    return out


def normalise(text: str) -> str:
    """Transcripts are compared as words separated by single spaces."""
    return " ".join(text.split())


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus WER and CER (jiwer) of hypotheses against non-empty references."""
    import jiwer

    pairs = [(normalise(r), normalise(h)) for r, h in zip(references, hypotheses) if r.strip()]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan")}
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def group_key(name: str) -> str:
    """A group name as part of a metric's name (`wer_flite`)."""
    return re.sub(r"\W", "_", str(name))


class CTCMetrics:
    def __init__(self, symbols: list[str], group_names: list[str] | None) -> None:
        self.symbols = symbols
        self.group_names = group_names
        self.rows: list[tuple[int, int, str, str]] = []   # (index, group, reference, hypothesis)
        self.loss_sum = 0.0
        self.count = 0

    def update(self, outputs: dict, batch: dict, loss: torch.Tensor) -> None:
        hyps = greedy_decode(outputs["logits"], outputs["lengths"], self.symbols)
        targets, lengths = batch["targets"].cpu(), batch["target_lengths"].cpu().tolist()
        refs = ["".join(self.symbols[i] for i in row[:n].tolist()) for row, n in zip(targets, lengths)]
        groups = batch["group"].cpu().tolist() if "group" in batch else [0] * len(hyps)
        self.rows += list(zip(batch["index"].cpu().tolist(), groups, refs, hyps))
        self.loss_sum += float(loss) * len(hyps)
        self.count += len(hyps)

    def compute(self) -> dict[str, float]:
        out = {"loss": self.loss_sum / max(self.count, 1),
               **error_rates([r[2] for r in self.rows], [r[3] for r in self.rows]),
               "exact_match": (sum(normalise(r[2]) == normalise(r[3]) for r in self.rows)
                               / max(len(self.rows), 1))}
        if self.group_names and len(self.group_names) > 1:
            for g, name in enumerate(self.group_names):
                rows = [r for r in self.rows if r[1] == g]
                if rows:
                    rates = error_rates([r[2] for r in rows], [r[3] for r in rows])
                    key = group_key(name)
                    out.update({f"wer_{key}": rates["wer"], f"cer_{key}": rates["cer"],
                                f"samples_{key}": len(rows)})
        out["samples"] = self.count
        return out


class CTCTask:
    name = "ctc"
    needs_labels = True
    block_overlap = 0
    truncates_inputs = False   # utterances keep their length
    generates_text = False     # one transcript per input, as a record
    default_top_k = None

    def __init__(self, head_dropout: float = 0.0, monitor: str = "wer",
                 monitor_mode: str = "min") -> None:
        self.head_dropout = head_dropout
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.symbols: list[str] = []
        self.group_names: list[str] | None = None
        self.summary_metrics = ("wer", "cer", "exact_match", "loss")

    def set_symbols(self, symbols: list[str]) -> None:
        self.symbols = list(symbols)

    def set_groups(self, names: list[str]) -> None:
        """Row groups (the data's group column): metrics are reported per group too."""
        self.group_names = list(names)
        if len(names) > 1:
            self.summary_metrics = ("wer", "cer", "exact_match", "loss",
                                    *(f"wer_{group_key(n)}" for n in names))

    def build_model(self, encoder: nn.Module, num_labels: int) -> CTCModel:
        return CTCModel(encoder, num_labels, self.head_dropout)

    def forward(self, model: nn.Module, batch: dict) -> dict:
        return model(batch)

    def loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        log_probs = F.log_softmax(outputs["logits"].float(), dim=-1).transpose(0, 1)  # [T, B, C]
        return F.ctc_loss(log_probs, batch["targets"], outputs["lengths"], batch["target_lengths"],
                          blank=BLANK_ID, reduction="mean", zero_infinity=True)

    def eval_loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        return self.loss(outputs, batch)

    def new_metrics(self, num_labels: int) -> CTCMetrics:
        return CTCMetrics(self.symbols, self.group_names)

    # -- evaluate and predict ----------------------------------------------------------------
    def write_reports(self, metrics: CTCMetrics, run_dir, title: str, label_names: list[str]):
        """evaluate's files: transcripts.csv (per utterance: index, group, reference,
        hypothesis, its WER and CER) and per_group.csv. Returns the per-group table."""
        import pandas as pd

        names = metrics.group_names or ["all"]
        rows = sorted(metrics.rows)
        per_row = [error_rates([r], [h]) for _, _, r, h in rows]
        pd.DataFrame({"index": [r[0] for r in rows], "group": [names[r[1]] for r in rows],
                      "reference": [r[2] for r in rows], "hypothesis": [r[3] for r in rows],
                      "wer": [e["wer"] for e in per_row], "cer": [e["cer"] for e in per_row]}
                     ).to_csv(run_dir / "transcripts.csv", index=False)
        table = []
        for g, name in enumerate(names):
            part = [r for r in rows if r[1] == g]
            if part:
                rates = error_rates([r[2] for r in part], [r[3] for r in part])
                table.append({"group": name, "samples": len(part), **rates})
        frame = pd.DataFrame(table)
        frame.to_csv(run_dir / "per_group.csv", index=False)
        return frame

    def check_predict_options(self, options, label_names: list[str]):
        return options

    def predict_records(self, trained, batch: dict, rows: list[dict], raws: list, options,
                        device, on_text=None) -> list[dict]:
        """{**row, "text": the greedy transcript} per input."""
        outputs = self.forward(trained.model, batch)
        texts = greedy_decode(outputs["logits"].float(), outputs["lengths"], trained.label_names)
        return [{**row, "text": normalise(t)} for row, t in zip(rows, texts)]
