"""Speech, with default settings: keyword spotting on spoken_words (model=cnn) and digit
strings -> text on spoken_numbers (model=speech_ctc, task=ctc). The test figures come from
the run's own metrics.json, per synthesizer group: held-out espeak voices, and flite voices
that training never hears. SYNTHESIZED speech: these figures say nothing about human voices.

Wall time is the whole command: decoding the audio, training, the test split."""

from __future__ import annotations

from harness import SMOKE_RUN, Context, failed, run_bigmodel, verdict

NAMES = ("audio_words", "audio_numbers")
TITLE = "Speech (synthesized; default settings)"
# (arguments, the headline metric, the espeak target, better is higher, wall-time target in s)
RUNS = {
    "audio_words": (["model=cnn", "data=spoken_words"], "accuracy", 0.97, True, 600.0),
    "audio_numbers": (["model=speech_ctc", "data=spoken_numbers", "task=ctc"], "wer", 0.05,
                      False, 1200.0),
}
KEPT = ("command", "test", "best_validation", "train_time_s", "total_time_s", "wall_s",
        "samples_per_s", "peak_rss_mib", "parameters", "epochs", "steps", "run_dir")


def run(ctx: Context, name: str) -> dict:
    args, metric, target, higher, wall_target = RUNS[name]
    m = run_bigmodel(ctx, ["finetune", *args, "trainer.progress=log"]
                     + (SMOKE_RUN if ctx.smoke else []), name)
    if "error" in m:
        return failed(m)
    espeak = m["test"].get(f"{metric}_espeak", m["test"][metric])
    ok = (espeak >= target if higher else espeak <= target) and m["wall_s"] <= wall_target
    sign = ">=" if higher else "<="
    return {"metric": metric, **{key: m[key] for key in KEPT},
            "targets": {f"test {metric} (espeak voices) {sign} {target} in <= {wall_target:.0f} s "
                        "wall": verdict(ok, ctx.smoke)}}


def markdown(results: dict) -> list[str]:
    lines = ["| command | metric | test espeak | test flite (unheard) | test all | validation "
             "| epochs | train s | wall s | samples/s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results.values():
        if "error" in r:
            lines.append(f"| `{r['command']}` | error: {r['error']} | | | | | | | | |")
            continue
        k, test = r["metric"], r["test"]
        lines.append(f"| `{r['command']}` | {k} | {test.get(f'{k}_espeak', float('nan')):.4f} "
                     f"| {test.get(f'{k}_flite', float('nan')):.4f} | {test[k]:.4f} "
                     f"| {r['best_validation'][k]:.4f} | {r['epochs']} | {r['train_time_s']:.1f} "
                     f"| {r['wall_s']:.1f} | {r['samples_per_s']:,.0f} |")
    lines.append("")
    lines.append("Synthesized speech (espeak-ng voices; the flite voices are a synthesizer "
                 "training never hears): no figure here measures human speech.")
    return lines
