"""Every training loss of rlhfkit, as pure functions of tensors.

Each returns `(loss, metrics)`: a scalar tensor to backpropagate and a dict of
detached scalar tensors with hierarchical names (`ppo/policy/clipfrac`, ...).

Reduction. Token-level losses return masked_sum(per_token_loss) / normalizer, where
`normalizer` is the number of valid tokens in the WHOLE optimiser step (all
micro-batches, all ranks), as in torchtitan. Summing the micro-batch losses then
gives exactly the gradient of one big batch; a per-micro-batch mean would over-weight
short micro-batches. normalizer=None uses the local mask count (single-batch use).
Metrics describe the micro-batch: statistics are local masked means, and the
`*_loss` entries are the returned loss itself (so they scale with the normalizer).
Sequence-level losses (reward model, preference losses) are means over pairs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from rlhfkit.ops import masked_mean, masked_sum, masked_var
from rlhfkit.rl import kl_k3

Metrics = dict[str, torch.Tensor]


def token_mean(
    per_token: torch.Tensor, mask: torch.Tensor, normalizer: float | torch.Tensor | None
) -> torch.Tensor:
    """masked_sum(per_token, mask) / normalizer; normalizer=None -> local count (>= 1)."""
    if normalizer is None:
        normalizer = mask.sum().clamp(min=1)
    return masked_sum(per_token, mask) / normalizer


def _clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    normalizer: float | torch.Tensor | None,
) -> tuple[torch.Tensor, Metrics]:
    """PPO-clip objective (Schulman et al. 2017, eq. 7), written as a loss to minimise.

    per-token loss = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)),
    ratio = exp(logprobs - old_logprobs). All inputs (B, T); advantages broadcastable.
    approxkl is 0.5 * mean((logprobs - old_logprobs)^2), the OpenAI baselines /
    lm-human-preferences convention (k2 of Schulman 2020), not k3.
    """
    # masked before exp: a padded column's log-ratio may be anything (a policy's log p(PAD) of -120
    # against a stored 0); exp of it would overflow, and 0 * inf in the backward is NaN
    log_ratio = torch.where(mask, logprobs - old_logprobs, torch.zeros((), dtype=logprobs.dtype, device=logprobs.device))
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = token_mean(torch.maximum(pg_losses, pg_losses_clipped), mask, normalizer)
    with torch.no_grad():
        metrics = {
            "ppo/policy/pg_loss": loss.detach(),
            # fraction of tokens whose gradient is cut by the clip
            "ppo/policy/clipfrac": masked_mean((pg_losses_clipped > pg_losses).float(), mask),
            "ppo/policy/approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "ppo/policy/ratio_mean": masked_mean(ratio, mask),
            "ppo/policy/ratio_var": masked_var(ratio, mask, unbiased=False),
        }
    return loss, metrics


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Clipped PPO policy loss with per-token advantages.

    Schulman et al. (2017), eq. 7. logprobs (with grad), old_logprobs, advantages,
    mask: (B, T). Reduction: token sum / normalizer (module docstring).
    Metrics: ppo/policy/{pg_loss, clipfrac, approxkl (k2 convention), ratio_mean,
    ratio_var}.
    """
    return _clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip_range, normalizer)


