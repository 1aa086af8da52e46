"""Language modelling: masked (BERT) and causal (GPT) objectives, loss and perplexity.

The model is the text encoder + an LM head whose output projection is the encoder's token
embedding matrix (tied weights), plus a bias. Its weights are named `encoder.*` like a
classifier's, so a finetune run started from a pretrain run loads the encoder and drops
`lm_head.*`.

Masked LM (BERT's recipe): 15% of the real tokens are selected (special tokens never);
of those 80% become [MASK], 10% a random token, 10% stay; the loss is computed on the
selected positions only. Validation masks are drawn from a generator seeded by the batch's
rows, so every evaluation masks the same positions and perplexities are comparable.
Causal LM: each position predicts the next token; padding is never a target.
Perplexity = exp(mean token loss) over the evaluated tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from bigmodel_cli.data.text import SPECIAL_TOKENS

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))  # fixed by our tokenizers
IGNORE = -100


class LanguageModel(nn.Module):
    """encoder -> (dense -> GELU -> LayerNorm, for BERT) -> tied output projection."""

    def __init__(self, encoder: nn.Module, transform: bool) -> None:
        super().__init__()
        self.encoder = encoder
        d = encoder.output_dim
        self.lm_head = nn.Module()
        self.lm_head.transform = (nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
                                  if transform else nn.Identity())
        self.lm_head.bias = nn.Parameter(torch.zeros(encoder.vocab_size))

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        return F.linear(self.lm_head.transform(states), self.encoder.tok_emb.weight,
                        self.lm_head.bias)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V]; with `positions` (a bool mask [B, T]) only those rows, [N, V]:
        a masked LM scores 15% of the tokens, so it need not project the rest."""
        states = self.encoder.token_states(input_ids, lengths)
        if positions is not None:
            states = states[positions]
        return self.logits(states)


class LMMetrics:
    """Token-weighted mean loss, perplexity and top-1 accuracy over the predicted tokens."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.tokens = 0
        self.correct = 0
        self.samples = 0

    def update(self, outputs: dict, batch: dict, loss: torch.Tensor) -> None:
        targets = outputs["targets"]
        valid = targets != IGNORE
        n = int(valid.sum())
        self.loss_sum += float(loss) * n
        self.tokens += n
        self.correct += int((outputs["logits"].argmax(-1)[valid] == targets[valid]).sum())
        self.samples += int(batch["index"].shape[0])

    def compute(self) -> dict[str, float]:
        mean = self.loss_sum / max(self.tokens, 1)
        return {"loss": mean, "perplexity": math.exp(min(mean, 80.0)),
                "accuracy": self.correct / max(self.tokens, 1), "tokens": self.tokens,
                "samples": self.samples}


class _LMTask:
    needs_labels = False
    block_overlap = 0      # extra token per packed block (a causal LM's shifted target)
    transform = False

    def build_model(self, encoder: nn.Module, num_labels: int = 0) -> LanguageModel:
        if not hasattr(encoder, "token_states"):
            raise ValueError(f"{type(encoder).__name__} gives no per-token states; language "
                             "modelling needs a transformer encoder (model=bert or model=gpt)")
        return LanguageModel(encoder, self.transform)

    def loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        logits, targets = outputs["logits"], outputs["targets"]
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE)

    eval_loss = loss

    def new_metrics(self, num_labels: int = 0) -> LMMetrics:
        return LMMetrics()


class MaskedLMTask(_LMTask):
    name = "mlm"
    transform = True

    def __init__(self, mask_prob: float = 0.15, mask_token_prob: float = 0.8,
                 random_token_prob: float = 0.1) -> None:
        if not 0 < mask_prob < 1 or mask_token_prob + random_token_prob > 1:
            raise ValueError("task.mask_prob must be in (0, 1) and mask_token_prob + "
                             "random_token_prob at most 1")
        self.mask_prob = mask_prob
        self.mask_token_prob = mask_token_prob
        self.random_token_prob = random_token_prob

    def mask(self, input_ids: torch.Tensor, lengths: torch.Tensor, vocab_size: int,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked inputs, targets): targets hold the original id at selected positions and
        IGNORE elsewhere."""
        def rand(*shape):
            return torch.rand(*shape, generator=generator, device=generator.device
                              if generator is not None else input_ids.device)

        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        real = (positions[None, :] < lengths[:, None]) & (input_ids > MASK_ID)  # no specials
        selected = real & (rand(input_ids.shape) < self.mask_prob)
        targets = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
        draw = rand(input_ids.shape)
        to_mask = selected & (draw < self.mask_token_prob)
        to_random = selected & (draw >= self.mask_token_prob) & (
            draw < self.mask_token_prob + self.random_token_prob)
        random_ids = (rand(input_ids.shape) * (vocab_size - MASK_ID - 1)).long() + MASK_ID + 1
        masked = torch.where(to_mask, torch.full_like(input_ids, MASK_ID), input_ids)
        masked = torch.where(to_random, random_ids, masked)
        return masked, targets

    def forward(self, model: nn.Module, batch: dict) -> dict:
        generator = None
        if not model.training:  # the same masks at every evaluation of these rows
            generator = torch.Generator(device=batch["input_ids"].device)
            generator.manual_seed(int(batch["index"].sum()) * 1_000_003 + int(batch["index"][0]))
        vocab_size = _unwrap(model).encoder.vocab_size
        masked, targets = self.mask(batch["input_ids"], batch["lengths"], vocab_size, generator)
        positions = targets != IGNORE
        logits = model(masked, batch["lengths"], positions)
        return {"logits": logits, "targets": targets[positions]}


class CausalLMTask(_LMTask):
    name = "clm"
    block_overlap = 1

    def forward(self, model: nn.Module, batch: dict) -> dict:
        ids, lengths = batch["input_ids"], batch["lengths"]
        inputs, targets = ids[:, :-1], ids[:, 1:].clone()
        steps = torch.arange(targets.shape[1], device=ids.device)
        targets[steps[None, :] >= (lengths - 1)[:, None]] = IGNORE  # padding is no target
        logits = model(inputs, (lengths - 1).clamp(min=1))
        return {"logits": logits, "targets": targets}


def _unwrap(model: nn.Module) -> nn.Module:
    from bigmodel_cli.engine.checkpoint import unwrap

    return unwrap(model)


def language_model_task(causal: bool, mask_prob: float = 0.15, mask_token_prob: float = 0.8,
                        random_token_prob: float = 0.1) -> _LMTask:
    """task=lm: causal LM for a causal model, masked LM for a bidirectional one."""
    if causal:
        return CausalLMTask()
    return MaskedLMTask(mask_prob, mask_token_prob, random_token_prob)
