"""`rlhfkit sweep`: the whole demo pipeline once per seed, and each method's spread over seeds.

A demo figure is a distribution: one pipeline run is one draw of pretraining, SFT, feedback
sampling and labelling, the reward model and every policy. This command runs the pipeline
(with its config files and overrides, as `rlhfkit pipeline` takes them) with `seed=S` in
`<out_dir>/seed_<S>/` for each seed — the world, its prompts and its eval set stay fixed,
every stage's seed changes — each cached and resumed like a pipeline run (add a seed and only
it runs), then reads every seed's `eval/metrics.json` and writes, per policy and metric, the
values per seed and their mean, sample std, min and max: `sweep.json` and `sweep.md`.

    rlhfkit sweep --seeds='[0,1,2,3,4]' --out_dir=runs/sweep [pipeline overrides, e.g. --critic_free=true]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from rlhfkit.config import ConfigError, load_config
from rlhfkit.demo import pipeline
from rlhfkit.files import write_atomic

# (metrics.json key, column title, digits); a CI dict counts by its mean
COLUMNS = (("gold_winrate", "gold win-rate vs SFT", 3), ("content_winrate", "content win-rate vs SFT", 3),
           ("gold", "gold", 3), ("rm_score", "RM score", 2), ("kl", "KL", 2), ("response_words", "words", 1),
           ("refusal_rate_harmful", "refuses harmful", 3), ("over_refusal_benign", "over-refusal", 3),
           ("correction_rate", "premise corrected", 3), ("sycophancy_rate", "sycophancy", 3),
           ("hallucination_rate", "hallucination", 3), ("abstain_rate_known", "\"I don't know\" to known facts", 3),
           ("fitting_refusal_rate", "refuses harm, fitting reason", 3))


def main(argv: list[str]) -> int:
    """`rlhfkit sweep [--seeds=[...]] [--out_dir=DIR] [pipeline overrides ...]`."""
    seeds, out_dir, rest = [0, 1, 2, 3, 4], "runs/sweep", []
    for arg in argv:
        if arg.startswith("--seeds="):
            seeds = json.loads(arg.split("=", 1)[1])
        elif arg.startswith("--out_dir="):
            out_dir = arg.split("=", 1)[1]
        elif arg in ("-h", "--help"):
            print(__doc__)
            return 0
        else:
            rest.append(arg)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"'seeds': give distinct integer seeds, got {seeds}")
    config = [a.split("=", 1)[1] for a in rest if a.startswith("--config=")]
    overrides = [a for a in rest if not a.startswith("--config=")]
    t0 = time.time()
    for i, seed in enumerate(seeds, 1):
        print(f"[sweep {i}/{len(seeds)} +{time.time() - t0:5.0f}s] seed {seed}", flush=True)
        cfg = load_config(pipeline.Config, config[0] if config else None,
                          [*overrides, f"out_dir={os.path.join(out_dir, f'seed_{seed}')}", f"seed={seed}"])
        pipeline.main(cfg)
    summary = summarise({s: _read(os.path.join(out_dir, f"seed_{s}", "eval", "metrics.json")) for s in seeds})
    write_atomic(os.path.join(out_dir, "sweep.json"), json.dumps(summary, indent=2))
    table = markdown(summary)
    write_atomic(os.path.join(out_dir, "sweep.md"), table)
    print(table + f"\n[sweep] {len(seeds)} seeds in {time.time() - t0:.0f}s; {os.path.join(out_dir, 'sweep.json')}", flush=True)
    return 0


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _value(v):
    return v.get("mean") if isinstance(v, dict) else v


def summarise(by_seed: dict[int, dict]) -> dict:
    """{policy: {key: {"seeds": {seed: value}, "mean", "std", "min", "max"}}} over the seeds that have the value."""
    policies = list(dict.fromkeys(p for m in by_seed.values() for p in m))
    out: dict = {"seeds": list(by_seed), "policies": {}}
    for p in policies:
        row = {}
        for key, _, _ in COLUMNS:
            vals = {s: _value(m.get(p, {}).get(key)) for s, m in by_seed.items()}
            vals = {s: v for s, v in vals.items() if isinstance(v, (int, float))}
            if vals:
                xs = list(vals.values())
                row[key] = {"seeds": vals, "mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                            "min": min(xs), "max": max(xs)}
        out["policies"][p] = row
    return out


def markdown(summary: dict) -> str:
    """One row per policy and metric present: mean ± std [min, max] over the seeds."""
    lines = [f"Over {len(summary['seeds'])} whole-pipeline seeds {summary['seeds']}: mean ± std [min, max]", "",
             "| policy | " + " | ".join(t for _, t, _ in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for p, row in summary["policies"].items():
        cells = [f"{row[k]['mean']:.{d}f} ± {row[k]['std']:.{d}f} [{row[k]['min']:.{d}f}, {row[k]['max']:.{d}f}]"
                 if k in row else "–" for k, _, d in COLUMNS]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