def policy_gradient_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    normalizer: float | torch.Tensor | None = None,
    kl_coef: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Critic-free clipped policy loss (RLOO, GRPO) with an optional KL-to-reference term.

    advantages: (B,) one per sequence, broadcast over its tokens; other tensors (B, T).
    loss = clipped surrogate + kl_coef * k3(logprobs, ref_logprobs), both reduced as
    token sum / normalizer. The KL as a loss term, estimated with k3, is GRPO's
    (Shao et al. 2024, eq. 3-4). Departure: GRPO averages tokens within each sequence
    then over sequences; we use the global token count (Yu et al. 2025, DAPO), which
    does not down-weight tokens of long answers and keeps grad-accum exact.
    Metrics: ppo/policy/* as in `ppo_policy_loss`; with ref_logprobs also
    objective/kl (local k3 token mean) and ppo/policy/kl_loss (kl_coef * that term).
    """
    if kl_coef and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs")
    loss, metrics = _clipped_surrogate(
        logprobs, old_logprobs, advantages[:, None], mask, clip_range, normalizer
    )
    if ref_logprobs is not None:
        # k3 only where the mask holds: exp(log ref - log pi) overflows at padded columns once the policy's
        # log p(PAD) < -88.7 against a stored reference of 0, and the masked sum's backward is then 0 * inf
        kl = kl_k3(torch.where(mask, logprobs, ref_logprobs), ref_logprobs)  # (B, T), 0 off the mask
        kl_loss = kl_coef * token_mean(kl, mask, normalizer)
        loss = loss + kl_loss
        metrics["objective/kl"] = masked_mean(kl, mask).detach()
        metrics["ppo/policy/kl_loss"] = kl_loss.detach()
    return loss, metrics


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Clipped value loss 0.5 * max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2).

    As in OpenAI baselines / lm-human-preferences (not in the PPO paper; Huang et al.
    2024 list it as a PPO detail). values (with grad), old_values, returns, mask:
    (B, T). Reduction: token sum / normalizer. Metrics: ppo/val/{vf_loss, clipfrac,
    mean, error (local mean of (V - R)^2)}.
    """
    eps = clip_range_value
    values_clipped = old_values + torch.clamp(values - old_values, -eps, eps)
    vf_losses = (values - returns) ** 2  # (B, T)
    vf_losses_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * token_mean(torch.maximum(vf_losses, vf_losses_clipped), mask, normalizer)
    with torch.no_grad():
        metrics = {
            "ppo/val/vf_loss": loss.detach(),
            "ppo/val/clipfrac": masked_mean((vf_losses_clipped > vf_losses).float(), mask),
            "ppo/val/mean": masked_mean(values, mask),
            "ppo/val/error": masked_mean(vf_losses, mask),
        }
    return loss, metrics


@torch.no_grad()
def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, total=None
) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over masked tokens (scalar; NaN if Var[R] == 0).

    1 for a perfect critic, 0 for one that predicts the mean, negative if worse. `total(t)` sums over
    data-parallel ranks (rlhfkit.distributed.global_sum): the variances are then the global batch's.
    """
    if total is None:
        var_returns = masked_var(returns, mask, unbiased=False)
        var_error = masked_var(returns - values, mask, unbiased=False)
    else:
        n = total(mask.sum()).clamp(min=1)

        def var(x):
            mean = (total(masked_sum(x, mask)) / n).to(x.dtype)
            return total(masked_sum((x - mean) ** 2, mask)) / n

        var_returns, var_error = var(returns), var(returns - values)
    return torch.where(var_returns > 0, 1 - var_error / var_returns, torch.nan)


def weighted_mean(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """mean(x), or sum(w * x) / sum(w) with weights (same shape as x)."""
    if weights is None:
        return x.mean()
    weights = weights.to(x)
    return (weights * x).sum() / weights.sum()


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: float | torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Reward-model loss -log sigmoid(r_c - r_r - m), mean over pairs (weighted: sum w*l / sum w).

    Bradley & Terry (1952); Ouyang et al. (2022) eq. 1; the optional margin m is
    Llama 2's (Touvron et al. 2023, eq. 2). chosen_scores, rejected_scores: (B,);
    margin: float or (B,); weights: (B,) or None (all 1), e.g. InstructGPT's
    1 / C(K, 2) for a pair from a ranking of K. Metrics: rm/{loss, accuracy
    (r_c > r_r, ties count as wrong), margin (mean r_c - r_r)}, unweighted.
    """
    diff = chosen_scores - rejected_scores  # (B,)
    logits = diff if margin is None else diff - margin
    loss = weighted_mean(-F.logsigmoid(logits), weights)
    metrics = {
        "rm/loss": loss.detach(),
        "rm/accuracy": (diff > 0).float().mean().detach(),
        "rm/margin": diff.mean().detach(),
    }
    return loss, metrics


def acceptability_loss(scores: torch.Tensor, acceptable: torch.Tensor,
                       weights: torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
    """Absolute marks on the reward scale: -mean[y log sigmoid(r) + (1 - y) log sigmoid(-r)].

    Bradley-Terry against a fixed anchor answer of score 0: an answer marked
    acceptable (y = 1) should beat the anchor, an unacceptable one lose to it.
    Comparisons fix only differences within a prompt; these marks fix where 0
    lies, the same for every prompt (the role of InstructGPT's 1-7 ratings; the
    unpaired labels of KTO, Ethayarajh et al. 2024). scores: (N,); acceptable:
    (N,) in [0, 1] (a mean over annotators is allowed); weights: (N,) or None
    (a weighted mean, as in bradley_terry_loss). Metrics: rm/accept_{loss,
    accuracy (sign of r agrees with y >= 0.5)}, unweighted accuracy.
    """
    target = acceptable.to(scores.dtype)
    if weights is None:
        loss = F.binary_cross_entropy_with_logits(scores, target)
    else:
        loss = weighted_mean(F.binary_cross_entropy_with_logits(scores, target, reduction="none"), weights)
    accuracy = ((scores > 0) == (acceptable >= 0.5)).float().mean()
    return loss, {"rm/accept_loss": loss.detach(), "rm/accept_accuracy": accuracy.detach()}


# ---------------------------------------------------------------- preference losses
# Inputs, all (B,): summed (or, for length-normalised IPO, averaged: the caller
# decides) sequence logprobs of the chosen / rejected response under the policy and
# under the frozen reference. h = (pi_c - ref_c) - (pi_r - ref_r); the implicit
# reward of a response is beta * (pi - ref) (Rafailov et al. 2023, eq. 5).


def _preference_metrics(
    loss: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> Metrics:
    return {
        "dpo/loss": loss.detach(),
        "dpo/rewards/chosen": chosen_rewards.mean().detach(),
        "dpo/rewards/rejected": rejected_rewards.mean().detach(),
        "dpo/rewards/margin": (chosen_rewards - rejected_rewards).mean().detach(),
        "dpo/rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean().detach(),
    }


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """DPO: -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h), mean over pairs.

    Rafailov et al. (2023), eq. 7; e = label_smoothing > 0 is conservative DPO
    (Mitchell 2023), the loss under labels flipped with probability e.
    Metrics: dpo/{loss, rewards/chosen, rewards/rejected, rewards/margin, rewards/accuracy}.
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)  # (B,)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    logits = chosen_rewards - rejected_rewards  # beta * h
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    loss = losses.mean()
    return loss, _preference_metrics(loss, chosen_rewards, rejected_rewards)


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """IPO: (h - 1 / (2 beta))^2, mean over pairs (Azar et al. 2023, eq. 17).

    beta plays the role of the paper's tau. label_smoothing is accepted for a common
    signature with `dpo_loss` and ignored: IPO's squared loss needs no smoothing.
    Metrics as `dpo_loss` (implicit rewards still beta * (pi - ref)).
    """
    del label_smoothing
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_log_ratio - rejected_log_ratio
    loss = ((h - 1 / (2 * beta)) ** 2).mean()
    return loss, _preference_metrics(loss, beta * chosen_log_ratio, beta * rejected_log_ratio)


def chosen_nll_loss(policy_chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """RPO's extra term (Pang et al. 2024): mean over pairs of the chosen response's
    per-token negative log-likelihood, -pi_c / n_c. Added to the DPO loss with a weight,
    it keeps the chosen responses likely while their margin over the rejected grows
    (plain DPO tends to push both down). chosen_tokens: (B,) response token counts.
    Metrics: dpo/nll.
    """
    loss = (-policy_chosen_logps / chosen_tokens.clamp(min=1)).mean()
    return loss, {"dpo/nll": loss.detach()}


PREFERENCE_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, Metrics]]] = {
    "sigmoid": dpo_loss,
    "ipo": ipo_loss,
}


def lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, normalizer: float | torch.Tensor | None = None
) -> tuple[torch.Tensor, Metrics]:
    """Next-token cross-entropy, ignoring labels == -100 (SFT, pretraining, PPO-ptx).

    logits: (B, T, V); labels: (B, T) long, already aligned (labels[:, t] is the target
    of logits[:, t]; see `ops.shift_for_causal_lm`). Reduction: token sum /
    normalizer, i.e. the mean over non-ignored tokens when normalizer is None.
    Metrics: lm/loss.
    """
    per_token = F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="none"
    ).view(labels.shape)  # (B, T)
    loss = token_mean(per_token, labels != -100, normalizer)
    return loss, {"lm/loss": loss.detach()}
