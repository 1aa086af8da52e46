"""Activation checkpointing and LoRA: what each costs and saves.

scale_checkpointing: the same GPT pretraining run (model=gpt, 4 blocks of d_model 256, on
Tiny Shakespeare blocks of 256 characters, batch 16, 10 steps) with and without
model.activation_checkpointing: the process's peak RSS and the seconds per step, and,
measured in this process on one batch of that model, the bytes autograd keeps for backward
(every tensor saved for backward, counted once per storage: the activation memory that
checkpointing gives up; on a GPU this is what bounds the batch).

scale_lora: all-MiniLM-L6-v2 (model=hf) on SST-2 finetuned in full (model.lr 1e-4) and
with LoRA r=8 (model.lora.lr, its default), with the same budget: validation accuracy,
trained parameters, seconds per step, checkpoint size.
"""

from __future__ import annotations

from pathlib import Path

from harness import SMOKE_RUN, Context, failed, run_bigmodel, verdict

NAMES = ("scale_checkpointing", "scale_lora")
TITLE = "Activation checkpointing and LoRA"
GPT = ["pretrain", "model=gpt", "data=tinyshakespeare", "data.max_length=256",
       "trainer.batch_size=16", "trainer.max_steps=10", "trainer.eval_every_steps=null",
       "trainer.max_eval_samples=64", "trainer.progress=log"]
GPT_SMOKE = ["pretrain", "model=gpt_tiny", "data=tinyshakespeare", "data.max_length=64",
             "model.max_len=65", "trainer.batch_size=8", "trainer.max_steps=3",
             "trainer.max_train_samples=200", "trainer.max_eval_samples=32"]
# 4,000 SST-2 sentences, one epoch of 125 steps: the budget model.lora.lr was chosen on.
SST2 = ["finetune", "model=hf", "data=sst2", "trainer.max_train_samples=4000",
        "trainer.epochs=1", "trainer.batch_size=32", "trainer.progress=log"]
MAX_GAP = 0.015        # LoRA within 1.5 points of full finetuning
MAX_TRAINED = 0.05     # with under 5% of the parameters trained


def run(ctx: Context, name: str) -> dict:
    return checkpointing(ctx) if name == "scale_checkpointing" else lora(ctx)


def checkpointing(ctx: Context) -> dict:
    base = GPT_SMOKE if ctx.smoke else GPT
    out: dict = {"command": "bigmodel " + " ".join(base) + " model.activation_checkpointing=..."}
    # One step first, so that neither measured run trains the tokenizer or fills the cache.
    run_bigmodel(ctx, [*base, "trainer.max_steps=1"], "gpt_checkpointing_warmup")
    for on in (False, True):
        m = run_bigmodel(ctx, [*base, f"model.activation_checkpointing={str(on).lower()}"],
                         f"gpt_checkpointing_{on}")
        if "error" in m:
            return failed({"command": m["command"], "error": m["error"]})
        key = "with" if on else "without"
        out[key] = {"peak_rss_mib": m["peak_rss_mib"], "s_per_step": round(m["train_time_s"] / m["steps"], 3),
                    "tokens_per_s": m["tokens_per_s"], "parameters": m["parameters"],
                    "saved_for_backward_mib": saved_for_backward_mib(m["run_dir"], on, ctx.smoke)}
    without, with_ = out["without"], out["with"]
    out["saved_ratio"] = round(with_["saved_for_backward_mib"] / without["saved_for_backward_mib"], 3)
    out["time_ratio"] = round(with_["s_per_step"] / without["s_per_step"], 3)
    return {**out, "targets": {"activation checkpointing keeps less for backward":
                               verdict(out["saved_ratio"] < 1, ctx.smoke)}}


