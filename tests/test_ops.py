"""rlhfkit.ops: masked statistics, logprobs and entropy against hand values and naive loops."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.ops import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    shift_for_causal_lm,
)

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
MASK = torch.tensor([[True, True, False], [False, True, True]])  # selects 1, 2, 5, 6


def test_masked_sum_and_mean_by_hand():
    assert masked_sum(X, MASK).item() == 14.0
    assert masked_mean(X, MASK).item() == 3.5
    assert masked_sum(X, MASK, dim=1).tolist() == [3.0, 11.0]
    assert masked_mean(X, MASK, dim=1).tolist() == [1.5, 5.5]
    assert masked_mean(X, MASK, dim=0).tolist() == [1.0, 3.5, 6.0]


def test_masked_stats_ignore_nan_outside_mask():
    x = X.clone()
    x[~MASK] = float("nan")
    assert masked_mean(x, MASK).item() == 3.5
    assert masked_var(x, MASK).item() == pytest.approx(17.0 / 3.0)


def test_masked_mean_of_empty_mask_is_zero():
    assert masked_mean(X, torch.zeros_like(MASK)).item() == 0.0


def test_masked_var_by_hand():
    # deviations from 3.5: -2.5, -1.5, 1.5, 2.5 -> squares sum to 17
    assert masked_var(X, MASK, unbiased=False).item() == pytest.approx(17.0 / 4.0)
    assert masked_var(X, MASK, unbiased=True).item() == pytest.approx(17.0 / 3.0)


def test_masked_var_unbiased_needs_two_entries():
    one = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError):
        masked_var(X, one)
    assert masked_var(X, one, unbiased=False).item() == 0.0


def test_masked_whiten_by_hand():
    out = masked_whiten(X, MASK, eps=0.0)
    std = math.sqrt(17.0 / 3.0)
    expected = [[-2.5 / std, -1.5 / std, 0.0], [0.0, 1.5 / std, 2.5 / std]]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_moments(shift_mean):
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(4, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 7, generator=g) < 0.6
    out = masked_whiten(x, mask, shift_mean=shift_mean)
    expected_mean = 0.0 if shift_mean else masked_mean(x, mask).item()
    assert masked_mean(out, mask).item() == pytest.approx(expected_mean, abs=1e-10)
    assert masked_var(out, mask).item() == pytest.approx(1.0, rel=1e-6)
    assert (out[~mask] == 0).all()


def _naive_logprob(row: list[float], token: int, temperature: float) -> float:
    scaled = [v / temperature for v in row]
    top = max(scaled)
    return scaled[token] - top - math.log(sum(math.exp(v - top) for v in scaled))


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_logprobs_from_logits_matches_naive_loop(temperature):
    g = torch.Generator().manual_seed(1)
    B, T, V = 3, 5, 11
    logits = 4.0 * torch.randn(B, T, V, generator=g)
    tokens = torch.randint(V, (B, T), generator=g)
    out = logprobs_from_logits(logits, tokens, temperature)
    assert out.shape == (B, T) and out.dtype == torch.float32
    for b in range(B):
        for t in range(T):
            expected = _naive_logprob(logits[b, t].tolist(), int(tokens[b, t]), temperature)
            assert out[b, t].item() == pytest.approx(expected, abs=1e-5)


def test_logprobs_from_logits_bf16_and_gradient():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 7, generator=g).to(torch.bfloat16).requires_grad_()
    tokens = torch.randint(7, (2, 3), generator=g)
    out = logprobs_from_logits(logits, tokens)
    assert out.dtype == torch.float32
    out.sum().backward()
    # d log p_k / d z_j = 1[j == k] - p_j: the gradient sums to 0 over the vocabulary
    assert logits.grad.float().sum(-1).abs().max().item() < 1e-2


def test_logprobs_from_logits_rejects_zero_temperature():
    with pytest.raises(ValueError):
        logprobs_from_logits(torch.zeros(1, 1, 3), torch.zeros(1, 1, dtype=torch.long), 0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_entropy_of_uniform_logits_is_log_v(temperature):
    V = 13
    out = entropy_from_logits(torch.full((2, 4, V), 3.0), temperature)
    torch.testing.assert_close(out, torch.full((2, 4), math.log(V)))


def test_entropy_matches_naive_loop():
    g = torch.Generator().manual_seed(3)
    logits = 2.0 * torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    out = entropy_from_logits(logits, temperature=0.8)
    for b in range(2):
        for t in range(3):
            z = [v / 0.8 for v in logits[b, t].tolist()]
            total = sum(math.exp(v) for v in z)
            probs = [math.exp(v) / total for v in z]
            expected = -sum(p * math.log(p) for p in probs)
            assert out[b, t].item() == pytest.approx(expected, rel=1e-5)


def test_entropy_with_banned_tokens_is_finite_with_finite_grad():
    logits = torch.tensor([[[0.0, 0.0, float("-inf")]]], requires_grad=True)
    out = entropy_from_logits(logits)
    assert out.item() == pytest.approx(math.log(2))
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_shift_for_causal_lm_aligns_predictions():
    ids = torch.arange(10).view(2, 5)
    logits = torch.randn(2, 5, 7)
    shifted_logits, targets = shift_for_causal_lm(ids, logits)
    assert torch.equal(targets, ids[:, 1:])
    assert torch.equal(shifted_logits, logits[:, :-1])



def _whiten_on_rank(rank: int, port: int, path: str) -> None:
    import torch.distributed as dist

    from rlhfkit.distributed import Dist, global_sum
    from rlhfkit.ops import masked_whiten

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    x, mask = torch.load(f"{path}/batch.pt")
    d = Dist(rank, 2)
    for shift in (True, False):
        got = masked_whiten(x[rank::2], mask[rank::2], shift_mean=shift, total=lambda t: global_sum(t, d))
        torch.save(got, f"{path}/rank{rank}-{shift}.pt")
    dist.destroy_process_group()


def test_whitening_with_a_cross_rank_total_equals_whitening_the_whole_batch(tmp_path):
    """Two gloo ranks, each holding every other row, whiten with statistics summed over both: each gets its
    rows of the whole batch's whitening (advantage whitening under data parallelism)."""
    import torch.multiprocessing as mp

    from rlhfkit.ops import masked_whiten
    from tests.helpers import free_port

    torch.manual_seed(0)
    x, mask = torch.randn(6, 5), torch.rand(6, 5) > 0.3
    torch.save((x, mask), tmp_path / "batch.pt")
    mp.spawn(_whiten_on_rank, args=(free_port(), str(tmp_path)), nprocs=2)
    for shift in (True, False):
        whole = masked_whiten(x, mask, shift_mean=shift)
        for rank in (0, 1):
            assert torch.allclose(torch.load(tmp_path / f"rank{rank}-{shift}.pt"), whole[rank::2], atol=1e-6)
