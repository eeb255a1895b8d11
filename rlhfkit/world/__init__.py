"""The built-in assistant world: a seeded synthetic domain whose true quality is computable.

Invented countries with five facts each, arithmetic, list instructions, harmful
requests and their benign look-alikes, and false-premise (sycophancy) probes.
`World` serves a pretraining corpus that imitates the internet, SFT
demonstrations, sft / rl / held-out eval prompts, ideal responses, and `gold`,
the stand-in for human judgement every stage is measured by (see `gold.py`
for the criteria and the score formula).

    world = build_world(WorldConfig(seed=0))
    p = world.prompts("eval")[0]
    world.gold(p, world.ideal_response(p)).score  # 1.0
"""

from __future__ import annotations

from rlhfkit.world.core import World, WorldConfig, build_world
from rlhfkit.world.gold import Gold
from rlhfkit.world.tasks import FAMILIES, Prompt, check_families

__all__ = ["FAMILIES", "Gold", "Prompt", "World", "WorldConfig", "build_world", "check_families"]
