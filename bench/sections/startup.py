"""Startup: wall time of `bigmodel --help`, `--cfg job` and a config error (no torch import)."""

from __future__ import annotations

import statistics

from harness import Context, run_child, verdict

NAMES = ("startup",)
TITLE = "Startup (median wall seconds)"
RUNS = 5
# (key, arguments, expected exit code, target seconds)
COMMANDS = (("help", ["--help"], 0, 0.15),
            ("cfg_job", ["finetune", "--cfg", "job"], 0, 0.5),
            ("config_error", ["finetune", "optimizer.lr=abc"], 2, 1.0))


def run(ctx: Context, name: str) -> dict:
    """The median wall time of each command over RUNS runs (1 in smoke mode), with the exit codes."""
    runs_each = 1 if ctx.smoke else RUNS
    results: dict = {"runs": runs_each, "commands": {}, "targets": {}}
    for key, args, want_code, target_s in COMMANDS:
        runs = [run_child(ctx, ctx.cli + args) for _ in range(runs_each)]
        seconds = round(statistics.median(wall for _, wall, _ in runs), 3)
        codes = sorted({code for code, _, _ in runs})
        command = "bigmodel " + " ".join(args)
        results["commands"][key] = {"command": command, "median_s": seconds,
                                    "exit_codes": codes, "target_s": target_s}
        results["targets"][f"`{command}` exits {want_code} in <= {target_s} s"] = verdict(
            codes == [want_code] and seconds <= target_s, ctx.smoke)
    return results


def markdown(results: dict) -> list[str]:
    r = results["startup"]
    lines = [f"Median of {r['runs']} runs.", "", "| command | seconds | target | exit codes |",
             "|---|---:|---:|---|"]
    lines += [f"| `{c['command']}` | {c['median_s']} | {c['target_s']} | "
              f"{', '.join(map(str, c['exit_codes']))} |" for c in r["commands"].values()]
    return lines
