"""GRPO (Shao et al. 2024, DeepSeekMath): group-normalised advantages, KL to the reference as a k3 loss term.

The loop is the critic-free one in `stages/rloo.py`; GRPO differs only in its
advantage estimator and where the KL goes, which are config values here.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.stages import rloo


@dataclass
class Config(rloo.Config):
    out_dir: str = "runs/grpo"  # run directory; final policy in <out_dir>/model
    estimator: str = "grpo"  # (A - mean) / std within each prompt's group
    kl_in_reward: bool = False  # KL as a k3 loss term (GRPO eq. 3)
    kl_coef: float = 0.1  # beta of the k3 term (DeepSeekMath used 0.04; 0.1 here: see README)
    temperature: float = 0.7  # sampling temperature (T=1 on the demo, seed 0: win-rate 0.65 vs 0.70 at 0.7)


train = rloo.train
