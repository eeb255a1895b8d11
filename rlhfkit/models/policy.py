"""The policy a preference or RL stage trains, and its frozen reference, loaded one way for DPO, PPO, RLOO and GRPO.

The policy is the model at `cfg.policy` (or, resuming, the checkpoint's copy), with LoRA adapters when
`cfg.lora.r > 0`, in the stage's precision, with gradient checkpointing when asked. The reference is the
same network with its adapters disabled under LoRA (one copy of the weights), otherwise a second, frozen
copy loaded in the frozen dtype of the precision (bf16 under bf16-mixed).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Callable

from rlhfkit.models import lora, precision
from rlhfkit.models.load import load_causal_lm


def load_policy(cfg, device, ckpt: str | None) -> tuple[object, object, str, Callable[[], object]]:
    """`(policy, tokenizer, resolved precision, make_reference)` for a stage config with `policy`, `precision`, `lora`
    and `gradient_checkpointing`; `ckpt` is the checkpoint to resume from (None: a fresh start)."""
    prec = precision.resolve(cfg.precision, device)
    load = partial(load_causal_lm, device=str(device), dtype=precision.weights_dtype(prec))
    policy, tok = lora.trainable(partial(load, cfg.policy), load, ckpt and os.path.join(ckpt, "policy"), cfg.lora)
    precision.prepare(policy, prec, device, cfg.gradient_checkpointing)

    def make_reference():
        frozen = partial(load, cfg.policy, dtype=precision.frozen_dtype(prec))
        return lora.reference(policy, lambda: precision.prepare(frozen()[0], prec, device))

    return policy, tok, prec, make_reference
