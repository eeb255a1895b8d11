"""Pure evaluation metrics: win-rates with bootstrap CIs, diversity, KL, perplexity, over-optimisation.

Everything here is a function of plain numbers, strings or tensors: no models,
no files. The eval stage gathers the inputs; the report only displays outputs.

Conventions: a per-prompt *outcome* against a baseline is 1 (win), 0.5 (tie) or
0 (loss); text metrics split on whitespace after lowercasing (the world's
answers are short English sentences, so words are the natural unit and the
numbers do not depend on any model's tokenizer).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Callable, Sequence

import numpy as np
import torch

from rlhfkit.ops import masked_mean, masked_sum
from rlhfkit.rl import kl_k1

# ---------------------------------------------------------------- win-rates


def outcomes(scores: Sequence[float], baseline: Sequence[float], tol: float = 0.0) -> np.ndarray:
    """Per-prompt outcome of `scores` against `baseline` (same prompts, same order): (N,) floats.

    1 where scores > baseline + tol, 0 where scores < baseline - tol, 0.5 otherwise.
    `tol` absorbs float noise for continuous scores (the same answer scored in two
    batches can differ in the last bits); gold is exact, so it uses tol = 0.
    """
    a, b = np.asarray(scores, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"scores {a.shape} and baseline {b.shape} must cover the same prompts")
    return np.where(a > b + tol, 1.0, np.where(a < b - tol, 0.0, 0.5))


def win_rate(results: Sequence[float]) -> float:
    """Mean outcome: ties count half. NaN for no prompts."""
    r = np.asarray(results, dtype=float)
    return float(r.mean()) if r.size else float("nan")


def bootstrap_ci(values: Sequence[float], n: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Percentile bootstrap of the mean: `{"mean", "lo", "hi"}` with a (1 - alpha) interval.

    The n resamples (with replacement, size N each) are drawn at once as
    `default_rng(seed).integers(0, N, size=(n, N))`; the bounds are
    `np.quantile` (linear interpolation) of the n resampled means at alpha/2 and
    1 - alpha/2. Resampling prompts (not samples) is the honest unit: answers
    to one prompt are correlated. Empty input gives NaNs.
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan")}
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n, v.size))
    means = v[idx].mean(1)  # (n,)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi)}


# ---------------------------------------------------------------- diversity


def words(text: str) -> list[str]:
    return text.lower().split()


# Openings of a refusal in English assistant replies (a phrase match: a rough, model-free rate; a world
# with its own gold, like the demo's, measures refusals exactly).
REFUSAL_PHRASES = ("i can't", "i cannot", "i can not", "i won't", "i will not", "i'm sorry", "i am sorry", "sorry, but",
                   "i'm not able to", "i am not able to", "i'm unable to", "i am unable to", "i must decline",
                   "i can't help", "as an ai")


def is_refusal(text: str) -> bool:
    """Whether the first sentence of `text` reads as a refusal (a phrase from REFUSAL_PHRASES)."""
    first = text.strip().lower().replace("\u2019", "'")[:120]
    return any(first.startswith(p) or f" {p}" in first[:60] for p in REFUSAL_PHRASES)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / total n-grams over all `texts` (Li et al. 2016, "distinct-n").

    1.0 when no n-gram repeats anywhere; k identical texts give at most 1/k.
    Texts shorter than n contribute nothing; 0.0 when there is no n-gram at all.
    """
    grams = [tuple(w[i : i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def jaccard(a: str, b: str) -> float:
    """|A ∩ B| / |A ∪ B| of the two word sets; two empty texts are identical (1.0)."""
    sa, sb = set(words(a)), set(words(b))
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def self_similarity(groups: Sequence[Sequence[str]]) -> float:
    """Mean pairwise word-set Jaccard among the samples of one prompt, averaged over prompts.

    1.0 means every prompt's samples use the same words (mode collapse); groups
    with fewer than 2 samples are skipped; NaN if no group has a pair.
    """
    per_group = [np.mean([jaccard(a, b) for a, b in combinations(g, 2)]) for g in groups if len(g) >= 2]
    return float(np.mean(per_group)) if per_group else float("nan")


# ---------------------------------------------------------------- KL and perplexity


def kl_from_logprobs(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequence KL to the reference, k1 estimator: Σ_t mask·(log π − log π_ref), shape (B,).

    logprobs, ref_logprobs: (B, T) of the *sampled* response tokens under the
    policy and the reference (same temperature); mask: (B, T) bool, True on
    response tokens. Averaged over samples from π this estimates KL(π ‖ π_ref)
    in nats per sequence (the quantity PPO logs as `objective/kl`).
    """
    return masked_sum(kl_k1(logprobs, ref_logprobs), mask, dim=1)


def perplexity(logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """exp(mean negative logprob) over the masked tokens; logprobs, mask: same shape."""
    return math.exp(-masked_mean(logprobs.double(), mask).item())


# ---------------------------------------------------------------- over-optimisation

# d·g(d) multiplies −β in R(d) = d·(α − β·g(d)), d = √KL (Gao et al. 2022, arXiv:2210.10760).
# "bon" is the quadratic form the paper fits to best-of-n; "rl_log" is its RL form.
# The report uses "bon": it is well behaved for the d < 1 that short runs reach,
# where d·log d changes sign.
OVEROPT_FORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "bon": lambda d: d * d,
    "rl_log": lambda d: d * np.log(np.where(d > 0, d, 1.0)),
}


def initial_gold(kl: Sequence[float], gold: Sequence[float]) -> float:
    """Mean gold of the points at KL exactly 0 (the initial policy itself); ValueError if none.

    Only exact zeros count: a k1 estimate that dips below 0 late in training is noise
    around a small KL, not the initial policy.
    """
    k, g = np.asarray(kl, dtype=float), np.asarray(gold, dtype=float)
    if not (k == 0).any():
        raise ValueError("no point at KL 0, so the initial policy's gold is unknown (evaluate at step 0, or pass gold0)")
    return float(g[k == 0].mean())


def fit_overoptimization(kl: Sequence[float], gold: Sequence[float], gold0: float | None = None,
                         form: str = "bon") -> tuple[float, float]:
    """Least-squares (α, β) of gold − gold0 = d·(α − β·g(d)) with d = √KL; see OVEROPT_FORMS.

    kl, gold: one point per evaluation of a policy along training (KL to the
    initial policy in nats, mean gold). As in the paper, R(0) = 0: the fit is of
    gold *relative to the initial policy*, whose gold `gold0` defaults to
    `initial_gold(kl, gold)`. Negative KL estimates (k1 can dip below 0) are
    clipped to 0 for d. Raises ValueError without a KL-0 point or gold0, or with
    fewer than two points at KL > 0.
    """
    gold0 = initial_gold(kl, gold) if gold0 is None else gold0
    k, g = np.clip(np.asarray(kl, dtype=float), 0.0, None), np.asarray(gold, dtype=float)
    if (k > 0).sum() < 2:
        raise ValueError("need at least two points with KL > 0 to fit alpha and beta")
    d = np.sqrt(k)
    X = np.stack([d, -OVEROPT_FORMS[form](d)], 1)  # (N, 2): columns multiply α and β
    alpha, beta = np.linalg.lstsq(X, g - gold0, rcond=None)[0]
    return float(alpha), float(beta)


def overoptimization_curve(d: np.ndarray, alpha: float, beta: float, gold0: float = 0.0, form: str = "bon") -> np.ndarray:
    """gold0 + d·(α − β·g(d)): the fitted gold at distances d = √KL."""
    d = np.asarray(d, dtype=float)
    return gold0 + alpha * d - beta * OVEROPT_FORMS[form](d)
