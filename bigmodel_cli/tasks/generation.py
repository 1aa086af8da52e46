"""Text generation for causal-LM (GPT) runs: sampling the next token, and generating a
continuation of one prompt (its pieces streamed as they are decoded)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bigmodel_cli.data.text import SPECIAL_TOKENS

SEP_ID, MASK_ID = SPECIAL_TOKENS.index("[SEP]"), SPECIAL_TOKENS.index("[MASK]")


def sample(logits: torch.Tensor, temperature: float, top_k: int, generator) -> int:
    """The next token: greedy at temperature 0, else drawn from softmax(logits / T) over the
    top_k most likely tokens (0: all). Special tokens are never generated but [SEP], which
    ends a text."""
    logits = logits.clone()
    logits[:SEP_ID] = float("-inf")
    logits[MASK_ID] = float("-inf")
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k and top_k < logits.shape[0]:
        kth = logits.topk(top_k).values[-1]
        logits[logits < kth] = float("-inf")
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


def generate(model, tokenizer, prompt_ids: list[int], *, max_new_tokens: int,
             temperature: float, top_k: int, generator, device,
             on_piece: Callable[[str], None] | None = None, use_cache: bool = True) -> str:
    """Sample `max_new_tokens` after the prompt, the context window sliding past the model's
    max_len. `on_piece` gets the text each new token adds to the decoded continuation.

    With `use_cache`, the prompt is computed once (prefill) and each new token then costs one
    position, attending to the cached keys/values. Positions are learned and absolute, so once
    the context is longer than max_len every token shifts position: past that point each
    step re-prefills the last max_len tokens, exactly what the uncached loop computes."""
    window = model.encoder.max_len
    new: list[int] = []
    shown = ""
    caches, cached = None, 0
    for _ in range(max_new_tokens):
        tokens = prompt_ids + new
        if caches is not None and len(tokens) <= window:
            step, offset = tokens[cached:], cached
        else:
            step, offset = tokens[-window:], 0
            caches = [{} for _ in model.encoder.stack.blocks] if use_cache else None
        context = torch.tensor([step], device=device)
        # Only the last position's logits are sampled from: a prefill of the whole window
        # need not project every position onto the vocabulary.
        last = torch.zeros(1, len(step), dtype=torch.bool, device=device)
        last[0, -1] = True
        logits = model(context, torch.tensor([len(step)], device=device), positions=last,
                       caches=caches, offset=offset)
        cached = offset + len(step)
        new.append(sample(logits[0].float(), temperature, top_k, generator))
        if on_piece is not None:
            text = tokenizer.decode(new)
            if text.startswith(shown):
                on_piece(text[len(shown):])
                shown = text
    generated = tokenizer.decode(new)
    if on_piece is not None and generated[len(shown):]:
        on_piece(generated[len(shown):])
    return generated
