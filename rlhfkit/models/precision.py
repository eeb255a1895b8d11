"""Numeric precision and activation checkpointing of a training stage's models, applied from outside the model.

`precision` (a config field of every training stage):
- fp32: fp32 weights, fp32 compute;
- bf16-mixed / fp16-mixed: fp32 master weights and optimiser state, the forward
  under `torch.autocast` (matmuls in bf16 / fp16); fp16-mixed adds loss scaling
  (`Scaler`, torch.amp.GradScaler), since fp16 gradients underflow;
- bf16: pure bf16 weights, explicitly asked for. AdamW then updates bf16 weights,
  and an update smaller than half a bf16 ulp of the weight rounds away (at lr 2e-5
  most weights never move): the reason mixed precision keeps fp32 masters;
- auto (the default): bf16-mixed on a GPU with bf16, fp32 otherwise (bf16 matmuls
  are slow on most CPUs).
Frozen models (a reference, a reward model) have nothing to update: under bf16-mixed
and bf16 they hold bf16 weights (`frozen_dtype`), half the memory of fp32.

Autocast wraps the model's own `forward` (and its backbone's, which reward and
value models call directly), as accelerate does, so every forward anywhere (training,
rollouts, evaluation) runs under it while `backward` and the optimiser stay outside.
Outputs may be bf16: the losses and log-prob helpers upcast logits to fp32.

`gradient_checkpointing` recomputes each block's activations in the backward pass
instead of storing them (Hugging Face's switch, non-reentrant), trading about a
third more compute for activation memory.
"""

from __future__ import annotations

from typing import Literal

import torch

from rlhfkit.models.lora import hf_model

Precision = Literal["auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16"]
_COMPUTE = {"fp32": None, "bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16, "bf16": None}  # autocast dtype
_WEIGHTS = {"fp32": torch.float32, "bf16-mixed": torch.float32, "fp16-mixed": torch.float32, "bf16": torch.bfloat16}
_FROZEN = {"fp32": torch.float32, "bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float32, "bf16": torch.bfloat16}


def resolve(precision: str, device: torch.device) -> str:
    """`auto` made concrete for `device`: bf16-mixed on a GPU that has bf16, else fp32."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def weights_dtype(precision: str) -> torch.dtype:
    """dtype of the weights a stage trains."""
    return _WEIGHTS[precision]


def compute_dtype(precision: str) -> torch.dtype | None:
    """The low-precision dtype matmuls run in under a mixed mode (bf16-mixed, fp16-mixed); None otherwise. FSDP gathers
    the weights in it (rlhfkit.distributed.shard_model)."""
    return _COMPUTE[precision]


def frozen_dtype(precision: str) -> torch.dtype:
    """dtype of a frozen model's weights (a reference)."""
    return _FROZEN[precision]


def prepare(model, precision: str, device: torch.device, gradient_checkpointing: bool = False):
    """Put `model` (an HF model, possibly inside peft) under `precision`'s autocast and, if asked, activation
    checkpointing; returns it. Idempotent enough: a second call nests another autocast of the same dtype."""
    hf = hf_model(model)
    if gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if (dtype := _COMPUTE[precision]) is not None:
        backbone = getattr(hf, hf.base_model_prefix, None)
        for module in {id(m): m for m in (hf, backbone) if m is not None}.values():
            module.forward = torch.autocast(device.type, dtype=dtype)(module.forward)
        hf.rlhfkit_autocast = (device.type, dtype)  # for `autocast_like` (a plain attribute: never saved)
    return model


def autocast_like(model, fn):
    """`fn` under the autocast that `prepare` put `model`'s forward under (mixed precision), else `fn` itself:
    for code that runs the model's modules without its forward (the lean decoder of rollouts)."""
    spec = getattr(hf_model(model), "rlhfkit_autocast", None)
    return torch.autocast(spec[0], dtype=spec[1])(fn) if spec else fn


def decodes_exactly(model) -> bool:
    """True when `model` runs in fp32 without autocast: its decoder's logprobs of the tokens it samples are then the
    forward's numbers up to float rounding (~1e-6), so a rollout can keep them instead of recomputing them. In bf16
    and under mixed precision the incremental decode and the full forward round differently (~1e-2 on a logprob)."""
    return getattr(hf_model(model), "rlhfkit_autocast", None) is None and all(
        p.dtype == torch.float32 for p in model.parameters())


class Scaler:
    """The optimiser step, with fp16-mixed's loss scaling (torch.amp.GradScaler); plain in every other precision.

    Use: `scaler.backward(loss)` for each (micro-)batch, `scaler.unscale(optimizer)` before clipping (so norms are
    the true ones), then `scaler.step(optimizer, guard, step, loss=..., grad_norm=...)`. A step whose gradients
    overflowed under loss scaling is skipped and the scale lowered, as GradScaler does, without counting as a
    non-finite step for `guard` (optim.NonFiniteGuard), which decides every other step."""

    def __init__(self, precision: str, device: torch.device):
        self.amp = torch.amp.GradScaler(device.type, enabled=precision == "fp16-mixed")

    def backward(self, loss: torch.Tensor) -> None:
        self.amp.scale(loss).backward()

    def unscale(self, optimizer) -> None:
        self.amp.unscale_(optimizer)

    def step(self, optimizer, guard, step: int | None, **values) -> bool:
        """Apply the update if `guard.ok(step, **values)` (and no overflow); True when applied."""
        overflow = self.amp.is_enabled() and any(not torch.isfinite(torch.as_tensor(v)).all()
                                                 for k, v in values.items() if "grad_norm" in k)
        ok = not overflow and guard.ok(step, **values)
        if ok:
            self.amp.step(optimizer)
        if self.amp.is_enabled():
            self.amp.update()  # after unscale(): lowers the scale on an overflow, else grows it now and then
        return ok
