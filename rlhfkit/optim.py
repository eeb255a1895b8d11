"""Optimiser and learning-rate schedule shared by every training stage."""

from __future__ import annotations

import math

import torch


def adamw(model, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.95)):
    """AdamW with decay on matrices only (nanoGPT): biases, norms and 1-d params are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return make_adamw(groups, lr=lr, betas=betas, eps=1e-8)


def make_adamw(params, **kwargs) -> torch.optim.AdamW:
    """`torch.optim.AdamW` with its fused kernel where it applies (plain CPU or CUDA float tensors): one kernel
    for all parameters instead of a loop of per-tensor ops, which on CPU is the default otherwise
    (7.0 -> 2.5 ms a step for the 3.5M-parameter model of benchmarks/stages.py; the same update up to float
    rounding: 2e-6 apart after 118 SFT steps).
    FSDP2's sharded parameters (DTensors) keep the default implementation."""
    flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = all(not hasattr(p, "full_tensor") and p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in flat)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def cosine_lr(step: int, max_steps: int, lr: float, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `max_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or gradient norm; the run stopped before applying it."""


def _non_finite(values: dict) -> dict[str, float]:
    numbers = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in values.items()}
    return {k: v for k, v in numbers.items() if not math.isfinite(v)}


def _diverged(stage: str, step, bad: dict[str, float], why: str = "") -> DivergedError:
    shown = ", ".join(f"{k}={v}" for k, v in bad.items())
    return DivergedError(f"{stage}: training diverged{f' at step {step}' if step is not None else ''} ({shown}){why}; "
                         "stopped before the update, no model saved. Lower the learning rate or check the data; "
                         "a rerun resumes from the last checkpoint.")


class NonFiniteGuard:
    """Skips the odd non-finite step and stops a run that diverged.

    `ok(step, loss=..., grad_norm=...)` is called between the backward and `optimizer.step()`: a step
    whose values are all finite returns True (apply it); a non-finite one returns False (drop its
    gradients, no update, counted in `skipped`), and the `max_skips + 1`-th in a row raises
    DivergedError. `finish()` before saving raises if the run ended inside such a streak. A skipped step
    changes no weight and no optimiser state, so no non-finite weight reaches a checkpoint or a saved
    model, and a stopped stage exits non-zero (a pipeline never marks it done).
    """

    def __init__(self, stage: str, max_skips: int = 0):
        self.stage, self.max_skips, self.skipped, self.streak, self.last = stage, max_skips, 0, 0, {}

    def ok(self, step: int | None, **values) -> bool:
        bad = _non_finite(values)
        if not bad:
            self.streak = 0
            return True
        self.skipped, self.streak, self.last = self.skipped + 1, self.streak + 1, bad
        if self.streak > self.max_skips:
            why = f" on {self.streak} steps in a row" if self.streak > 1 else ""
            raise _diverged(self.stage, step, bad, why)
        print(f"[{self.stage}] non-finite step{f' {step}' if step is not None else ''} skipped "
              f"({', '.join(f'{k}={v}' for k, v in bad.items())}); {self.skipped} so far", flush=True)
        return False

    def metrics(self) -> dict[str, int]:
        """`{"train/skipped_steps": n}` once a step was skipped (nothing before, so clean runs log as before)."""
        return {"train/skipped_steps": self.skipped} if self.skipped else {}

    def finish(self) -> None:
        if self.streak:
            raise _diverged(self.stage, None, self.last, f" on the last {self.streak} step(s), none applied")


def clip_grad_norms(groups: list[list[torch.nn.Parameter]], max_norm: float, separately: bool = True) -> list[float]:
    """Clip the gradients of each parameter group to `max_norm`; returns each group's norm before clipping.

    `separately=True` clips every group by its own norm, as separate optimisers
    would (PPO's policy and critic: the critic's early value gradients must not
    shrink the policy's step). `separately=False` clips all groups by their joint
    norm, i.e. `torch.nn.utils.clip_grad_norm_` over the union.
    """
    norms = [torch.nn.utils.get_total_norm([p.grad for p in g if p.grad is not None]) for g in groups]
    joint = torch.stack(norms).norm()
    for g, n in zip(groups, norms):
        torch.nn.utils.clip_grads_with_norm_(g, max_norm, n if separately else joint)
    return [float(n) for n in norms]
