"""The benchmark sections, one module each, in the order `bench/run.py` runs them.

A section module has:
    NAMES     the section names it provides (`--only` takes them; most modules have one)
    TITLE     the heading of its part of the report
    run(ctx, name) -> dict            measures one section; "targets" maps a target to PASS/MISS
    markdown(results) -> list[str]    its part of the report, from {name: result} of its NAMES
                                      that the report holds (some may be from an older run)
"""

from __future__ import annotations

from sections import (
    audio,
    ddp,
    export,
    gpt,
    hf,
    images_tables,
    lstm_profile,
    overhead,
    recsys,
    resume,
    scale_corpus,
    scale_fsdp,
    scale_lora,
    serve,
    startup,
    sweep,
    training,
    transfer,
)

MODULES = (startup, overhead, lstm_profile, training, sweep, resume, ddp, scale_fsdp,
           scale_corpus, scale_lora, transfer, gpt, hf, images_tables, recsys, audio, serve,
           export)
SECTIONS = {name: module for module in MODULES for name in module.NAMES}
