"""rlhfkit.rl: GAE, KL estimators, reward shaping, KL controllers, RLOO and GRPO baselines."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rlhfkit.rl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    gae,
    grpo_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalized_rewards,
    last_true_index,
    rloo_advantages,
)

# (start, end) of the response run in each row of a T=7 batch: full row, left offset,
# right padding, both, a single token at each edge, and an empty row.
SPANS = [(0, 7), (2, 7), (0, 4), (1, 5), (6, 7), (0, 1), (3, 3)]
T = 7


def ragged_mask(spans=SPANS, length=T) -> torch.Tensor:
    mask = torch.zeros(len(spans), length, dtype=torch.bool)
    for row, (start, end) in enumerate(spans):
        mask[row, start:end] = True
    return mask


# ---------------------------------------------------------------- GAE
def naive_gae(rewards, values, mask, gamma, lam):
    """Row by row, over the valid tokens only, in plain Python floats."""
    advantages = [[0.0] * len(row) for row in rewards]
    returns = [[0.0] * len(row) for row in rewards]
    for b in range(len(rewards)):
        valid = [t for t in range(len(rewards[b])) if mask[b][t]]
        next_value, next_adv = 0.0, 0.0
        for t in reversed(valid):
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            next_adv = delta + gamma * lam * next_adv
            next_value = values[b][t]
            advantages[b][t] = next_adv
            returns[b][t] = next_adv + values[b][t]
    return advantages, returns


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (1.0, 0.95), (0.99, 0.95), (0.9, 0.0), (0.5, 0.7)])
def test_gae_matches_naive_loop_on_ragged_masks(gamma, lam):
    g = torch.Generator().manual_seed(0)
    mask = ragged_mask()
    # garbage (large) rewards and values in the padded columns must not leak in
    rewards = torch.randn(len(SPANS), T, generator=g, dtype=torch.float64) + 100.0 * ~mask
    values = torch.randn(len(SPANS), T, generator=g, dtype=torch.float64) - 50.0 * ~mask
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    exp_adv, exp_ret = naive_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor(exp_adv, dtype=torch.float64))
    torch.testing.assert_close(returns, torch.tensor(exp_ret, dtype=torch.float64))
    assert (advantages[~mask] == 0).all() and (returns[~mask] == 0).all()


def test_gae_with_gamma_lam_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 3.0, 9.0]])
    values = torch.tensor([[5.0, 0.5, 0.25, 1.0, 7.0]])
    mask = torch.tensor([[False, True, True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # reward-to-go over tokens 1..3: 6, 5, 3; no bootstrap from the padded column
    assert returns.tolist() == [[0.0, 6.0, 5.0, 3.0, 0.0]]
    assert advantages.tolist() == [[0.0, 5.5, 4.75, 2.0, 0.0]]


# ---------------------------------------------------------------- KL estimators
P = torch.tensor([0.5, 0.25, 0.15, 0.1], dtype=torch.float64)
Q = torch.tensor([0.2, 0.3, 0.1, 0.4], dtype=torch.float64)
TRUE_KL = sum(p * math.log(p / q) for p, q in zip(P.tolist(), Q.tolist()))


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_estimators_have_exact_expectation_kl(name):
    # x ~ p is the policy sample: logprobs = log p(x), ref_logprobs = log q(x)
    per_outcome = KL_ESTIMATORS[name](P.log(), Q.log())
    assert (P * per_outcome).sum().item() == pytest.approx(TRUE_KL, rel=1e-12)


def test_k2_expectation_by_hand_and_biased():
    per_outcome = kl_k2(P.log(), Q.log())
    expected = sum(p * 0.5 * math.log(p / q) ** 2 for p, q in zip(P.tolist(), Q.tolist()))
    exact = (P * per_outcome).sum().item()
    assert exact == pytest.approx(expected, rel=1e-12)
    assert abs(exact - TRUE_KL) > 0.01  # far-apart p, q: k2 is visibly biased


def test_k2_is_close_to_kl_for_nearby_distributions():
    q_near = torch.tensor([0.48, 0.26, 0.15, 0.11], dtype=torch.float64)
    kl = (P * (P / q_near).log()).sum().item()
    exact = (P * kl_k2(P.log(), q_near.log())).sum().item()
    assert exact == pytest.approx(kl, rel=0.05)


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_estimators_sample_mean_converges(name):
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(P, 200_000, replacement=True, generator=g)
    samples = KL_ESTIMATORS[name](P.log()[x], Q.log()[x])
    stderr = samples.std().item() / math.sqrt(len(samples))
    assert abs(samples.mean().item() - TRUE_KL) < 4 * stderr


def test_estimators_by_hand_and_sign():
    lp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-2.0, -1.0])
    torch.testing.assert_close(kl_k1(lp, ref), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(kl_k2(lp, ref), torch.tensor([0.5, 0.5]))
    # log r = ref - lp = -1, +1
    expected_k3 = torch.tensor([math.exp(-1) - 1 + 1, math.exp(1) - 1 - 1])
    torch.testing.assert_close(kl_k3(lp, ref), expected_k3)
    assert kl_k3(lp, lp).abs().max().item() == 0.0


# ---------------------------------------------------------------- reward shaping
def test_last_true_index():
    assert last_true_index(ragged_mask()).tolist() == [6, 6, 3, 4, 6, 0, 0]


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalized_rewards_places_score_at_last_valid_token(estimator):
    g = torch.Generator().manual_seed(0)
    mask = ragged_mask()
    logprobs = -torch.rand(len(SPANS), T, generator=g, dtype=torch.float64)
    ref_logprobs = -torch.rand(len(SPANS), T, generator=g, dtype=torch.float64)
    scores = torch.arange(1.0, len(SPANS) + 1.0, dtype=torch.float64) * 10.0
    kl_coef = 0.3
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, estimator)
    lp, ref = logprobs.tolist(), ref_logprobs.tolist()
    for b, (start, end) in enumerate(SPANS):
        for t in range(T):
            if not start <= t < end:
                assert rewards[b, t].item() == 0.0 and kl[b, t].item() == 0.0
                continue
            log_ratio = lp[b][t] - ref[b][t]
            k = log_ratio if estimator == "k1" else math.exp(-log_ratio) - 1 + log_ratio
            expected = -kl_coef * k + (scores[b].item() if t == end - 1 else 0.0)
            assert kl[b, t].item() == pytest.approx(k, abs=1e-12)
            assert rewards[b, t].item() == pytest.approx(expected, abs=1e-12)
    assert rewards[6].abs().sum().item() == 0.0  # empty row: score dropped


# ---------------------------------------------------------------- KL controllers
def test_adaptive_kl_controller_by_hand_with_clipping():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=6.6, n_steps=256)  # error +0.1 (inside the clip)
    expected = 0.1 * (1 + 0.1 * 256 / 10_000)
    assert ctl.value == pytest.approx(expected, rel=1e-12)
    ctl.update(current_kl=60.0, n_steps=512)  # error +9 -> clipped to +0.2
    expected *= 1 + 0.2 * 512 / 10_000
    assert ctl.value == pytest.approx(expected, rel=1e-12)
    ctl.update(current_kl=0.0, n_steps=128)  # error -1 -> clipped to -0.2
    expected *= 1 - 0.2 * 128 / 10_000
    assert ctl.value == pytest.approx(expected, rel=1e-12)
    ctl.update(current_kl=4.8, n_steps=100)  # error -0.2 exactly
    expected *= 1 - 0.2 * 100 / 10_000
    assert ctl.value == pytest.approx(expected, rel=1e-12)


def test_adaptive_kl_controller_state_round_trip():
    ctl = AdaptiveKLController(0.2, target=3.0, horizon=1000)
    for kl in [1.0, 5.0, 3.3]:
        ctl.update(kl, n_steps=64)
    restored = AdaptiveKLController(0.2, target=3.0, horizon=1000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value != 0.2
    ctl.update(2.0, 64)
    restored.update(2.0, 64)
    assert restored.value == ctl.value


def test_fixed_kl_controller_is_constant_and_round_trips():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, n_steps=1000)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


# ---------------------------------------------------------------- RLOO / GRPO
def test_rloo_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    k = 4
    scores = torch.randn(3 * k, generator=g, dtype=torch.float64)
    out = rloo_advantages(scores, k)
    s = scores.tolist()
    expected = []
    for i in range(len(s)):
        group = range(i - i % k, i - i % k + k)
        others = [s[j] for j in group if j != i]
        expected.append(s[i] - sum(others) / len(others))
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(out.view(3, k).sum(1), torch.zeros(3, dtype=torch.float64))


def test_rloo_by_hand_and_rejects_bad_k():
    # group (1, 2, 3): 1 - 2.5, 2 - 2, 3 - 1.5
    assert rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 3).tolist() == [-1.5, 0.0, 1.5]
    with pytest.raises(ValueError):
        rloo_advantages(torch.tensor([1.0, 2.0]), 1)
    with pytest.raises(ValueError):
        rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 2)


@pytest.mark.parametrize("scale", [True, False])
def test_grpo_matches_naive_loop(scale):
    g = torch.Generator().manual_seed(1)
    k, eps = 5, 1e-4
    scores = torch.randn(2 * k, generator=g, dtype=torch.float64)
    out = grpo_advantages(scores, k, eps=eps, scale=scale)
    expected = []
    for start in range(0, len(scores), k):
        group = scores[start : start + k].tolist()
        mean, std = statistics.mean(group), statistics.stdev(group)
        expected += [(s - mean) / (std + eps) if scale else s - mean for s in group]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grpo_zero_variance_group_gives_exact_zero(dtype):
    # 0.1 three times: the float mean is not exactly 0.1, the advantage must still be 0
    scores = torch.tensor([0.1, 0.1, 0.1, 0.0, 1.0, 2.0, 7.0, 7.0, 7.0], dtype=dtype)
    for scale in [True, False]:
        out = grpo_advantages(scores, 3, scale=scale)
        assert torch.isfinite(out).all()
        assert out[:3].tolist() == [0.0, 0.0, 0.0] and out[6:].tolist() == [0.0, 0.0, 0.0]
        assert out[3] < 0 < out[5]
