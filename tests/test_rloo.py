"""RLOO/GRPO's policy-gradient epochs (rlhfkit/stages/rloo.py): the on-policy update without a separate forward."""

from __future__ import annotations

import copy

import torch

from rlhfkit import distributed
from rlhfkit.models import precision
from rlhfkit.optim import NonFiniteGuard
from rlhfkit.rollout import collect_experience
from rlhfkit.stages import rloo


def test_an_on_policy_update_takes_the_rollout_logprobs_from_its_own_forward(tiny_model, tiny_tok):
    """One epoch of one minibatch (ppo_epochs=1, minibatch = the batch): the rollout skips the no-grad policy forward
    and the update's own forward fills its logprobs (ratio exactly 1). The same logprobs, statistics and updated
    weights as with the no-grad forward, to the bit."""
    prompts = [p for p in ("What is 7 + 5?", "Reverse this list: cat, dog.") for _ in range(4)]
    cfg = rloo.GRPOConfig(prompts="unused", prompts_per_step=2, k=4, minibatch_size=8, micro_batch_size=4, ppo_epochs=1)
    d = distributed.init("cpu")

    def reward(prompts, responses, terminated, **_):
        return torch.tensor([-float(len(r)) for r in responses])

    runs = []
    for skip in (False, True):
        policy, ref = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model).eval()
        exp = collect_experience(policy, ref, tiny_tok, prompts, reward, max_new_tokens=10, temperature=cfg.temperature,
                                 generator=torch.Generator().manual_seed(0), policy_logprobs=not skip)
        assert (exp.logprobs is None) == skip
        advantages = rloo.ADVANTAGES[cfg.estimator](exp.scores, cfg.k)
        assert advantages.abs().sum() > 0  # a real update
        params = list(policy.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-2)
        guards = NonFiniteGuard(cfg.estimator), precision.Scaler("fp32", torch.device("cpu"))
        stats = rloo.pg_epochs(cfg, d, (0, list(range(8)), 8), policy, params, optimizer, guards, exp, advantages)
        runs.append((exp.logprobs, stats, [p.detach().clone() for p in params]))
    (logprobs, stats, weights), (filled, on_policy_stats, on_policy_weights) = runs
    assert torch.equal(filled, logprobs)
    assert on_policy_stats == stats and stats["ppo/policy/ratio_mean"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(weights, on_policy_weights))
    assert any(not torch.equal(a, b) for a, b in zip(weights, tiny_model.parameters()))  # the update moved the weights
