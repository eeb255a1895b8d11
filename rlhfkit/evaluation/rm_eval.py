"""How good is a reward model, from its own data: held-out accuracy, calibration, and the ceiling
its labellers set.

- held-out pairwise accuracy, next to the ceiling the labellers themselves set:
  how often one annotator's label agrees with the majority of the others on
  pairs that several annotators ranked (no model can predict individual labels
  better); absent when no pair has three or more labels;
- calibration: predicted P(A > B) = sigmoid(r_A - r_B) against observed frequency, by bin.
Helpers for diagnostics that need a notion of true quality (Spearman against a
reference score, per-group pair accuracy) live here too; the built-in demo uses
them with its gold function (rlhfkit.demo.rm_eval).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

import numpy as np
import torch

from rlhfkit.data.records import Comparison


def average_ranks(a) -> np.ndarray:
    """1-based ranks of `a`'s values, tied values sharing the mean of the ranks they span ([5, 7, 7, 9] -> [1, 2.5, 2.5, 4])."""
    a = np.asarray(a, dtype=float)
    order = np.argsort(a, kind="stable")
    s = a[order]
    starts = np.r_[True, s[1:] != s[:-1]]  # the first of each run of equal values
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(a)] - 1
    ranks = np.empty(len(a))
    ranks[order] = ((first + last) / 2 + 1)[np.cumsum(starts) - 1]
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson's correlation of the average ranks (ties share theirs); NaN when either
    side is constant (no order to compare)."""
    rx, ry = average_ranks(x), average_ranks(y)
    if len(rx) != len(ry):
        raise ValueError(f"spearman needs two sequences of one length, got {len(rx)} and {len(ry)}")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def calibration(delta: np.ndarray, n_bins: int = 10, seed: int = 0) -> dict[str, Any]:
    """Bins of predicted P(first > second) vs observed frequency; pairs are randomly flipped.

    `delta` is r_chosen - r_rejected per labelled pair. Returns bins and the
    expected calibration error (count-weighted |observed - predicted|).
    """
    rng = np.random.default_rng(seed)
    flip = rng.random(len(delta)) < 0.5
    p = 1 / (1 + np.exp(-np.where(flip, -delta, delta)))  # predicted P(first is chosen)
    y = (~flip).astype(float)  # first is chosen unless flipped
    edges = np.linspace(0, 1, n_bins + 1)
    bins, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (p >= lo) & (p < hi) if hi < 1 else (p >= lo)
        if sel.any():
            bins.append({"lo": float(lo), "hi": float(hi), "n": int(sel.sum()),
                         "predicted": float(p[sel].mean()), "observed": float(y[sel].mean())})
            ece += sel.sum() / len(p) * abs(p[sel].mean() - y[sel].mean())
    return {"bins": bins, "ece": float(ece)}


def agreement_ceiling(pairs: list[Comparison]) -> dict[str, float]:
    """How well one annotator's label is predicted by the others': the accuracy ceiling for a reward model.

    On pairs judged by >= 3 annotators, each label is compared with the majority
    of the OTHER annotators' labels (a tie among them counts half). Leaving the
    annotator out matters: a majority that includes the label itself agrees with
    it even on pure-noise pairs, which no model could match.
    """
    votes: dict[tuple, list[int]] = defaultdict(list)
    for p in pairs:
        a, b = sorted((p.chosen, p.rejected))
        if a != b:
            votes[(p.prompt, a, b)].append(1 if p.chosen == a else 0)
    agree, total = 0.0, 0
    for v in votes.values():
        if len(v) < 3:
            continue
        for i, x in enumerate(v):
            others = v[:i] + v[i + 1 :]
            yes = sum(others)
            agree += 0.5 if 2 * yes == len(others) else float(x == int(2 * yes > len(others)))
            total += 1
    return {"ceiling": agree / total if total else float("nan"), "ceiling_labels": total}



def within_prompt_spearman(scores: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Mean Spearman correlation of (n_prompts, k) scores with gold inside each prompt's row,
    over the rows where neither is constant (a row of equal golds has no order to recover)."""
    rhos = [spearman(s, g) for s, g in zip(scores, gold) if np.ptp(g) > 0 and np.ptp(s) > 0]
    return {"spearman_rm_gold_within_prompt": float(np.mean(rhos)) if rhos else float("nan"),
            "spearman_within_prompts": len(rhos)}


def pair_accuracy_by_family(scores: np.ndarray, gold: np.ndarray, families: list[str], min_gap: float = 0.05,
                            skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Per family: of the answer pairs to one prompt whose gold differs by more than `min_gap`, the
    fraction the RM orders as gold does (a score tie counts half). scores, gold: (n_prompts, k);
    families: n_prompts names (prompts named in `skip` are left out). What PPO can learn in a family
    is bounded by this."""
    hits, n = defaultdict(float), defaultdict(int)
    for s, g, f in zip(scores, gold, families):
        if f in skip:
            continue
        for i, j in combinations(range(len(g)), 2):
            if abs(g[i] - g[j]) > min_gap:
                n[f] += 1
                hits[f] += 0.5 * (1 + np.sign((s[i] - s[j]) * (g[i] - g[j])))  # right 1, score tie 0.5, wrong 0
    return {f: {"accuracy": hits[f] / n[f], "pairs": n[f]} for f in sorted(n)}


def evaluate_reward_model(model, tok, heldout: list[list[Comparison]], pairs: list[Comparison]) -> dict[str, Any]:
    """Held-out accuracy and calibration of `model` on the `heldout` rankings, and the agreement
    ceiling of all labelled `pairs`."""
    from rlhfkit.models.reward import reward_fn_from_model

    model.eval()
    score = reward_fn_from_model(model, tok)
    flat = [p for g in heldout for p in g]
    with torch.no_grad():
        delta = (score([p.prompt for p in flat], [p.chosen for p in flat])
                 - score([p.prompt for p in flat], [p.rejected for p in flat])).numpy()
    out: dict[str, Any] = {"heldout_accuracy": float((delta > 0).mean()), "calibration": calibration(delta)}
    ceiling = agreement_ceiling(pairs)
    if ceiling["ceiling_labels"]:
        out.update(ceiling)
    return out