def saved_for_backward_mib(run_dir: str, checkpointing: bool, smoke: bool) -> float:
    """MiB of tensors autograd saves in one training forward of the run's model (one batch
    of the run's shape), each storage counted once."""
    import torch

    from bigmodel_cli.commands.common import load_run

    trained = load_run(run_dir, "best", torch.device("cpu"))
    model = trained.model.train()
    model.encoder.stack.activation_checkpointing = checkpointing
    batch_size, length = (8, 64) if smoke else (16, 256)
    ids = torch.randint(5, model.encoder.vocab_size, (batch_size, length))
    batch = {"input_ids": ids, "lengths": torch.full((batch_size,), length), "index": torch.arange(batch_size)}
    storages: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    # A checkpointed block keeps its input (its own saved tensors go to checkpoint's hook,
    # not to ours): count every block's input too (a plain block saves it anyway).
    handles = [block.register_forward_pre_hook(lambda _, args: keep(args[0]))
               for block in model.encoder.stack.blocks]
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        trained.task.loss(trained.task.forward(model, batch), batch)
    for handle in handles:
        handle.remove()
    return round(sum(storages.values()) / 2**20, 1)


def lora(ctx: Context) -> dict:
    smoke = [*SMOKE_RUN, "trainer.max_steps=3"] if ctx.smoke else []
    out: dict = {}
    for kind, extra in (("full", []), ("lora", ["model.lora.enabled=true", "model.lora.r=8"])):
        m = run_bigmodel(ctx, [*SST2, *smoke, *extra], f"sst2_{kind}")
        if "error" in m:
            return failed({"command": m["command"], "error": m["error"]})
        weights = Path(m["run_dir"]) / "checkpoints" / "best" / "model.safetensors"
        out[kind] = {"command": m["command"], "validation_accuracy": m["best_validation"]["accuracy"],
                     "trainable_parameters": m["trainable_parameters"], "parameters": m["parameters"],
                     "trained_fraction": round(m["trainable_parameters"] / m["parameters"], 5),
                     "s_per_step": round(m["train_time_s"] / m["steps"], 3), "steps": m["steps"],
                     "checkpoint_mib": round(weights.stat().st_size / 2**20, 2), "wall_s": m["wall_s"]}
    gap = out["full"]["validation_accuracy"] - out["lora"]["validation_accuracy"]
    out["gap"] = round(gap, 4)
    return {**out, "targets": {
        f"LoRA r=8 within {MAX_GAP * 100:.1f} points of full finetuning, under {MAX_TRAINED:.0%} of the "
        "parameters trained": verdict(gap <= MAX_GAP and out["lora"]["trained_fraction"]
                                      < MAX_TRAINED, ctx.smoke)}}


def markdown(results: dict) -> list[str]:
    lines = []
    c = results.get("scale_checkpointing")
    if c and "error" in c:
        lines.append(f"- activation checkpointing: `{c['command']}`: error: {c['error']}")
    elif c:
        w, o = c["with"], c["without"]
        lines.append(f"- activation checkpointing (`{c['command']}`): saved for backward "
                     f"{o['saved_for_backward_mib']} -> {w['saved_for_backward_mib']} MiB "
                     f"(x{c['saved_ratio']}), peak RSS {o['peak_rss_mib']} -> {w['peak_rss_mib']} "
                     f"MiB, {o['s_per_step']} -> {w['s_per_step']} s/step (x{c['time_ratio']})")
    lo = results.get("scale_lora")
    if lo and "error" in lo:
        lines.append(f"- LoRA: `{lo['command']}`: error: {lo['error']}")
    elif lo:
        for kind in ("full", "lora"):
            r = lo[kind]
            lines.append(f"- {kind}: `{r['command']}`: validation accuracy {r['validation_accuracy']:.4f}, "
                         f"{r['trainable_parameters']:,} of {r['parameters']:,} parameters trained "
                         f"({r['trained_fraction']:.2%}), {r['s_per_step']} s/step, checkpoint "
                         f"{r['checkpoint_mib']} MiB")
        lines.append(f"- LoRA's gap to full finetuning: {lo['gap'] * 100:.2f} points")
    return lines
