"""RLOO/GRPO's policy-gradient epochs (rlhfkit/stages/rloo.py): the on-policy update without a separate forward."""

from __future__ import annotations

import copy

import torch

from rlhfkit import distributed
from rlhfkit.models import precision
from rlhfkit.optim import NonFiniteGuard
from rlhfkit.rollout import collect_experience
from rlhfkit.stages import rloo


def test_an_on_policy_update_takes_the_rollout_logprobs_from_its_own_forward(tiny_model, tiny_tok, monkeypatch):
    """One epoch of one minibatch (ppo_epochs=1, minibatch = the batch): the rollout skips the no-grad policy forward
    and the update's own forward fills its logprobs (ratio exactly 1). The same logprobs, statistics and updated
    weights as with the no-grad forward (the one mixed precision runs), to the bit."""
    monkeypatch.setattr(precision, "decodes_exactly", lambda model: False)  # the forward, not the sampler's numbers
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


def test_rollout_logprobs_are_the_samplers_in_fp32_and_a_forwards_otherwise(tiny_model, tiny_tok, monkeypatch):
    """In fp32 the policy's rollout logprobs are the sampler's own: no forward runs, and they equal a no-grad
    forward's to float rounding. Without exact decoding (mixed precision) the forward computes them."""
    from rlhfkit import rollout

    prompts = ["What is 7 + 5?", "Reverse this list: cat, dog.", "Hi"]
    forwards = []
    real = rollout.response_logprobs
    monkeypatch.setattr(rollout, "response_logprobs", lambda model, *a, **k: forwards.append(model) or real(model, *a, **k))
    policy, ref = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model).eval()
    for temperature in (1.0, 0.7):
        forwards.clear()
        exp = collect_experience(policy, ref, tiny_tok, prompts, lambda p, r, t, **_: torch.zeros(len(p)), max_new_tokens=10,
                                 temperature=temperature, generator=torch.Generator().manual_seed(0))
        assert forwards == [ref]  # the reference's forward only
        monkeypatch.setattr(precision, "decodes_exactly", lambda model: False)
        recomputed = collect_experience(policy, ref, tiny_tok, prompts, lambda p, r, t, **_: torch.zeros(len(p)), max_new_tokens=10,
                                        temperature=temperature, generator=torch.Generator().manual_seed(0))
        monkeypatch.undo()
        monkeypatch.setattr(rollout, "response_logprobs", lambda model, *a, **k: forwards.append(model) or real(model, *a, **k))
        assert forwards == [ref, policy, ref]
        assert torch.equal(exp.input_ids, recomputed.input_ids) and exp.mask.sum() > 5
        assert torch.allclose(exp.logprobs, recomputed.logprobs, atol=1e-5)
        assert (exp.logprobs[~exp.mask] == 0).all() and (exp.logprobs[exp.mask] < 0).all()


def test_decodes_exactly_only_in_fp32_without_autocast(tiny_model):
    model = copy.deepcopy(tiny_model)
    assert precision.decodes_exactly(model)
    assert not precision.decodes_exactly(copy.deepcopy(tiny_model).to(torch.bfloat16))
    precision.prepare(model, "bf16-mixed", torch.device("cpu"))
    assert not precision.decodes_exactly(model)


def test_collect_experience_without_a_reference(tiny_model, tiny_tok):
    """beta 0 (GRPO's default in TRL): no reference model, no reference logprobs; the update runs without them."""
    cfg = rloo.GRPOConfig(prompts="unused", prompts_per_step=1, k=4, minibatch_size=4, micro_batch_size=4, ppo_epochs=1,
                          kl_coef=0.0)
    policy = copy.deepcopy(tiny_model)
    exp = collect_experience(policy, None, tiny_tok, ["What is 7 + 5?"] * 4, lambda p, r, t, **_: torch.arange(4.0),
                             max_new_tokens=8, temperature=1.0, generator=torch.Generator().manual_seed(0), policy_logprobs=False)
    assert exp.ref_logprobs is None and exp.logprobs is None
    params = list(policy.parameters())
    guards = NonFiniteGuard(cfg.estimator), precision.Scaler("fp32", torch.device("cpu"))
    stats = rloo.pg_epochs(cfg, distributed.init("cpu"), (0, list(range(4)), 4), policy, params,
                           torch.optim.AdamW(params, lr=1e-2), guards, exp, rloo.ADVANTAGES["grpo"](exp.scores, 4))
    assert stats["ppo/policy/ratio_mean"] == 1.0 and "objective/kl" not in stats
    assert any(not torch.equal(a, b) for a, b in zip(params, tiny_model.parameters()))
