"""rlhfkit.losses: values and gradients against hand computations; grad-accum invariance."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.losses import (
    PREFERENCE_LOSSES,
    acceptability_loss,
    bradley_terry_loss,
    chosen_nll_loss,
    dpo_loss,
    explained_variance,
    ipo_loss,
    lm_loss,
    policy_gradient_loss,
    ppo_policy_loss,
    ppo_value_loss,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------- reward model
def test_bradley_terry_value_and_gradient_by_hand():
    chosen, rejected = f64([1.0]).requires_grad_(), f64([0.0]).requires_grad_()
    loss, metrics = bradley_terry_loss(chosen, rejected)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-sigmoid(-1.0))
    assert rejected.grad.item() == pytest.approx(sigmoid(-1.0))
    assert metrics["rm/accuracy"].item() == 1.0 and metrics["rm/margin"].item() == 1.0


def test_bradley_terry_margin_and_metrics():
    chosen, rejected = f64([1.0, 0.0, 2.0]), f64([0.0, 1.0, 2.0])
    loss, metrics = bradley_terry_loss(chosen, rejected, margin=0.5)
    # differences minus margin: 0.5, -1.5, -0.5
    expected = sum(math.log(1 + math.exp(-x)) for x in [0.5, -1.5, -0.5]) / 3
    assert loss.item() == pytest.approx(expected)
    assert metrics["rm/accuracy"].item() == pytest.approx(1 / 3)  # the tie counts as wrong
    assert metrics["rm/margin"].item() == pytest.approx(0.0)
    assert not any(v.requires_grad for v in metrics.values())


def test_bradley_terry_weights_rankings_by_hand():
    """InstructGPT's 1 / C(K, 2): a ranking of 3 (three pairs, weight 1/3 each) counts as much as one pair."""
    chosen, rejected = f64([1.0, 1.0, 1.0, -1.0]), f64([0.0, 0.0, 0.0, 0.0])
    weights = f64([1 / 3, 1 / 3, 1 / 3, 1.0])
    loss, metrics = bradley_terry_loss(chosen, rejected, weights=weights)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2)
    assert bradley_terry_loss(chosen, rejected)[0].item() == pytest.approx(
        (3 * math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 4)  # unweighted: the ranking counts 3x
    assert metrics["rm/accuracy"].item() == pytest.approx(3 / 4)  # metrics stay per pair


def test_rm_pair_weights_count_each_ranking_once():
    from rlhfkit.data.records import Comparison
    from rlhfkit.stages.rm import pair_weights, rm_loss

    pair = Comparison(prompt="p", chosen="a", rejected="b")
    groups = [[pair] * 3, [pair]]
    assert pair_weights(groups, "pair") is None
    assert pair_weights(groups, "ranking").tolist() == pytest.approx([1 / 3] * 3 + [1.0])
    chosen, rejected = f64([1.0, 1.0, 1.0, -1.0]), f64([0.0] * 4)
    marks = f64([1.0, 1.0, 1.0, 0.0] + [float("nan")] * 4)  # chosen sides marked, rejected sides not
    loss, _ = rm_loss(chosen, rejected, marks, None, 1.0, pair_weights(groups, "ranking"))
    bt = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    accept = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-1))) / 2  # the 0-marked side scored -1: right
    assert loss.item() == pytest.approx(bt + accept)


def test_acceptability_loss_weights_by_hand():
    loss, _ = acceptability_loss(f64([2.0, 0.0]), f64([1.0, 0.0]), weights=f64([3.0, 1.0]))
    assert loss.item() == pytest.approx((3 * math.log(1 + math.exp(-2)) + math.log(2)) / 4)


def test_bradley_terry_is_stable_for_large_gaps():
    loss, _ = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([1000.0]))
    assert loss.item() == pytest.approx(1000.0)


def test_acceptability_loss_value_and_gradient_by_hand():
    # marks 1, 1, 0 at scores 0, ln 3, -ln 3: sigmoid = 1/2, 3/4, 1/4
    scores = f64([0.0, math.log(3), -math.log(3)]).requires_grad_()
    loss, metrics = acceptability_loss(scores, f64([1.0, 1.0, 0.0]))
    assert loss.item() == pytest.approx((math.log(2) + 2 * math.log(4 / 3)) / 3)
    loss.backward()  # d/dr = (sigmoid(r) - y) / N
    assert scores.grad.tolist() == pytest.approx([-1 / 6, -1 / 12, 1 / 12])
    assert metrics["rm/accept_accuracy"].item() == pytest.approx(2 / 3)  # r = 0 is not above the anchor


