"""`rlhfkit eval`: answer the world's held-out prompts with each policy and measure them by gold.

Writes to `out_dir`: `metrics.json` (one object per policy), `metrics.md` (the
per-family table) and `samples.jsonl` (every prompt, answer and gold breakdown).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from rlhfkit.evaluation.gold_eval import answer, markdown_table, score, summarize
from rlhfkit.models.load import load_causal_lm
from rlhfkit.tracking import Run, seed_everything
from rlhfkit.world import WorldConfig, build_world


@dataclass
class Config:
    out_dir: str = "runs/eval"  # where metrics.json / metrics.md / samples.jsonl go
    policies: list[str] = field(default_factory=list)  # local HF model dirs to evaluate
    names: list[str] = field(default_factory=list)  # display names, one per policy (default: dir names)
    world: WorldConfig = field(default_factory=WorldConfig)  # the world whose eval prompts are used
    max_new_tokens: int = 48  # answer length limit
    temperature: float = 0.0  # 0: greedy
    batch_size: int = 64  # prompts per generation batch
    seed: int = 0  # sampling seed when temperature > 0
    device: str = "auto"  # auto | cpu | cuda

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if not self.policies:
            raise ConfigError("'policies': give at least one model directory, e.g. policies=[runs/sft/model]")
        if self.names and len(self.names) != len(self.policies):
            raise ConfigError(f"'names': {len(self.names)} names for {len(self.policies)} policies")


def main(cfg: Config) -> dict:
    seed_everything(cfg.seed)
    run = Run(cfg.out_dir, cfg, cfg.seed, "eval")
    world = build_world(cfg.world)
    prompts = world.prompts("eval")
    names = cfg.names or [_name(p) for p in cfg.policies]
    summaries, all_rows = {}, []
    for name, path in zip(names, cfg.policies):
        model, tok = load_causal_lm(path, device=cfg.device)
        answers = answer(model, tok, [p.text for p in prompts], max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, batch_size=cfg.batch_size, seed=cfg.seed)
        rows = score(world, prompts, answers)
        summaries[name] = {"path": path, **summarize(rows)}
        all_rows += [{"policy": name, **r} for r in rows]
        print(f"[eval] {name}: mean gold {summaries[name]['gold']:.3f}", flush=True)

    with open(os.path.join(cfg.out_dir, "metrics.json"), "w") as f:
        json.dump(summaries, f, indent=2)
    with open(os.path.join(cfg.out_dir, "samples.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in all_rows)
    table = markdown_table(summaries)
    with open(os.path.join(cfg.out_dir, "metrics.md"), "w") as f:
        f.write(f"# Gold evaluation on {len(prompts)} held-out world prompts\n\n{table}")
    print(table, flush=True)
    run.close()
    return summaries


def _name(path: str) -> str:
    """runs/demo/sft/model -> sft"""
    parts = [p for p in os.path.normpath(path).split(os.sep) if p not in ("model", ".")]
    return parts[-1] if parts else path
