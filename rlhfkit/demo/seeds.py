"""`rlhfkit seeds`: one training stage run with several seeds, every seed judged against one baseline.

A single RL run's gold win-rate moves by several points with the seed alone
(docs/results.md), so a claim about a method is a claim about the spread over seeds. This command makes that table reproducible:

1. train the stage (ppo, dpo, rloo or grpo; its YAML and overrides as given) once per
   seed in `<out_dir>/seed_<S>/`, cached like a pipeline stage: a finished seed is
   skipped, an interrupted one resumes from its checkpoint, a changed config reruns;
2. evaluate the baseline and every seed's policy on the held-out world prompts in one
   `eval` run (`<out_dir>/eval/`), so all seeds are scored on the same baseline answers;
3. summarise: one row per seed (win-rate vs the baseline with its 95% CI, gold, KL,
   refusal and over-refusal rates, premise corrections, sycophancy, length) and the
   mean, sample std, min and max over seeds, in `seeds.json` and `seeds.md`, printed.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field

from rlhfkit.config import ConfigError, load_config
from rlhfkit.demo import eval as eval_stage
from rlhfkit.demo.cache import fingerprint, run_cached
from rlhfkit.files import write_atomic
from rlhfkit.stages import STAGES as STAGE_TABLE

STAGES = {name: (STAGE_TABLE[name].module, STAGE_TABLE[name].config) for name in ("ppo", "dpo", "rloo", "grpo")}
# (metrics.json key, column title, digits); the win-rate comes first, from gold_winrate
COLUMNS = (("gold", "gold", 3), ("kl", "KL", 2), ("refusal_rate_harmful", "refuses harmful", 3),
           ("over_refusal_benign", "over-refusal", 3), ("correction_rate", "premise corrected", 3),
           ("sycophancy_rate", "sycophancy", 3), ("hallucination_rate", "hallucination", 3), ("response_words", "words", 1))


@dataclass
class Config:
    out_dir: str = "runs/seeds"  # seed_<S>/ per seed, eval/, seeds.json, seeds.md
    stage: str = "ppo"  # the stage trained once per seed: ppo | dpo | rloo | grpo
    stage_config: str | None = None  # YAML of that stage (e.g. runs/demo/ppo/config.yaml); out_dir and seed are set here
    stage_args: list[str] = field(default_factory=list)  # overrides for the stage, e.g. [kl_target=0.4, threads=1]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])  # one training run each
    baseline: str = "runs/sft/model"  # the policy every seed is judged against (named "baseline" in the eval)
    eval: eval_stage.Config = field(default_factory=lambda: eval_stage.Config(policies=["<wired>"]))  # policies, names, out_dir wired; reward_model None: the stage's

    def resolve(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"'stage': {self.stage!r} is not one of {sorted(STAGES)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"'seeds': give distinct seeds, got {self.seeds}")


def stage_config(cfg: Config, seed: int):
    """The stage's config for one seed: its defaults, then `stage_config`, then `stage_args`, then out_dir and seed."""
    module, name = STAGES[cfg.stage]
    cls = getattr(importlib.import_module(module), name)
    where = os.path.join(cfg.out_dir, f"seed_{seed}")
    return load_config(cls, cfg.stage_config, [*cfg.stage_args, f"out_dir={where}", f"seed={seed}"])


def stage_reward_model(scfg) -> str | None:
    """The RM the stage trained against (None for DPO, or when a programmatic `reward` replaced it)."""
    return getattr(scfg, "reward_model", None) if getattr(scfg, "reward", "rm") == "rm" else None


def main(cfg: Config) -> dict:
    os.makedirs(cfg.out_dir, exist_ok=True)
    train = importlib.import_module(STAGES[cfg.stage][0]).train
    t0, prints, ran = time.time(), [], False
    n = len(cfg.seeds) + 1

    # 1. One training run per seed, cached.
    runs = [stage_config(cfg, s) for s in cfg.seeds]
    for i, (seed, scfg) in enumerate(zip(cfg.seeds, runs), 1):
        prints.append(fingerprint(scfg, run_dir=cfg.out_dir))  # the user's data and model files by content
        head = f"[seeds {i}/{n} +{time.time() - t0:5.0f}s] {cfg.stage} seed {seed}"
        ran |= run_cached(head, lambda scfg=scfg: train(scfg), scfg.out_dir, prints[-1])

    # 2. One eval of the baseline and every seed (rerun when any seed did).
    ecfg = dataclasses.replace(
        cfg.eval, out_dir=os.path.join(cfg.out_dir, "eval"), baseline="baseline",
        policies=[cfg.baseline] + [os.path.join(r.out_dir, "model") for r in runs],
        names=["baseline"] + [f"seed_{s}" for s in cfg.seeds],
        reward_model=cfg.eval.reward_model or stage_reward_model(runs[0]))
    ecfg.resolve()
    run_cached(f"[seeds {n}/{n} +{time.time() - t0:5.0f}s] eval", lambda: eval_stage.main(ecfg), ecfg.out_dir,
               fingerprint(ecfg, prints, run_dir=cfg.out_dir), stale=ran)

    # 3. Per-seed rows and their spread.
    with open(os.path.join(ecfg.out_dir, "metrics.json")) as f:
        summary = summarise(json.load(f), cfg.seeds)
    summary["stage"], summary["baseline"] = cfg.stage, cfg.baseline
    write_atomic(os.path.join(cfg.out_dir, "seeds.json"), json.dumps(summary, indent=2))
    table = markdown(summary)
    write_atomic(os.path.join(cfg.out_dir, "seeds.md"), table + "\n")
    print(table, flush=True)
    print(f"[seeds] finished in {time.time() - t0:.0f}s; {os.path.join(cfg.out_dir, 'seeds.json')}", flush=True)
    return summary


def summarise(metrics: dict, seeds: list[int]) -> dict:
    """eval metrics.json -> {"rows": {name: {column: value}}, "spread": {column: {mean, std, min, max}}}."""
    def row(m: dict) -> dict:
        wr = m.get("gold_winrate") or {}
        out = {"winrate": wr.get("mean"), "winrate_lo": wr.get("lo"), "winrate_hi": wr.get("hi")}
        return out | {key: m.get(key) for key, _, _ in COLUMNS}

    rows = {"baseline": row(metrics["baseline"])} | {f"seed_{s}": row(metrics[f"seed_{s}"]) for s in seeds}
    spread = {}
    for key in ("winrate", *(k for k, _, _ in COLUMNS)):
        values = [rows[f"seed_{s}"][key] for s in seeds if rows[f"seed_{s}"][key] is not None]
        if values:
            spread[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                           "min": min(values), "max": max(values)}
    return {"rows": rows, "spread": spread}


def markdown(summary: dict) -> str:
    def fmt(v, digits: int) -> str:
        return "—" if v is None else f"{v:.{digits}f}"

    head = ["policy", "win-rate vs baseline [95% CI]"] + [title for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in summary["rows"].items():
        win = "—" if name == "baseline" else f"{fmt(r['winrate'], 3)} [{fmt(r['winrate_lo'], 3)}, {fmt(r['winrate_hi'], 3)}]"
        lines.append(f"| {name} | {win} | " + " | ".join(fmt(r[k], d) for k, _, d in COLUMNS) + " |")
    for stat in ("mean", "std", "min", "max"):
        cells = [fmt(summary["spread"].get(k, {}).get(stat), d) for k, _, d in (("winrate", "", 3), *COLUMNS)]
        lines.append(f"| seeds {stat} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
