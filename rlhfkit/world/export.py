"""`rlhfkit world export`: the built-in world's splits as ordinary data files.

Every generic stage reads these the way it reads a user's own data, so the demo can be
rerun by hand, one stage at a time (README, "Your own model and data"):

    corpus.jsonl         pretraining documents                     {"text"}
    eval_corpus.jsonl    held-out documents (pretrain eval loss)   {"text"}
    sft.jsonl            demonstrations, careless ones included    {"prompt", "completion", "family"}
    rl_prompts.jsonl     RL / feedback prompts                     {"prompt", "family", "id"}
    ppo_prompts.jsonl    the RL prompts with `prompt_repeats` applied (a family's prompts listed that
                         many times: the demo's PPO input)          {"prompt", "family", "id"}
    eval_prompts.jsonl   held-out eval prompts                     {"prompt", "family", "id"}
    pairs.jsonl          a ready-made preference set: per RL prompt, the ideal answer over a flawed one
                         (a sign-off, a bare or needless refusal, agreement with a false premise);
                         the demo's own pairs come from `rlhfkit feedback` (SFT samples, simulated panel)
    world.yaml           the WorldConfig: evaluator_args / reward_args of rlhfkit.world.evaluate
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from rlhfkit.config import dump_yaml
from rlhfkit.data.loaders import write_jsonl
from rlhfkit.world.core import SIGN_OFFS, World, WorldConfig, build_world
from rlhfkit.world.tasks import check_families
from rlhfkit.world.topics import HARMFUL, REFUSAL_OPENING, refusal

FILES = ("corpus.jsonl", "eval_corpus.jsonl", "sft.jsonl", "rl_prompts.jsonl", "ppo_prompts.jsonl",
         "eval_prompts.jsonl", "pairs.jsonl", "world.yaml")


@dataclass
class Config:
    out_dir: str = "runs/world"  # where the files go
    world: WorldConfig = field(default_factory=WorldConfig)  # the world to export
    prompt_repeats: dict[str, int] = field(default_factory=dict)  # ppo_prompts.jsonl: each prompt of these families this many times

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        check_families("prompt_repeats", self.prompt_repeats)
        if bad := {f: r for f, r in self.prompt_repeats.items() if not isinstance(r, int) or r < 1}:
            raise ConfigError(f"prompt_repeats: repeats must be integers >= 1, got {bad}")


def flawed(world: World, prompt, rng: random.Random) -> str:
    """A worse answer to a world prompt, by the flaw its family invites."""
    ideal = world.ideal_response(prompt)
    if prompt.family == "harmful":
        return f"{REFUSAL_OPENING} {HARMFUL[prompt.meta['topic']].harm}"  # no safe alternative
    if prompt.family == "benign":
        return refusal(HARMFUL[rng.choice(sorted(HARMFUL))])  # refusing a harmless request
    if prompt.family == "false_premise":
        return f"Yes, you are right. {prompt.text.split('?')[0].split('. ')[0]}."  # agreeing with the claim
    return ideal + rng.choice(SIGN_OFFS)  # padding


def main(cfg: Config) -> dict[str, str]:
    os.makedirs(cfg.out_dir, exist_ok=True)
    world = build_world(cfg.world)
    path = {name: os.path.join(cfg.out_dir, name) for name in FILES}
    rows = lambda ps: [{"prompt": p.text, "family": p.family, "id": p.id} for p in ps]  # noqa: E731
    write_jsonl(path["corpus.jsonl"], ({"text": d} for d in world.corpus()))
    write_jsonl(path["eval_corpus.jsonl"], ({"text": d} for d in world.eval_corpus()))
    write_jsonl(path["sft.jsonl"], ({"prompt": p.text, "completion": r, "family": p.family} for p, r in world.sft_demos()))
    rl = world.prompts("rl")
    write_jsonl(path["rl_prompts.jsonl"], rows(rl))
    write_jsonl(path["ppo_prompts.jsonl"], rows(p for p in rl for _ in range(cfg.prompt_repeats.get(p.family, 1))))
    write_jsonl(path["eval_prompts.jsonl"], rows(world.prompts("eval")))
    rng = random.Random(f"{cfg.world.seed}:export-pairs")
    write_jsonl(path["pairs.jsonl"], ({"prompt": p.text, "chosen": world.ideal_response(p), "rejected": flawed(world, p, rng),
                                       "source": "simulated", "annotator": "world", "group": p.id} for p in rl))
    dump_yaml(cfg.world, path["world.yaml"])
    print(f"[world] exported {len(FILES)} files to {cfg.out_dir}", flush=True)
    return path
