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

    tied_embeddings = ("encoder.tok_emb",)  # read by `logits` too: FSDP keeps it with the root

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
                positions: torch.Tensor | None = None, caches: list[dict] | None = None,
                offset: int = 0) -> torch.Tensor:
        """Logits [B, T, V]; with `positions` (a bool mask [B, T]) only those rows, [N, V]:
        a masked LM scores 15% of the tokens, so it need not project the rest. `caches` and
        `offset`: KV-cached generation (see TextTransformer.token_states)."""
        states = self.encoder.token_states(input_ids, lengths, caches, offset)
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
    truncates_inputs = True
    generates_text = False
    summary_metrics = ("loss", "perplexity", "accuracy")

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

    def write_reports(self, metrics, run_dir, title: str, label_names: list[str]) -> None:
        """Nothing besides metrics.json for language models."""


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


    default_top_k = 5

    def check_predict_options(self, options, label_names: list[str]):
        from dataclasses import replace

        from bigmodel_cli.tasks.classification import _check_top_k

        k = self.default_top_k if options.top_k is None else options.top_k
        _check_top_k(k, minimum=1)
        return replace(options, top_k=k)

    def predict_records(self, trained, batch: dict, rows: list[dict], raws: list, options,
                        device, on_text=None) -> list[dict]:
        """{**row, "text", "filled", "masks": [{"position", "fills": [{"token", "prob"}]}]}:
        the top_k most likely tokens at each [MASK] of the text (special tokens excluded),
        and the text with each [MASK] replaced by its most likely fill."""
        from bigmodel_cli.data.text import MASK
        from bigmodel_cli.errors import UsageError

        ids, tokenizer = batch["input_ids"], trained.assets
        positions = ids == MASK_ID
        for row, text, has_mask in zip(rows, raws, positions.any(-1).tolist()):
            if not has_mask:
                raise UsageError(f"input {row['index']}: no {MASK} in {text!r}; mark each token "
                                 f"to fill with {MASK}")
        logits = trained.model(ids, batch["lengths"], positions).float()
        logits[:, :MASK_ID + 1] = float("-inf")
        probs = torch.softmax(logits, -1).cpu()
        top_p, top_i = probs.topk(min(options.top_k, probs.shape[-1]), -1)
        masks_of: dict[int, list] = {}
        for (r, pos), p_row, i_row in zip(positions.nonzero().tolist(), top_p.tolist(),
                                          top_i.tolist()):
            masks_of.setdefault(r, []).append(
                {"position": pos, "fills": [{"token": tokenizer.id_to_token(i), "prob": round(p, 6)}
                                            for p, i in zip(p_row, i_row)]})
        records = []
        for r, (row, text) in enumerate(zip(rows, raws)):
            filled = text
            for m in masks_of[r]:
                filled = filled.replace(MASK, m["fills"][0]["token"].removeprefix("##"), 1)
            records.append({**row, "text": text, "filled": filled, "masks": masks_of[r]})
        return records


class CausalLMTask(_LMTask):
    name = "clm"
    block_overlap = 1
    truncates_inputs = False   # a long prompt is read whole: generation slides its window
    generates_text = True
    default_top_k = 50

    def check_predict_options(self, options, label_names: list[str]):
        from dataclasses import replace

        from bigmodel_cli.errors import UsageError
        from bigmodel_cli.tasks.classification import _check_top_k

        k = self.default_top_k if options.top_k is None else options.top_k
        _check_top_k(k, minimum=0)  # 0: sample from every token
        if not isinstance(options.max_new_tokens, int) or options.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens={options.max_new_tokens}: must be at least 1")
        if options.temperature < 0:
            raise UsageError(f"temperature={options.temperature}: must be 0 (greedy) or more")
        return replace(options, top_k=k)

    def predict_records(self, trained, batch: dict, rows: list[dict], raws: list, options,
                        device, on_text=None) -> list[dict]:
        """{**row, "prompt", "generated"} per prompt. Each prompt's sampling is seeded by
        `options.seed` and its index: the same request, the same text."""
        from bigmodel_cli.tasks.generation import generate

        records = []
        for r, (row, prompt) in enumerate(zip(rows, raws)):
            ids = batch["input_ids"][r, :int(batch["lengths"][r])].tolist()
            generator = torch.Generator(device=device).manual_seed(
                int(options.seed) * 1_000_003 + int(row["index"]))
            if on_text is not None:
                on_text(r, "")
            generated = generate(trained.model, trained.assets, ids,
                                 max_new_tokens=options.max_new_tokens,
                                 temperature=options.temperature, top_k=options.top_k,
                                 generator=generator, device=device,
                                 on_piece=None if on_text is None else
                                 (lambda piece, r=r: on_text(r, piece)))
            records.append({**row, "prompt": prompt, "generated": generated})
        return records

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