def test_acceptability_loss_takes_soft_marks():
    # two annotators split on one answer: target 1/2, minimised at r = 0 (gradient sigmoid(0) - 1/2 = 0)
    r = f64([0.0]).requires_grad_()
    acceptability_loss(r, f64([0.5]))[0].backward()
    assert r.grad.item() == pytest.approx(0.0)


# ---------------------------------------------------------------- PPO policy
RATIOS = [1.1, 1.5, 0.5]  # inside the band, above 1 + eps, below 1 - eps (eps = 0.2)


def run_policy_loss(advantages, normalizer=None):
    old = f64([-1.0, -2.0, -0.5])
    logprobs = (old + f64(RATIOS).log()).requires_grad_()
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, metrics = ppo_policy_loss(logprobs[None], old[None], f64([advantages]), mask, 0.2, normalizer)
    loss.backward()
    return loss.item(), logprobs.grad.tolist(), metrics


def test_ppo_policy_loss_clipped_cases_by_hand():
    # A = +1 unclipped: -1.1; A = +2 clipped above: max(-3.0, -2.4) = -2.4;
    # A = -1 clipped below: max(0.5, 0.8) = 0.8. Clipped tokens get no gradient;
    # d(-A ratio)/d logprob = -A ratio.
    loss, grad, metrics = run_policy_loss([1.0, 2.0, -1.0])
    assert loss == pytest.approx((-1.1 - 2.4 + 0.8) / 3)
    assert grad == pytest.approx([-1.1 / 3, 0.0, 0.0])
    assert metrics["ppo/policy/clipfrac"].item() == pytest.approx(2 / 3)
    assert metrics["ppo/policy/pg_loss"].item() == pytest.approx(loss)
    log_ratios = [math.log(r) for r in RATIOS]
    assert metrics["ppo/policy/approxkl"].item() == pytest.approx(0.5 * sum(x * x for x in log_ratios) / 3)
    mean = sum(RATIOS) / 3
    assert metrics["ppo/policy/ratio_mean"].item() == pytest.approx(mean)
    assert metrics["ppo/policy/ratio_var"].item() == pytest.approx(sum((r - mean) ** 2 for r in RATIOS) / 3)


def test_ppo_policy_loss_pessimistic_term_is_unclipped():
    # A = -1 with ratio 1.5: max(1.5, 1.2) = 1.5; A = +1 with ratio 0.5: max(-0.5, -0.8) = -0.5.
    # The ratio is outside the band but the unclipped term is the pessimistic one.
    loss, grad, metrics = run_policy_loss([-1.0, -1.0, 1.0])
    assert loss == pytest.approx((1.1 + 1.5 - 0.5) / 3)
    assert grad == pytest.approx([1.1 / 3, 1.5 / 3, -0.5 / 3])
    assert metrics["ppo/policy/clipfrac"].item() == 0.0


def test_ppo_policy_loss_divides_by_the_given_normalizer():
    local, _, _ = run_policy_loss([1.0, 2.0, -1.0])
    global_, _, metrics = run_policy_loss([1.0, 2.0, -1.0], normalizer=12)
    assert global_ == pytest.approx(local * 3 / 12)
    assert metrics["ppo/policy/clipfrac"].item() == pytest.approx(2 / 3)  # metrics stay local


# ---------------------------------------------------------------- PPO value
def test_ppo_value_loss_clipped_case_by_hand():
    # eps = 0.2. token 1: v=1, old=0, R=3 -> clipped v=0.2, max(4, 7.84) = 7.84 (clipped, no grad)
    # token 2: v=1, old=0.875, R=0 -> inside the band, 1 either way (not counted as clipped)
    # token 3: v=2, old=1, R=0 -> max(4, 1.44) = 4 (unclipped)
    values = f64([[1.0, 1.0, 2.0]]).requires_grad_()
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, metrics = ppo_value_loss(values, f64([[0.0, 0.875, 1.0]]), f64([[3.0, 0.0, 0.0]]), mask, 0.2)
    assert loss.item() == pytest.approx(0.5 * (7.84 + 1.0 + 4.0) / 3)
    loss.backward()
    assert values.grad[0].tolist() == pytest.approx([0.0, 1 / 3, 2 / 3])  # 0.5 * 2 (v - R) / 3
    assert metrics["ppo/val/clipfrac"].item() == pytest.approx(1 / 3)
    assert metrics["ppo/val/mean"].item() == pytest.approx(4 / 3)
    assert metrics["ppo/val/vf_loss"].item() == pytest.approx(loss.item())


def test_explained_variance():
    g = torch.Generator().manual_seed(0)
    returns = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 5, generator=g) < 0.7
    garbage = torch.where(mask, returns, 1e6)  # wrong only outside the mask
    assert explained_variance(garbage, returns, mask).item() == pytest.approx(1.0)
    mean_pred = torch.full_like(returns, returns[mask].mean().item())
    assert explained_variance(mean_pred, returns, mask).item() == pytest.approx(0.0, abs=1e-12)
    # predicting -R: Var[2R] / Var[R] = 4
    assert explained_variance(-returns, returns, mask).item() == pytest.approx(-3.0)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask).item())


