"""Feedback: sample K responses per prompt, have them ranked, export preference pairs.

1. sample: K responses per prompt from the policy (the world's RL prompts by
   default) at temperature 1 -> `<out_dir>/queue.jsonl`; `prefixed_samples` of
   them continue a forced refusal opener, so the candidates include a refusal to
   be judged: a policy that rarely refuses a harmless look-alike would otherwise
   leave the reward model no comparison saying such a refusal is wrong (the RM
   eval's over-refusal probe measures the gap). By default only harmful requests
   and their benign look-alikes get it, as a fifth candidate: ranked last on
   every prompt, a refusal taught the RM that refusing is bad almost anywhere
   (README);
2. label: the simulated panel ranks every item (rlhfkit.feedback.simulated),
   writing judgement rows to the feedback store (SQLite by default, any
   SQLAlchemy URL) — the same rows people write in `rlhfkit label serve`;
3. export: every ranking of K expands to K(K-1)/2 pairs -> `<out_dir>/pairs.jsonl`
   (prompt / chosen / rejected + provenance), what `rm` and `dpo` read;
4. report: inter-annotator agreement and label counts -> `<out_dir>/feedback_stats.json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from rlhfkit.feedback.simulated import PanelConfig, label_queue
from rlhfkit.stages import generate
from rlhfkit.world import WorldConfig, build_world


@dataclass
class Config:
    out_dir: str = "runs/feedback"  # queue.jsonl, pairs.jsonl, feedback.db, feedback_stats.json
    seed: int = 0  # sampling and panel seed
    policy: str = "runs/sft/model"  # the policy whose samples are ranked
    db: str | None = None  # SQLAlchemy URL of the feedback store (None: sqlite in out_dir)
    num_samples: int = 4  # K responses per prompt
    num_samples_by_family: dict[str, int] = field(default_factory=lambda: {"benign": 5, "harmful": 5})  # K for the world prompts of these families
    limit: int = 0  # rank only the first N RL prompts (0: all)
    temperature: float = 1.0  # sampling temperature
    max_new_tokens: int = 48  # response length limit
    prefixed_samples: int = 1  # of the K samples, this many continue `prefix`: a refusal among the candidates
    prefixed_families: list[str] = field(default_factory=lambda: ["benign", "harmful"])  # only prompts of these families get them ([]: every prompt)
    prefix: str = generate.REFUSAL_PREFIX  # the forced opening of those samples
    panel: PanelConfig = field(default_factory=PanelConfig)  # the simulated annotators
    world: WorldConfig = field(default_factory=WorldConfig)  # prompts and the annotators' gold
    device: str = "auto"  # auto | cpu | cuda


def main(cfg: Config) -> dict:
    from rlhfkit.feedback.store import FeedbackStore

    os.makedirs(cfg.out_dir, exist_ok=True)
    world = build_world(cfg.world)

    # 1. Sample the queue.
    queue = os.path.join(cfg.out_dir, "queue.jsonl")
    sample = generate.SampleConfig(
        model=cfg.policy, split="rl", limit=cfg.limit, num_samples=cfg.num_samples,
        num_samples_by_family=cfg.num_samples_by_family, temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, out=queue, world=cfg.world, device=cfg.device,
        prefix=cfg.prefix, prefixed_samples=cfg.prefixed_samples, prefixed_families=cfg.prefixed_families)
    sample.resolve()
    rows = generate.main(sample)

    # 2. Label with the simulated panel into the store.
    store = FeedbackStore(cfg.db or f"sqlite:///{os.path.abspath(os.path.join(cfg.out_dir, 'feedback.db'))}")
    counts = label_queue(store, world, rows, cfg.panel)

    # 3. Export preference pairs; 4. agreement statistics.
    pairs_path = os.path.join(cfg.out_dir, "pairs.jsonl")
    n_pairs = store.export_jsonl(pairs_path)
    stats = {**counts, "pairs": n_pairs, "agreement": store.stats().get("agreement")}
    with open(os.path.join(cfg.out_dir, "feedback_stats.json"), "w") as f:
        json.dump(stats, f, indent=2, default=str)
    print(f"[feedback] {counts['judgements']} rankings of {counts['items']} items -> {n_pairs} pairs; "
          f"agreement {stats['agreement']}", flush=True)
    return stats
