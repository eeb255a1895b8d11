"""The demo's feedback stage: sample K answers per prompt, have the simulated panel rank them,
export preference pairs.

1. sample: K responses per world RL prompt from the policy at temperature 1 ->
   `<out_dir>/queue.jsonl`; K may differ by prompt family (`num_samples_by_family`),
   and `prefixed_samples` of them continue a forced refusal opener for the prompts
   of `prefixed_families`, so the candidates include a refusal to be judged: a
   policy that rarely refuses a harmless look-alike would otherwise leave the reward
   model no comparison saying such a refusal is wrong (docs/results.md); a family
   may have its own opener (`prefix_by_family`, e.g. "I don't know" for facts);
   `borrowed_samples` of them, for the prompts of `borrowed_families`, are free samples
   drawn for another prompt of those families on another topic: an answer that does
   not fit its question, so the reward model learns that an answer must be about what
   was asked (else a policy finds off-topic answers it rates by their form alone);
2. label: the simulated panel ranks every item (rlhfkit.world.panel), writing
   judgement rows to the feedback store (SQLite by default, any SQLAlchemy URL) —
   the same rows people write in `rlhfkit label serve`;
3. export: every ranking of K expands to K(K-1)/2 pairs -> `<out_dir>/pairs.jsonl`
   (prompt / chosen / rejected + provenance), what `rm` and `dpo` read;
4. report: inter-annotator agreement and label counts -> `<out_dir>/feedback_stats.json`.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

from rlhfkit.data.loaders import write_jsonl
from rlhfkit.models.load import load_causal_lm
from rlhfkit.rollout import sample_groups
from rlhfkit.stages.generate import REFUSAL_PREFIX
from rlhfkit.tracking import seed_everything
from rlhfkit.world import WorldConfig, build_world, check_families
from rlhfkit.world.panel import PanelConfig, label_queue


@dataclass
class Config:
    out_dir: str = "runs/feedback"  # queue.jsonl, pairs.jsonl, feedback.db, feedback_stats.json
    seed: int = 0  # sampling and panel seed
    policy: str = "runs/sft/model"  # the policy whose samples are ranked
    db: str | None = None  # SQLAlchemy URL of the feedback store (None: sqlite in out_dir)
    num_samples: int = 4  # K responses per prompt
    num_samples_by_family: dict[str, int] = field(default_factory=dict)  # K for the prompts of these families
    limit: int = 0  # rank only the first N RL prompts (0: all)
    temperature: float = 1.0  # sampling temperature
    max_new_tokens: int = 48  # response length limit
    prefixed_samples: int = 0  # of the K samples, this many continue `prefix`: a refusal among the candidates
    prefixed_families: list[str] = field(default_factory=list)  # only prompts of these families get them ([]: every prompt)
    prefix: str = REFUSAL_PREFIX  # the forced opening of those samples
    prefix_by_family: dict[str, str] = field(default_factory=dict)  # a family's own opening instead, e.g. {facts: "I don't know"}
    borrowed_samples: int = 0  # of the K samples, this many are another prompt's free samples (another topic, one of borrowed_families)
    borrowed_families: list[str] = field(default_factory=list)  # the prompts that get borrowed samples and the pool they come from ([]: every prompt)
    panel: PanelConfig = field(default_factory=PanelConfig)  # the simulated annotators
    world: WorldConfig = field(default_factory=WorldConfig)  # prompts and the annotators' gold
    batch_size: int = 64  # sequences per generation batch
    device: str = "auto"  # auto | cpu | cuda

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        check_families("num_samples_by_family", self.num_samples_by_family)
        check_families("prefixed_families", self.prefixed_families)
        check_families("prefix_by_family", self.prefix_by_family)
        check_families("borrowed_families", self.borrowed_families)
        if self.prefixed_families and (unused := sorted(set(self.prefix_by_family) - set(self.prefixed_families))):
            raise ConfigError(f"prefix_by_family: {unused} get no prefixed samples (not in prefixed_families "
                              f"{self.prefixed_families}): their opening would never be used")
        for fam in self.prefixed_families or [None, *self.num_samples_by_family]:  # the K of prompts that get prefixed samples
            name = f"num_samples_by_family.{fam}" if fam in self.num_samples_by_family else "num_samples"
            if not 0 <= self.prefixed_samples <= self.samples_for(fam):
                raise ConfigError(f"prefixed_samples ({self.prefixed_samples}) must be in [0, {name} = {self.samples_for(fam)}]")
        for fam in self.borrowed_families or [None, *self.num_samples_by_family]:
            name = f"num_samples_by_family.{fam}" if fam in self.num_samples_by_family else "num_samples"
            if not 0 <= self.borrowed_samples <= self.samples_for(fam) - self.prefixed_for(fam) - 1:
                raise ConfigError(f"borrowed_samples ({self.borrowed_samples}) must leave at least one free sample: at most "
                                  f"{name} - prefixed = {self.samples_for(fam) - self.prefixed_for(fam) - 1}")

    def samples_for(self, family: str | None) -> int:
        """K for a prompt of this family."""
        return self.num_samples_by_family.get(family, self.num_samples)

    def prefixed_for(self, family: str | None) -> int:
        """How many of a prompt's K samples continue the prefix."""
        return self.prefixed_samples if not self.prefixed_families or family in self.prefixed_families else 0

    def borrowed_for(self, family: str | None) -> int:
        """How many of a prompt's K samples are borrowed from another prompt."""
        return self.borrowed_samples if not self.borrowed_families or family in self.borrowed_families else 0

    def prefix_for(self, family: str | None) -> str:
        """The forced opening of a prompt's prefixed samples."""
        return self.prefix_by_family.get(family, self.prefix)