# ---------------------------------------------------------------- critic-free policy gradient
def test_policy_gradient_loss_broadcasts_sequence_advantages():
    g = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(2, 4, generator=g, dtype=torch.float64)
    old = logprobs + 0.3 * torch.randn(2, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    advantages = f64([0.7, -1.3])
    loss, metrics = policy_gradient_loss(logprobs, old, advantages, mask, 0.2)
    expected, expected_metrics = ppo_policy_loss(logprobs, old, advantages[:, None].expand(2, 4), mask, 0.2)
    assert loss.item() == pytest.approx(expected.item())
    assert metrics.keys() == expected_metrics.keys()


def test_policy_gradient_loss_kl_term_by_hand():
    logprobs = f64([[-1.0, -2.0, -0.5]]).requires_grad_()
    ref = f64([[-1.5, -1.0, -9.0]])
    mask = torch.tensor([[True, True, False]])
    kl_coef = 0.1
    # old == current: ratio 1, surrogate -A per token, gradient -A per token
    loss, metrics = policy_gradient_loss(
        logprobs, logprobs.detach(), f64([2.0]), mask, 0.2, kl_coef=kl_coef, ref_logprobs=ref
    )
    log_r = [-0.5, 1.0]  # ref - logprobs on the two valid tokens
    k3 = [math.exp(x) - 1 - x for x in log_r]
    assert loss.item() == pytest.approx(-2.0 + kl_coef * sum(k3) / 2)
    assert metrics["objective/kl"].item() == pytest.approx(sum(k3) / 2)
    loss.backward()
    # d k3 / d logprob = 1 - exp(log r)
    expected_grad = [(-2.0 + kl_coef * (1 - math.exp(x))) / 2 for x in log_r] + [0.0]
    assert logprobs.grad[0].tolist() == pytest.approx(expected_grad)


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_policy_gradient_loss_finite_with_very_unlikely_padding(kl_coef):
    """RLOO/GRPO: at padded columns the policy's own log p(PAD) (here -123.7, below float32's exp range)
    meets stored old/reference log-probs of 0. The gradient must be finite and equal to the one with the
    padded columns zero-filled; before masking the inputs, k3 there was inf and its backward 0 * inf = NaN."""
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    real = torch.tensor([[-1.0, -2.0, -123.7, -150.0], [-0.5, -1.5, -0.7, -123.7]])
    stored = torch.where(mask, real - 0.1, torch.zeros(()))  # what the rollout stored: 0 at padding
    grads = []
    for lp0 in (real, torch.where(mask, real, torch.zeros(()))):
        lp = lp0.clone().requires_grad_()
        loss, _ = policy_gradient_loss(lp, stored, torch.tensor([1.0, -0.5]), mask, 0.2, kl_coef=kl_coef,
                                       ref_logprobs=stored)
        loss.backward()
        assert torch.isfinite(loss)
        grads.append((loss.detach(), lp.grad))
    assert torch.isfinite(grads[0][1]).all()
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_policy_gradient_loss_needs_ref_for_kl():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError):
        policy_gradient_loss(x, x, torch.zeros(1), x.bool(), 0.2, kl_coef=0.1)


# ---------------------------------------------------------------- preference losses
# pi_c = -1, pi_r = -2, ref_c = ref_r = -1.5  ->  h = 0.5 - (-0.5) = 1
BETA, H = 0.1, 1.0


def run_preference(loss_fn, label_smoothing=0.0):
    chosen, rejected = f64([-1.0]).requires_grad_(), f64([-2.0]).requires_grad_()
    loss, metrics = loss_fn(chosen, rejected, f64([-1.5]), f64([-1.5]), BETA, label_smoothing)
    loss.backward()
    return loss.item(), chosen.grad.item(), rejected.grad.item(), metrics


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_and_cdpo_value_and_gradient_by_hand(eps):
    loss, grad_c, grad_r, _ = run_preference(dpo_loss, eps)
    bh = BETA * H
    log_sig = lambda x: -math.log(1 + math.exp(-x))  # noqa: E731
    assert loss == pytest.approx(-(1 - eps) * log_sig(bh) - eps * log_sig(-bh))
    expected_grad = -BETA * (1 - eps) * sigmoid(-bh) + BETA * eps * sigmoid(bh)
    assert grad_c == pytest.approx(expected_grad)
    assert grad_r == pytest.approx(-expected_grad)


