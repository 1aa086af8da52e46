"""A character-level GPT on Tiny Shakespeare (experiment=gpt_shakespeare)."""

from __future__ import annotations

from harness import SMOKE_RUN, Context, failed, run_bigmodel

from sections.lm import lm_figures

NAMES = ("gpt",)
TITLE = "Character-level GPT on Tiny Shakespeare"


def run(ctx: Context, name: str) -> dict:
    m = run_bigmodel(ctx, ["pretrain", "experiment=gpt_shakespeare"]
                     + (SMOKE_RUN if ctx.smoke else []), "pretrain_gpt")
    return failed(m) if "error" in m else lm_figures(m)


def markdown(results: dict) -> list[str]:
    g = results["gpt"]
    if "error" in g:
        return [f"- `{g['command']}`: error: {g['error']}"]
    return [f"- `{g['command']}`: validation loss {g['validation_loss']}, perplexity "
            f"{g['validation_perplexity']}; {g['tokens_per_s']} tokens/s, {g['train_time_s']} s, "
            f"{g['parameters']:,} parameters"]
