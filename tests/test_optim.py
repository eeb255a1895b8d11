"""Gradient clipping per parameter group (PPO clips its policy and its critic each on its own)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.optim import clip_grad_norms


def _params(*grads: list[float]) -> list[torch.nn.Parameter]:
    out = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(len(g)))
        p.grad = torch.tensor(g)
        out.append(p)
    return out


def test_separate_clipping_leaves_a_small_group_untouched():
    policy = _params([0.3, 0.4])  # norm 0.5, under the limit
    critic = _params([3.0, 4.0], [0.0, 12.0])  # norm 13
    norms = clip_grad_norms([policy, critic], max_norm=1.0, separately=True)
    assert norms == pytest.approx([0.5, 13.0])
    assert policy[0].grad.tolist() == pytest.approx([0.3, 0.4])  # not shrunk by the critic's gradient
    assert critic[0].grad.tolist() == pytest.approx([3 / 13, 4 / 13], rel=1e-5)
    assert critic[1].grad.tolist() == pytest.approx([0.0, 12 / 13], rel=1e-5)


def test_joint_clipping_equals_torch_over_the_union():
    policy, critic = _params([0.3, 0.4]), _params([3.0, 4.0], [0.0, 12.0])
    twin_policy, twin_critic = _params([0.3, 0.4]), _params([3.0, 4.0], [0.0, 12.0])
    norms = clip_grad_norms([policy, critic], max_norm=1.0, separately=False)
    total = torch.nn.utils.clip_grad_norm_(twin_policy + twin_critic, 1.0)
    assert norms == pytest.approx([0.5, 13.0])
    assert math.hypot(*norms) == pytest.approx(total.item())
    for a, b in zip(policy + critic, twin_policy + twin_critic):
        assert torch.allclose(a.grad, b.grad)
    assert policy[0].grad.tolist() == pytest.approx([0.3 / math.hypot(0.5, 13), 0.4 / math.hypot(0.5, 13)], rel=1e-5)


def test_parameters_without_gradients_are_skipped():
    p = _params([6.0, 8.0])
    frozen = torch.nn.Parameter(torch.ones(3))  # .grad is None
    assert clip_grad_norms([p + [frozen]], max_norm=5.0) == pytest.approx([10.0])
    assert p[0].grad.tolist() == pytest.approx([3.0, 4.0], rel=1e-5)
    assert frozen.grad is None
