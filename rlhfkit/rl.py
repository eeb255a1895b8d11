"""RL estimators shared by the PPO, RLOO and GRPO stages.

KL estimators, KL-penalised per-token rewards, GAE, KL-coefficient controllers and
the critic-free group baselines (RLOO, GRPO). Pure functions of tensors, except the
two tiny controller classes, which hold one float of state.

Shapes follow `rlhfkit.ops`: per-token tensors are (B, T) aligned to the predicted
token, `mask` is bool (B, T) and True on response tokens. Everything here computes
training targets, so callers pass detached tensors (typically under `no_grad`).
"""

from __future__ import annotations

from typing import Callable

import torch

# ---------------------------------------------------------------- KL estimators
# Schulman (2020), "Approximating KL divergence", http://joschu.net/blog/kl-approx.html.
# With x ~ pi (the policy) and r = ref(x) / pi(x), each estimator k satisfies
# E_pi[k] ~= KL(pi || ref): k1 and k3 are unbiased, k2 is biased but low-variance.
# All take per-token logprobs of the *sampled* tokens, (B, T) -> (B, T).


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(x) - log ref(x): unbiased, high variance, can be negative."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log pi(x) - log ref(x))^2: biased, low variance, >= 0."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with log r = log ref(x) - log pi(x): unbiased, >= 0.

    expm1 keeps precision when the policy is close to the reference. Not clamped:
    OpenRLHF clips log r to [-10, 10]; we prefer a visible blow-up to a silent bias.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """Column of the last True entry in each row of a bool (B, T) mask -> (B,) long.

    Rows without any True entry get 0; callers check `mask.any(1)`.
    """
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    return torch.where(mask, positions, -1).amax(1).clamp(min=0)


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -kl_coef * kl_t, plus the sequence score on the last token.

    Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences", eq. 2;
    placement of the score on the last *response* token (EOS), not the last column,
    follows Huang et al. (2024), "The N+ implementation details of RLHF with PPO".

    scores: (B,) reward-model output; logprobs, ref_logprobs: (B, T); mask: (B, T)
    bool (ragged rows and left offsets allowed). Returns `(rewards, kl)`, both (B, T)
    and 0 outside `mask`; `kl` is the per-token estimate chosen by `estimator`
    (a key of KL_ESTIMATORS). A row with an empty mask gets no score.
    """
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    kl = torch.where(mask, KL_ESTIMATORS[estimator](logprobs, ref_logprobs), zero)  # (B, T)
    rewards = -kl_coef * kl
    last = last_true_index(mask)  # (B,)
    score_at_last = torch.where(mask.any(1), scores.to(rewards.dtype), zero)  # (B,)
    rewards = rewards.scatter_add(1, last[:, None], score_at_last[:, None])
    return rewards, kl


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

    delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},
    returns R_t = A_t + V_t.

    rewards, values: (B, T) float; mask: (B, T) bool, one contiguous run of True per
    row, starting at any column (left offsets) and ending at any column (ragged
    lengths). The episode ends at the last True token: V and A after it are taken
    as 0 (no bootstrap), whatever the padded columns hold. Returns
    `(advantages, returns)`, (B, T), 0 outside `mask`. A False column inside a row
    would also act as an episode end. Vectorised over B, loops over T backwards.
    """
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    next_value = torch.zeros_like(values[:, 0])  # (B,) V_{t+1}, 0 past the end
    next_advantage = torch.zeros_like(values[:, 0])  # (B,) A_{t+1}
    advantages = []
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = torch.where(mask[:, t], delta + gamma * lam * next_advantage, zero)
        next_value = torch.where(mask[:, t], values[:, t], zero)
        next_advantage = advantage
        advantages.append(advantage)
    advantages = torch.stack(advantages[::-1], dim=1)  # (B, T)
    returns = torch.where(mask, advantages + values, zero)
    return advantages, returns


# ---------------------------------------------------------------- KL controllers
class _KLController:
    """A KL coefficient `value` and its checkpointable state."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class FixedKLController(_KLController):
    """Constant KL coefficient; `update` is a no-op."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController(_KLController):
    """Proportional controller steering the measured KL towards `target`.

    Ziegler et al. (2019), section 2.2 (lm-human-preferences `AdaptiveKLController`):
        e = clip(current_kl / target - 1, -0.2, 0.2)
        value *= 1 + e * n_steps / horizon
    `current_kl` is the mean per-sequence KL of the last batch, `n_steps` the number
    of samples (episodes) it contained, `horizon` the number of samples over which
    the error would be corrected. Only `value` is state; target/horizon are config.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


# ---------------------------------------------------------------- group baselines
def _groups(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(n_prompts * k,) -> (n_prompts, k), the k samples of a prompt contiguous."""
    if k < 2 or scores.ndim != 1 or scores.numel() % k:
        shape = tuple(scores.shape)
        raise ValueError(f"need 1-D scores, k >= 2 samples per prompt; got {shape}, k={k}")
    return scores.view(-1, k)


def rloo_advantages(scores: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, "Back to Basics", eq. 7).

    A_i = s_i - mean_{j != i} s_j over the k samples of the same prompt.
    scores: (n_prompts * k,), the k samples of a prompt contiguous. Returns the same
    shape. Sums to 0 within each group.
    """
    grouped = _groups(scores, k)  # (n, k)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).reshape(-1)


def grpo_advantages(
    scores: torch.Tensor, k: int, eps: float = 1e-4, scale: bool = True
) -> torch.Tensor:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath, section 4.1.2).

    A_i = (s_i - mean(s)) / (std(s) + eps) over the k samples of a prompt, std
    unbiased as in the reference implementation. scale=False drops the division
    (Liu et al. 2025, "Dr. GRPO"). scores: (n_prompts * k,), groups contiguous;
    returns the same shape. A group whose scores are all equal gets exactly 0:
    its floating-point mean can differ from the scores by an ulp, which the
    division by eps would otherwise amplify.
    """
    grouped = _groups(scores, k)  # (n, k)
    tied = grouped.amax(1, keepdim=True) == grouped.amin(1, keepdim=True)  # (n, 1)
    centered = torch.where(tied, 0.0, grouped - grouped.mean(1, keepdim=True))
    if scale:
        centered = centered / (grouped.std(1, keepdim=True) + eps)
    return centered.reshape(-1)
