"""What the language-model sections (transfer, gpt) report of a pretrain run."""

from __future__ import annotations


def rounded(value, digits: int):
    return None if value is None else round(value, digits)


def lm_figures(m: dict) -> dict:
    best, test = m.get("best_validation") or {}, m.get("test") or {}
    return {"command": m["command"], "validation_loss": rounded(best.get("loss"), 4),
            "validation_perplexity": rounded(best.get("perplexity"), 2),
            "test_perplexity": rounded(test.get("perplexity"), 2),
            "tokens_per_s": rounded(m.get("tokens_per_s"), 0), "steps": m.get("steps"),
            "train_time_s": rounded(m.get("train_time_s"), 1), "wall_s": m.get("wall_s"),
            "parameters": m.get("parameters"), "run_dir": m.get("run_dir")}
