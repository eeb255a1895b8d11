"""Reward-model diagnostics on constructed inputs: the annotator-agreement ceiling, calibration bins
and the within-prompt rank correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhfkit.data.records import Comparison
from rlhfkit.evaluation.rm_eval import (agreement_ceiling, average_ranks, calibration, pair_accuracy_by_family, spearman,
                                        within_prompt_spearman)


def votes(prompt: str, a: str, b: str, for_a: int, for_b: int) -> list[Comparison]:
    return [Comparison(prompt, a, b)] * for_a + [Comparison(prompt, b, a)] * for_b


def test_agreement_ceiling_leaves_each_annotator_out():
    # 3 votes 2:1 -> the two majority voters each see others split 1:1 (half credit); the minority voter
    # sees a 2:0 majority against it (0). 4 votes 4:0 -> every label agrees with the others (1 each).
    pairs = votes("p", "a", "b", 2, 1) + votes("q", "c", "d", 4, 0) + votes("r", "e", "f", 1, 0)  # r: too few votes
    out = agreement_ceiling(pairs)
    assert out["ceiling_labels"] == 7
    assert out["ceiling"] == pytest.approx((0.5 + 0.5 + 0 + 4 * 1.0) / 7)


def test_calibration_of_a_perfectly_calibrated_model_is_close():
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 2, 20000)
    # Label each pair by a coin with P(chosen first) = sigmoid(delta); make the chosen side the winner.
    won = rng.random(len(delta)) < 1 / (1 + np.exp(-delta))
    out = calibration(np.where(won, delta, -delta))
    assert out["ece"] < 0.02
    assert sum(b["n"] for b in out["bins"]) == len(delta)
    overconfident = calibration(3 * np.where(won, delta, -delta))
    assert overconfident["ece"] > 0.1


def test_spearman_by_hand():
    # no ties: rank differences 0, 1, 1, 0 -> 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    assert spearman([10, 20, 30, 40], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties share their average rank: x ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4] -> 4.5 / sqrt(4.5 * 5)
    assert average_ranks([5, 7, 7, 9]).tolist() == [1, 2.5, 2.5, 4]
    assert average_ranks([3, 1, 3, 3, 0]).tolist() == [4, 2, 4, 4, 1]
    assert spearman([5, 7, 7, 9], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([1, 2, 3], [9, 4, 1]) == pytest.approx(-1.0)  # any monotone map: only the order counts
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # a constant side has no order
    with pytest.raises(ValueError, match="one length"):
        spearman([1, 2], [1, 2, 3])


def test_within_prompt_spearman_ignores_offsets_between_prompts():
    gold = np.array([[0.0, 0.5, 1.0, 0.2], [1.0, 0.0, 0.3, 0.6], [0.5, 0.5, 0.5, 0.5]])  # last row: no order
    scores = gold * 2 + np.array([[10.0], [-30.0], [0.0]])  # right order inside, arbitrary offsets across
    out = within_prompt_spearman(scores, gold)
    assert out == {"spearman_rm_gold_within_prompt": pytest.approx(1.0), "spearman_within_prompts": 2}
    reversed_ = within_prompt_spearman(-scores, gold)
    assert reversed_["spearman_rm_gold_within_prompt"] == pytest.approx(-1.0)
    assert math.isnan(within_prompt_spearman(scores[2:], gold[2:])["spearman_rm_gold_within_prompt"])


def test_pair_accuracy_by_family_by_hand():
    gold = np.array([[0.0, 0.5, 1.0], [0.2, 0.21, 0.9], [0.4, 0.8, 0.8]])
    scores = np.array([[1.0, 2.0, 0.0], [5.0, 0.0, 9.0], [3.0, 3.0, 1.0]])
    out = pair_accuracy_by_family(scores, gold, ["facts", "facts", "premise"])
    # facts row 0: (0,1) right, (0,2) wrong, (1,2) wrong; row 1: (0,1) gap 0.01 skipped, (0,2) right, (1,2) right
    # premise row 2: (0,1) score tie -> half, (0,2) wrong, (1,2) gold tie skipped
    assert out == {"facts": {"accuracy": pytest.approx(3 / 5), "pairs": 5}, "premise": {"accuracy": pytest.approx(0.25), "pairs": 2}}
    assert pair_accuracy_by_family(scores, gold, ["facts", "", "premise"], skip=("",)) == {
        "facts": {"accuracy": pytest.approx(1 / 3), "pairs": 3}, "premise": {"accuracy": pytest.approx(0.25), "pairs": 2}}


def test_probe_counts_where_the_rm_prefers_a_refusal_by_topic():
    """A stand-in RM that scores any refusal 1 and any other answer 0 on the 'password' topic only
    (and the opposite elsewhere): it prefers the refusal on exactly the password prompts."""
    import torch

    from rlhfkit.demo.rm_eval import REFUSALS, probe
    from rlhfkit.world import WorldConfig, build_world
    from rlhfkit.world.gold import is_refusal

    world = build_world(WorldConfig(n_sft=10, n_rl=200, n_eval_per_family=5, corpus_docs=10))
    benign = [p for p in world.prompts("rl") if p.family == "benign"]
    password = {p.text for p in benign if p.meta["topic"] == "password"}
    assert 0 < len(password) < len(benign)

    def score(prompts, responses):
        return torch.tensor([float(is_refusal(r) == (q in password)) for q, r in zip(prompts, responses)])

    out = probe(score, world, benign, lambda i, p, r: REFUSALS[i % len(REFUSALS)], by_topic=True)
    assert out["prefers_variant"] == pytest.approx(len(password) / len(benign))
    assert out["prefers_variant_by_topic"]["password"] == 1.0
    assert all(v == 0.0 for t, v in out["prefers_variant_by_topic"].items() if t != "password")
    # password: +1 each; elsewhere: -1 each
    assert out["mean_score_delta"] == pytest.approx((2 * len(password) - len(benign)) / len(benign))
    assert out["mean_gold_delta"] < -0.5  # gold: refusing a harmless request is worthless
    assert out["prompts"] == len(benign)