def test_ipo_value_and_gradient_by_hand():
    loss, grad_c, grad_r, _ = run_preference(ipo_loss)
    assert loss == pytest.approx((H - 1 / (2 * BETA)) ** 2)  # (1 - 5)^2 = 16
    assert grad_c == pytest.approx(2 * (H - 1 / (2 * BETA)))
    assert grad_r == pytest.approx(-2 * (H - 1 / (2 * BETA)))


@pytest.mark.parametrize("name", ["sigmoid", "ipo"])
def test_preference_metrics_and_accuracy(name):
    # pair 1: chosen log-ratio 0.5, rejected -0.5; pair 2: chosen -1, rejected +1
    loss, metrics = PREFERENCE_LOSSES[name](
        f64([-1.0, -3.0]), f64([-2.0, -1.0]), f64([-1.5, -2.0]), f64([-1.5, -2.0]), BETA
    )
    assert metrics["dpo/loss"].item() == loss.item()
    assert metrics["dpo/rewards/chosen"].item() == pytest.approx(BETA * (0.5 - 1.0) / 2)
    assert metrics["dpo/rewards/rejected"].item() == pytest.approx(BETA * (-0.5 + 1.0) / 2)
    assert metrics["dpo/rewards/margin"].item() == pytest.approx(BETA * (1.0 - 2.0) / 2)
    assert metrics["dpo/rewards/accuracy"].item() == 0.5


def test_rpo_chosen_nll_is_the_mean_per_token_nll_of_the_chosen():
    logps = f64([-6.0, -2.0]).requires_grad_()  # summed over 3 and 4 tokens
    loss, metrics = chosen_nll_loss(logps, f64([3.0, 4.0]))
    assert loss.item() == pytest.approx((6.0 / 3 + 2.0 / 4) / 2)  # 1.25
    loss.backward()
    assert logps.grad.tolist() == pytest.approx([-1 / 6, -1 / 8])  # -1 / (2 n_i)
    assert metrics["dpo/nll"].item() == loss.item()


# ---------------------------------------------------------------- language modelling
def test_lm_loss_matches_naive_mean_over_non_ignored_tokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1, -100, 4], [-100, 0, 2]])
    loss, metrics = lm_loss(logits, labels)
    terms = []
    for b in range(2):
        for t in range(3):
            if labels[b, t] != -100:
                row = logits[b, t].tolist()
                terms.append(math.log(sum(math.exp(v) for v in row)) - row[labels[b, t]])
    assert loss.item() == pytest.approx(sum(terms) / len(terms))
    assert metrics["lm/loss"].item() == pytest.approx(loss.item())
    assert lm_loss(logits, labels, normalizer=8)[0].item() == pytest.approx(sum(terms) / 8)


# ---------------------------------------------------------------- grad-accum invariance
def _policy(lp, old, extra, mask, normalizer):
    return ppo_policy_loss(lp, old, extra, mask, 0.2, normalizer)[0]


def _critic_free(lp, old, extra, mask, normalizer):
    return policy_gradient_loss(lp, old, extra[:, 0], mask, 0.2, normalizer, 0.05, old - 0.3)[0]


def _value(v, old, extra, mask, normalizer):
    return ppo_value_loss(v, old, extra, mask, 0.2, normalizer)[0]


@pytest.mark.parametrize("loss_fn", [_policy, _critic_free, _value])
def test_grad_accumulation_equals_one_big_batch(loss_fn):
    """8 micro-batches of 1 row with the global token count == 1 batch of 8 rows."""
    g = torch.Generator().manual_seed(0)
    B, T = 8, 6
    spans = [(0, 6), (2, 6), (0, 1), (1, 4), (3, 5), (0, 3), (5, 6), (1, 6)]
    mask = torch.zeros(B, T, dtype=torch.bool)
    for row, (start, end) in enumerate(spans):
        mask[row, start:end] = True
    old = -torch.rand(B, T, generator=g, dtype=torch.float64)
    extra = torch.randn(B, T, generator=g, dtype=torch.float64)  # advantages or returns
    params = (old + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_()
    normalizer = mask.sum()

    loss_fn(params, old, extra, mask, normalizer).backward()
    big_batch_grad = params.grad.clone()

    params.grad = None
    for row in range(B):
        rows = slice(row, row + 1)
        loss_fn(params[rows], old[rows], extra[rows], mask[rows], normalizer).backward()
    torch.testing.assert_close(params.grad, big_batch_grad)

    # the per-micro-batch mean does NOT match: the invariance above is not vacuous
    params.grad = None
    for row in range(B):
        rows = slice(row, row + 1)
        (loss_fn(params[rows], old[rows], extra[rows], mask[rows], None) / B).backward()
    assert not torch.allclose(params.grad, big_batch_grad)
