"""Checkpoints that a killed run resumes from exactly.

    <out_dir>/checkpoints/step_000120/
        <name>/            each model in Hugging Face `save_pretrained` form (+ tokenizer)
        state.pt           optimizer(s), scheduler(s), RNG states, step, data position, extras
    <out_dir>/checkpoints/latest   -> text file naming the newest complete checkpoint

A checkpoint is written to a temporary directory and renamed into place, and
`latest` is replaced atomically afterwards, so a SIGKILL at any moment leaves
either the old or the new checkpoint, never half of one. Its last file,
`MANIFEST.json`, holds the SHA-256 of every other file; `latest_checkpoint`
verifies it, and a damaged newest checkpoint (flipped bytes, a truncated or
missing file) is skipped with a warning for the newest intact one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from typing import Any

import torch

from rlhfkit.files import sha256_file, write_atomic
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
    from rlhfkit.data.chat import chat_template

    check_finite_weights(stage, model)
    unwrap(model).save_pretrained(out)
    if not tokenizer.chat_template:  # trained on the plain-dialogue fallback: save it, so the model prompts as trained
        tokenizer.chat_template = chat_template(tokenizer)
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
    with open(os.path.join(tmp, MANIFEST), "w") as f:  # written last: its presence means every file above is complete
        json.dump(_digests(tmp), f, indent=1)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_atomic(os.path.join(root, "latest"), os.path.basename(final))
    for old in sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))[:-keep]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


MANIFEST = "MANIFEST.json"


class CheckpointError(RuntimeError):
    """Checkpoints exist but none is intact: resuming is impossible and starting afresh silently would be wrong."""


def _digests(folder: str) -> dict[str, str]:
    """SHA-256 of every file under `folder` but the manifest, by path relative to it."""
    out = {}
    for d, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(d, name)
            rel = os.path.relpath(path, folder)
            if rel != MANIFEST:
                out[rel] = sha256_file(path)
    return dict(sorted(out.items()))


def damage(ckpt: str) -> str | None:
    """Why checkpoint `ckpt` cannot be trusted (no manifest, a file missing, changed or added), or None if intact."""
    try:
        with open(os.path.join(ckpt, MANIFEST)) as f:
            expected = json.load(f)
    except (OSError, ValueError):
        return "no readable manifest"
    found = _digests(ckpt)
    if diff := sorted(set(expected) ^ set(found)):
        return f"files missing or unexpected: {', '.join(diff)}"
    if changed := [k for k in expected if expected[k] != found[k]]:
        return f"content changed: {', '.join(changed)}"
    return None


def latest_checkpoint(out_dir: str) -> str | None:
    """The newest intact checkpoint of `out_dir` (the one `latest` names, else the newest step folder that verifies);
    None if there is none at all. A damaged newer one is skipped with a warning; CheckpointError if every one is."""
    root = os.path.join(out_dir, "checkpoints")
    if not os.path.isdir(root):
        return None
    steps = sorted((d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp")), reverse=True)
    pointer = os.path.join(root, "latest")
    if os.path.exists(pointer):
        with open(pointer) as f:
            named = f.read().strip()
        steps = [named] + [d for d in steps if d != named]
    problems = []
    for name in steps:
        ckpt = os.path.join(root, name)
        if (why := damage(ckpt)) is None:
            for bad in problems:
                print(f"[checkpoint] warning: skipping {bad}", flush=True)
            return ckpt
        problems.append(f"{ckpt} ({why})")
    if problems:
        raise CheckpointError(f"no intact checkpoint in {root}: {'; '.join(problems)}. Move the folder away to start "
                              "afresh, or use another out_dir.")
    return None


def load_state(ckpt: str) -> dict[str, Any]:
    """The saved state dict; RNG is restored as a side effect so sampling continues identically."""
    state = torch.load(os.path.join(ckpt, "state.pt"), weights_only=False)
    set_rng_state(state["rng"])
    return state


def resume(ckpt: str | None, out_dir: str, optimizer, stage: str, main: bool = True, model=None) -> tuple[int, dict[str, Any]]:
    """Continue a run from `ckpt` (None: a fresh start): restore the optimiser and the RNG, drop log rows
    written after the checkpoint (a fresh start drops them all, so no step is logged twice), and return
    (the step to start from, the saved state for whatever else the stage keeps in it). Only the `main`
    rank touches the logs: it alone writes them, and another rank's late truncation would drop its rows.
    `model`: the trained model when it is FSDP-sharded (its optimiser state is saved by parameter name)."""
    if not ckpt:
        for log in ("metrics.jsonl", "samples.jsonl") if main else ():
            truncate_log(out_dir, -1, log)
        return 0, {}
    state = load_state(ckpt)
    from rlhfkit.distributed import load_optimizer_state

    load_optimizer_state(model, optimizer, state["optimizer"])
    for log in ("metrics.jsonl", "samples.jsonl") if main else ():
        truncate_log(out_dir, state["step"], log)
    print(f"[{stage}] resumed from {ckpt} at step {state['step']}", flush=True)
    return state["step"], state


def truncate_log(out_dir: str, step: int, name: str = "metrics.jsonl") -> None:
    """Drop log rows written after `step` by a run that died after its last checkpoint, and a torn last
    line (the row being written when it was killed)."""
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
        return
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # torn by a kill mid-write
            if isinstance(row, dict) and row.get("step", 0) <= step:
                rows.append(line if line.endswith("\n") else line + "\n")
    write_atomic(path, "".join(rows))


def unwrap(model):
    """The plain module inside DDP / torch.compile wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)
