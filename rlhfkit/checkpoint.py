"""Checkpoints that a killed run resumes from exactly.

    <out_dir>/checkpoints/step_000120/
        <name>/            each model in Hugging Face `save_pretrained` form (+ tokenizer)
        state.pt           optimizer(s), scheduler(s), RNG states, step, data position, extras
    <out_dir>/checkpoints/latest   -> text file naming the newest complete checkpoint

A checkpoint is written to a temporary directory and renamed into place, and
`latest` is replaced atomically afterwards, so a SIGKILL at any moment leaves
either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import os
import random
import shutil
from typing import Any

import torch

from rlhfkit.files import write_atomic
from rlhfkit.optim import DivergedError


def rng_state() -> dict[str, Any]:
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_finite_weights(what: str, model) -> None:
    """DivergedError naming the first parameter of `model` holding a NaN or an infinity."""
    for name, p in unwrap(model).named_parameters():
        if not torch.isfinite(p).all():
            raise DivergedError(f"{what}: parameter {name} is not finite; the run diverged and nothing is saved")


def save_model(stage: str, model, tokenizer, out: str) -> None:
    """A stage's final model (and tokenizer) in Hugging Face form at `out`, after checking every weight is finite."""
    check_finite_weights(stage, model)
    unwrap(model).save_pretrained(out)
    tokenizer.save_pretrained(out)


def save_checkpoint(out_dir: str, step: int, models: dict[str, Any], state: dict[str, Any], tokenizer=None, keep: int = 2) -> str:
    """Save `models` (name -> HF model) and `state` (anything torch.save takes) for `step`; refuses non-finite weights."""
    for name, model in models.items():
        check_finite_weights(f"checkpoint {name} at step {step}", model)
    root = os.path.join(out_dir, "checkpoints")
    final = os.path.join(root, f"step_{step:06d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name, model in models.items():
        unwrap(model).save_pretrained(os.path.join(tmp, name))
        if tokenizer is not None:
            tokenizer.save_pretrained(os.path.join(tmp, name))
    torch.save({"step": step, "rng": rng_state(), **state}, os.path.join(tmp, "state.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_atomic(os.path.join(root, "latest"), os.path.basename(final))
    for old in sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))[:-keep]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str) -> str | None:
    path = os.path.join(out_dir, "checkpoints", "latest")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        ckpt = os.path.join(out_dir, "checkpoints", f.read().strip())
    return ckpt if os.path.exists(os.path.join(ckpt, "state.pt")) else None


def load_state(ckpt: str) -> dict[str, Any]:
    """The saved state dict; RNG is restored as a side effect so sampling continues identically."""
    state = torch.load(os.path.join(ckpt, "state.pt"), weights_only=False)
    set_rng_state(state["rng"])
    return state


def resume(ckpt: str | None, out_dir: str, optimizer, stage: str) -> tuple[int, dict[str, Any]]:
    """Continue a run from `ckpt` (None: a fresh start): restore the optimiser and the RNG, drop log rows
    written after the checkpoint, and return (the step to start from, the saved state for whatever else
    the stage keeps in it)."""
    if not ckpt:
        return 0, {}
    state = load_state(ckpt)
    optimizer.load_state_dict(state["optimizer"])
    truncate_log(out_dir, state["step"])
    print(f"[{stage}] resumed from {ckpt} at step {state['step']}", flush=True)
    return state["step"], state


def truncate_log(out_dir: str, step: int, name: str = "metrics.jsonl") -> None:
    """Drop log rows written after `step` by a run that died after its last checkpoint."""
    import json

    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    write_atomic(path, "".join(rows))


def unwrap(model):
    """The plain module inside DDP / torch.compile wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)
