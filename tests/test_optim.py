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


# ---------------------------------------------------------------- non-finite steps


def test_guard_skips_a_few_non_finite_steps_in_a_row_then_stops():
    from rlhfkit.optim import DivergedError, NonFiniteGuard

    guard = NonFiniteGuard("sft", max_skips=2)
    assert guard.ok(1, loss=torch.tensor(0.5), grad_norm=1.0) and guard.metrics() == {}
    assert not guard.ok(2, loss=torch.tensor(float("nan")), grad_norm=1.0)
    assert not guard.ok(3, loss=0.5, grad_norm=float("inf"))
    assert guard.ok(4, loss=0.5, grad_norm=1.0)  # a finite step ends the streak
    assert guard.metrics() == {"train/skipped_steps": 2}
    guard.finish()  # the run ended on an applied step
    assert not guard.ok(5, loss=float("nan")) and not guard.ok(6, loss=float("nan"))
    with pytest.raises(DivergedError, match="step 7.*3 steps in a row"):
        guard.ok(7, loss=float("nan"))
    late = NonFiniteGuard("rm", max_skips=3)
    late.ok(9, loss=float("nan"))
    with pytest.raises(DivergedError, match="last 1 step"):  # ended inside a streak: nothing may be saved
        late.finish()
    with pytest.raises(DivergedError, match="diverged at step 1 "):
        NonFiniteGuard("dpo", max_skips=0).ok(1, loss=float("nan"))


def _sft_with_one_bad_step(tmp_path, monkeypatch, skip_nonfinite: int):
    """SFT on a user's model where the second step's gradient is NaN (as after an overflow in one batch)."""
    from rlhfkit.config import load_config
    from rlhfkit.stages import sft
    from tests.test_user_model import user_data, user_model

    user_model(str(tmp_path / "base"))
    user_data(str(tmp_path))
    import rlhfkit.distributed

    real, calls = rlhfkit.distributed.clip_grad_norm_, []  # what every stage clips with

    def flaky(params, max_norm):
        params = list(params)
        calls.append(1)
        if len(calls) == 2:
            for p in params:
                p.grad.fill_(float("nan"))
        return real(params, max_norm)

    monkeypatch.setattr(rlhfkit.distributed, "clip_grad_norm_", flaky)
    monkeypatch.setenv("RLHFKIT_NO_TENSORBOARD", "1")
    cfg = load_config(sft.Config, None, [f"--model={tmp_path}/base", f"--data={tmp_path}/sft.jsonl", f"--out_dir={tmp_path}/sft",
                                         "--epochs=0.6", "--batch_size=16", "--ckpt_every=3", "--eval_every=0", "--sample_every=0",
                                         f"--skip_nonfinite={skip_nonfinite}", "--threads=1"])
    sft.train(cfg)
    return tmp_path / "sft"


def test_a_stage_skips_one_non_finite_step_and_applies_the_others(tmp_path, monkeypatch):
    import json

    out = _sft_with_one_bad_step(tmp_path, monkeypatch, skip_nonfinite=3)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl") if '"train/loss"' in line]
    assert len(rows) == 4 and "train/skipped_steps" not in rows[0]
    assert rows[1]["train/skipped_steps"] == 1 and rows[2]["train/skipped_steps"] == 1
    assert math.isnan(rows[1]["train/grad_norm"]) and math.isfinite(rows[2]["train/grad_norm"])
    state = torch.load(out / "checkpoints" / "step_000003" / "state.pt", weights_only=False)
    # AdamW counts the updates it applied: 2 of 3 steps (the NaN one changed no weight and no moment)
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {2.0}
    assert (out / "model" / "config.json").exists()
