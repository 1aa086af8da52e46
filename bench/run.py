#!/usr/bin/env python3
"""Benchmarks for `bigmodel`: startup time, training figures against targets, engine overhead.

    python3 bench/run.py                         every section (hours; the lstm run alone ~10 min)
    python3 bench/run.py --only startup,gpt      some sections, merged into the existing report
    python3 bench/run.py --smoke                 every section at a trivial size: checks the
                                                 benchmark code; its figures mean nothing and go
                                                 to <out>/smoke/, never into the report
    python3 bench/run.py --list                  the sections

One module per section in bench/sections/. Writes <out>/report.md and report.json (default
outputs/bench/); each section's figures carry the commit and UTC date they were measured at.
It reports, it does not test: the exit status is 0 whether or not the targets are met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import report
from harness import ROOT, Context, bigmodel_command
from sections import MODULES, SECTIONS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--smoke", action="store_true",
                        help="every section at a trivial size (to check this code), written to "
                             "<out>/smoke/; its figures are not benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench",
                        help="the report folder (default: outputs/bench)")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    args = parser.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := sorted(set(args.only) - set(SECTIONS)):
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def environment() -> None:
    """The commands run as CI runs them: on the shared datasets, offline."""
    shared = ROOT.parent / "shared" / "data"
    os.environ.setdefault("BIGMODEL_DATA_DIR", str(shared if shared.is_dir() else ROOT / "data"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def measure(ctx: Context, names: list[str], revision: str) -> dict:
    """Run each section; returns {name: {"measured": stamp, "result": result}}."""
    done = {}
    for name in (n for n in SECTIONS if n in names):
        print(f"== {name}", flush=True)
        stamp = {"commit": revision, "date": report.utc_now(),
                 "load_average": [round(x, 2) for x in os.getloadavg()]}
        start = time.perf_counter()
        result = SECTIONS[name].run(ctx, name)
        done[name] = {"measured": {**stamp, "duration_s": round(time.perf_counter() - start, 1)},
                      "result": result}
        for target, status in result.get("targets", {}).items():
            print(f"  {status}: {target}")
    return done


def main() -> None:
    args = parse_args()
    if args.list:
        print("\n".join(f"{name:14} {module.TITLE}" for name, module in SECTIONS.items()))
        return
    environment()
    out = args.out / "smoke" if args.smoke else args.out
    ctx = Context(cli=bigmodel_command(), work=out / "work", smoke=args.smoke)
    ctx.work.mkdir(parents=True, exist_ok=True)
    revision = report.commit(ROOT)
    latest = {"command": " ".join(["bench/run.py", *(["--smoke"] if args.smoke else []),
                                   *(["--only", ",".join(args.only)]
                                     if set(args.only) != set(SECTIONS) else [])]),
              "commit": revision, "date": report.utc_now(), "sections": args.only,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
              "load_average": [round(x, 2) for x in os.getloadavg()],
              "python": platform.python_version(), "bigmodel": " ".join(ctx.cli),
              "data_dir": os.environ["BIGMODEL_DATA_DIR"]}
    old = report.load(out / "report.json", args.smoke)
    new = measure(ctx, args.only, revision)
    merged = report.merge(old, new, latest, list(SECTIONS), args.smoke)
    (out / "report.json").write_text(json.dumps(merged, indent=2) + "\n")
    text = report.markdown(merged, MODULES)
    (out / "report.md").write_text(text)
    print("\n" + text + f"\nwritten: {out / 'report.md'} and {out / 'report.json'}")


if __name__ == "__main__":
    main()
