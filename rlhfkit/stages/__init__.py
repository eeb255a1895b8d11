"""The training and sampling stages: one `Config` and one entry function each, never importing each other.

`STAGES` is the one table of them; `rlhfkit <name>` runs an entry (rlhfkit.cli).
A new method is a new stage file plus a loss function and one row here.
"""

from __future__ import annotations

from typing import NamedTuple


class Stage(NamedTuple):
    module: str  # where the Config and the entry function live
    config: str  # the Config class
    entry: str  # the function taking the config
    help: str  # one line for `rlhfkit --help`


STAGES: dict[str, Stage] = {
    "pretrain": Stage("rlhfkit.stages.pretrain", "Config", "train", "causal-LM pretraining (a tiny model from scratch, or continue one)"),
    "sft": Stage("rlhfkit.stages.sft", "Config", "train", "supervised fine-tuning on demonstrations"),
    "generate": Stage("rlhfkit.stages.generate", "Config", "main", "batched sampling from a policy"),
    "sample": Stage("rlhfkit.stages.generate", "SampleConfig", "main", "K responses per prompt: the queue to be ranked"),
    "rm": Stage("rlhfkit.stages.rm", "Config", "train", "Bradley-Terry reward model on preference pairs"),
    "ppo": Stage("rlhfkit.stages.ppo", "Config", "train", "PPO against the reward model with a KL penalty to the SFT model"),
    "dpo": Stage("rlhfkit.stages.dpo", "Config", "train", "direct preference optimisation (sigmoid / IPO / cDPO)"),
    "rloo": Stage("rlhfkit.stages.rloo", "Config", "train", "critic-free online RL with a leave-one-out baseline"),
    "grpo": Stage("rlhfkit.stages.rloo", "GRPOConfig", "train", "critic-free online RL with group-normalised advantages"),
    "judge": Stage("rlhfkit.stages.judge", "Config", "main", "an AI judge (a local LM + a constitution) labels the feedback queue"),
    "cai": Stage("rlhfkit.stages.cai", "Config", "main", "Constitutional AI: the model critiques and revises its answers -> SFT data"),
    "eval": Stage("rlhfkit.stages.eval", "Config", "main", "policies on held-out prompts: win-rates (RM, evaluator), KL, length, diversity"),
}
