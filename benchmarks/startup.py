"""Command start-up: wall time of `rlhfkit <stage> --help` (a fresh interpreter each time) for every stage,
and of `import torch` alone for scale.

    .venv/bin/python benchmarks/startup.py [--repeats 5]

`--help` reads a stage's config from its source (rlhfkit.cli_help) and imports neither torch nor
transformers. Runs alternate between commands; the median of `--repeats` is reported. Time it on an
idle machine. Prints a table, then one JSON line prefixed `JSON `.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from rlhfkit.stages import STAGES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    commands = {f"rlhfkit {s} --help": [sys.executable, "-m", "rlhfkit", s, "--help"] for s in STAGES}
    commands["python -c 'import torch'"] = [sys.executable, "-c", "import torch"]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, cmd in commands.items():
            times[name].append(wall(cmd))
    rows = {name: statistics.median(t) for name, t in times.items()}
    width = max(map(len, rows))
    print(f"{'command':<{width}}  median s")
    for name, t in rows.items():
        print(f"{name:<{width}}  {t:8.3f}")
    print("JSON " + json.dumps({"repeats": args.repeats, "median_s": rows}))


if __name__ == "__main__":
    main()
