"""A/B of the demo's stage times between two checkouts: is a change slower?

    .venv/bin/python benchmarks/stage_ab.py --a=/path/to/checkout_a --a_run=runs/demo_a \
        --b=/path/to/checkout_b --b_run=runs/demo_b [--rounds=2] [--stages=sft,rm,ppo,dpo,eval]

Each stage runs alone, A then B, `rounds` times, each side from its own checkout (PYTHONPATH) on the upstream
outputs of its own finished pipeline run (`--a_run`, `--b_run`: symlinked into a scratch directory), with the
reduced step counts of `REDUCED` so a round takes minutes. A side calls the stage the way its own pipeline
does: `rlhfkit.demo.pipeline.PLAN[stage].run(cfg)`, or, for checkouts from before the demo package existed,
`rlhfkit.pipeline.RUNNERS[stage](cfg.<stage>)`. Run it on an idle machine: any concurrent process collapses
torch's threads on a small CPU. Prints a table and one `JSON ...` line; never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REDUCED = {  # pipeline overrides per stage: the stage's own code paths, fewer steps
    "pretrain": ["pretrain.max_steps=60", "pretrain.eval_every=30", "pretrain.ckpt_every=1000"],
    "sft": ["sft.epochs=1.0"],
    "feedback": ["feedback.limit=60"],
    "rm": ["rm.epochs=0.5"],
    "ppo": ["ppo.total_steps=6", "ppo.eval_every=3", "ppo.sample_every=3", "ppo.ckpt_every=3"],
    "dpo": ["dpo.epochs=0.08", "dpo.eval_every=10"],
    "eval": [],
}

CHILD = """
import json, os, sys, time
stage, src, scratch, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
from rlhfkit.config import load_config
try:
    from rlhfkit.demo import pipeline as P
    run = lambda cfg: P.PLAN[stage].run(cfg)
except ImportError:
    from rlhfkit import pipeline as P
    run = lambda cfg: P.RUNNERS[stage](getattr(cfg, stage))
os.makedirs(scratch)
for d in os.listdir(src):
    if d != stage and os.path.isdir(os.path.join(src, d)):
        os.symlink(os.path.abspath(os.path.join(src, d)), os.path.join(scratch, d))
cfg = load_config(P.Config, None, ["out_dir=" + scratch] + overrides)
t = time.perf_counter()
run(cfg)
print("SECONDS " + json.dumps(time.perf_counter() - t))
"""


def time_stage(checkout: str, run_dir: str, stage: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout), "RLHFKIT_NO_TENSORBOARD": "1"}
        proc = subprocess.run([sys.executable, "-c", CHILD, stage, run_dir, os.path.join(tmp, "run"), *REDUCED[stage]],
                              cwd=checkout, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{stage} in {checkout} failed:\n{proc.stderr[-3000:]}")
        return float(next(line for line in proc.stdout.splitlines() if line.startswith("SECONDS ")).split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True)
    ap.add_argument("--a_run", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--b_run", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--stages", default=",".join(REDUCED))
    args = ap.parse_args()
    rows = []
    for stage in args.stages.split(","):
        times = {"a": [], "b": []}
        for _ in range(args.rounds):
            for side in ("a", "b"):
                times[side].append(time_stage(getattr(args, side), getattr(args, f"{side}_run"), stage))
                print(f"  {stage} {side}: {times[side][-1]:.1f} s", file=sys.stderr, flush=True)
        mean = {k: sum(v) / len(v) for k, v in times.items()}
        rows.append({"stage": stage, "a_s": times["a"], "b_s": times["b"], "a_mean": round(mean["a"], 2),
                     "b_mean": round(mean["b"], 2), "b_over_a": round(mean["b"] / mean["a"], 3)})
    print(f"{'stage':<10}{'A mean s':>10}{'B mean s':>10}{'B / A':>8}")
    for r in rows:
        print(f"{r['stage']:<10}{r['a_mean']:>10.1f}{r['b_mean']:>10.1f}{r['b_over_a']:>8.3f}")
    print("JSON " + json.dumps({"benchmark": "stage_ab", "a": args.a, "b": args.b, "rows": rows}))


if __name__ == "__main__":
    main()
