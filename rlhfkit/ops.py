"""Tensor primitives shared by every stage: masked statistics, logprobs, entropy.

Convention (used across rlhfkit): per-token tensors are `(B, T)` and aligned to the
*predicted* token, i.e. column t holds a quantity about token t of the sequence
that the logits at column t predict; `mask` is a bool `(B, T)` tensor, True on the
response tokens that a statistic or a loss should see.

Masked statistics select entries with `torch.where` rather than multiplying by the
mask, so a NaN/inf sitting in a padded position cannot leak into the result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `x` over entries where `mask` is True.

    x, mask: same shape (mask bool). dim=None sums everything to a scalar; an int
    reduces that dimension only.
    """
    picked = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over entries where `mask` is True; 0 where nothing is selected.

    Same shapes/`dim` semantics as `masked_sum`. The count is clamped to 1 so an
    empty mask gives 0 instead of NaN (an empty micro-batch then logs 0).
    """
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over the masked entries (scalar).

    unbiased=True applies Bessel's correction n / (n - 1) and raises ValueError for
    fewer than 2 masked entries (a variance of one sample is a bug upstream, e.g.
    whitening a batch with a single token). unbiased=False never raises and gives 0
    on an empty mask.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if not unbiased:
        return var
    n = int(mask.sum())
    if n < 2:
        raise ValueError(f"unbiased masked_var needs at least 2 masked entries, got {n}")
    return var * (n / (n - 1))


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, total=None
) -> torch.Tensor:
    """Normalise `x` to mean 0 and (unbiased) variance 1 over the masked entries.

    shift_mean=False adds the mean back, i.e. only rescales: used for rewards, whose
    sign carries meaning (Huang et al. 2024, "reward whitening"). Result has the
    shape of `x` and is exactly 0 outside `mask`. `total(t)` sums a scalar tensor over
    data-parallel ranks (rlhfkit.distributed.global_sum): the mean and variance are then
    the global batch's, in two passes like the one-process ones.
    """
    if total is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        n = total(mask.sum())
        if n < 2:
            raise ValueError(f"unbiased masked_var needs at least 2 masked entries, got {int(n)}")
        mean = (total(masked_sum(x, mask)) / n).to(x.dtype)
        var = (total(masked_sum((x - mean) ** 2, mask)) / (n - 1)).to(x.dtype)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros((), dtype=whitened.dtype, device=x.device))


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for logprobs/entropy, got {temperature}")


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(logits / temperature) gathered at `tokens`.

    logits: (B, T, V) any float dtype; tokens: (B, T) long, already aligned
    (tokens[:, t] is the token predicted by logits[:, t]). Returns (B, T) float32.

    Rows are processed one at a time so that at most one (B, T, V) float32 tensor
    (the log-softmax outputs kept for backward) exists besides the logits; a
    full-batch `log_softmax(logits / temperature)` would hold two, plus a float32
    copy of bf16 logits. Same arithmetic as `rollout.sample_next`, so PPO's
    recomputed logprobs match the sampling-time ones up to the forward pass.
    """
    _check_temperature(temperature)
    rows = [
        F.log_softmax(row.float() / temperature, dim=-1).gather(-1, tok[:, None])[:, 0]
        for row, tok in zip(logits, tokens)
    ]
    return torch.stack(rows)  # (B, T)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position, in nats.

    logits: (B, T, V); returns (B, T) float32. Row by row for the same memory reason
    as `logprobs_from_logits`. -inf logits (banned tokens) contribute 0, and their
    gradient stays finite: logp is clamped to the smallest float before p * logp.
    """
    _check_temperature(temperature)
    rows = []
    for row in logits:
        logp = F.log_softmax(row.float() / temperature, dim=-1)  # (T, V)
        logp_finite = logp.clamp(min=torch.finfo(logp.dtype).min)
        rows.append(-(logp.exp() * logp_finite).sum(-1))
    return torch.stack(rows)  # (B, T)


def shift_for_causal_lm(
    input_ids: torch.Tensor, logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Align a causal LM's outputs with the tokens they predict.

    input_ids: (B, T) (also works for labels with -100); logits: (B, T, V).
    Returns `(logits[:, :-1], input_ids[:, 1:])`, in the argument order of
    `logprobs_from_logits` / `losses.lm_loss`, so callers can write
    `logprobs_from_logits(*shift_for_causal_lm(ids, logits))`. A token-level mask
    over `input_ids` is shifted the same way: `mask[:, 1:]`.
    """
    return logits[:, :-1], input_ids[:, 1:]