def main(cfg: Config) -> dict:
    from rlhfkit.feedback.store import FeedbackStore

    os.makedirs(cfg.out_dir, exist_ok=True)
    world = build_world(cfg.world)

    # 1. Sample the queue: K - P - B free samples per prompt, then P continuing its family's forced opening (the
    #    first opening's prompts with the free samples in one call, each further opening's in a call of its own),
    #    then B borrowed from another prompt's free samples.
    seed_everything(cfg.seed)
    model, tok = load_causal_lm(cfg.policy, device=cfg.device)
    prompts = world.prompts("rl")[: cfg.limit or None]
    n_pre = [cfg.prefixed_for(p.family) for p in prompts]
    n_bor = [cfg.borrowed_for(p.family) for p in prompts]
    n_free = [cfg.samples_for(p.family) - k - b for p, k, b in zip(prompts, n_pre, n_bor)]
    openings = [cfg.prefix_for(p.family) for p in prompts]
    groups = [[] for _ in prompts]
    for i, opening in enumerate(dict.fromkeys(o for o, k in zip(openings, n_pre) if k) or [cfg.prefix]):
        part = sample_groups(model, tok, [p.text for p in prompts], n_free if i == 0 else [0] * len(prompts),
                             [k if o == opening else 0 for o, k in zip(openings, n_pre)], opening,
                             max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, batch_size=cfg.batch_size,
                             seed=cfg.seed)
        groups = [g + h for g, h in zip(groups, part)]
    groups = [g + b for g, b in zip(groups, borrow(prompts, [g[:n] for g, n in zip(groups, n_free)], n_bor, cfg.seed))]
    rows = [{"prompt": p.text, "responses": [g["response"] for g in group], "terminated": [g["terminated"] for g in group],
             "policy": cfg.policy, "family": p.family} for p, group in zip(prompts, groups)]
    queue = os.path.join(cfg.out_dir, "queue.jsonl")
    write_jsonl(queue, rows)
    print(f"[feedback] sampled {sum(map(len, groups))} responses to {len(rows)} prompts -> {queue}", flush=True)
    del model

    # 2. Label with the simulated panel into the store.
    store = FeedbackStore(cfg.db or f"sqlite:///{os.path.abspath(os.path.join(cfg.out_dir, 'feedback.db'))}")
    counts = label_queue(store, world, first_of_each_item(rows), cfg.panel)

    # 3. Export preference pairs; 4. agreement statistics.
    pairs_path = os.path.join(cfg.out_dir, "pairs.jsonl")
    n_pairs = store.export_jsonl(pairs_path)
    stats = {**counts, "pairs": n_pairs, "agreement": store.stats().get("agreement")}
    with open(os.path.join(cfg.out_dir, "feedback_stats.json"), "w") as f:
        json.dump(stats, f, indent=2, default=str)
    print(f"[feedback] {counts['judgements']} rankings of {counts['items']} items -> {n_pairs} pairs; "
          f"agreement {stats['agreement']}", flush=True)
    return stats


def borrow(prompts: list, free: list[list[dict]], n_bor: list[int], seed: int) -> list[list[dict]]:
    """For each prompt, `n_bor[i]` of the free samples drawn for other prompts that get borrowed samples themselves
    (the pool), each from a prompt on another topic (`meta["topic"]`, else another text), one sample per source."""
    rng = random.Random(f"{seed}:borrow")
    pool = [j for j, n in enumerate(n_bor) if n and free[j]]
    topic = [p.meta.get("topic", p.text) for p in prompts]
    out = []
    for i, n in enumerate(n_bor):
        sources = [j for j in pool if topic[j] != topic[i]] if n else []
        if n and not sources:
            raise ValueError(f"borrowed_samples: no prompt on another topic than {prompts[i].text!r} to borrow from")
        out.append([dict(rng.choice(free[j])) for j in rng.sample(sources, min(n, len(sources)))])
    return out


def first_of_each_item(rows: list[dict]) -> list[dict]:
    """The queue minus rows that repeat an earlier row's prompt and set of answers (a prompt the world lists
    twice can draw the same answers twice): the store keeps one item per content, and labelling it again,
    with the answers in another order, would be a second, different judgement under the first one's key."""
    seen, out = set(), []
    for row in rows:
        key = (row["prompt"], frozenset(row["responses"]))
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out
