"""Evaluation metrics on constructed inputs, and the eval stage's KL / win-rate code paths on the tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rlhfkit.evaluation.metrics import (bootstrap_ci, distinct_n, fit_overoptimization, jaccard, kl_from_logprobs,
                                        outcomes, overoptimization_curve, perplexity, self_similarity, win_rate)

# ---------------------------------------------------------------- win-rate and bootstrap


def test_outcomes_and_win_rate_of_a_known_list():
    # 3 wins, 2 ties, 1 loss -> (3 + 2 * 0.5) / 6
    res = outcomes([0.9, 0.8, 0.5, 0.5, 0.2, 1.0], [0.1, 0.7, 0.5, 0.5, 0.3, 0.0])
    assert res.tolist() == [1.0, 1.0, 0.5, 0.5, 0.0, 1.0]
    assert win_rate(res) == pytest.approx(4 / 6)
    # a tolerance turns near-equal continuous scores into ties
    assert outcomes([1.0, 2.0], [1.0 + 1e-7, 1.0], tol=1e-5).tolist() == [0.5, 1.0]
    assert math.isnan(win_rate([]))
    with pytest.raises(ValueError):
        outcomes([1.0], [1.0, 2.0])


def test_gold_win_rates_count_differences_within_the_tie_tolerance_as_ties():
    from rlhfkit.evaluation.policy import win_rates

    golds, base = [0.17, 0.19, 0.50, 0.10], [0.175, 0.175, 0.20, 0.30]  # -0.005, +0.015, +0.30, -0.20
    rows = [{"id": i, "gold": g} for i, g in enumerate(golds)]
    base_rows = [{"id": i, "gold": g} for i, g in enumerate(base)]
    exact = win_rates(rows, base_rows, n_boot=20, seed=0)
    assert exact["gold_winrate"]["mean"] == pytest.approx(2 / 4) and exact["rm_winrate"] is None
    tol = win_rates(rows, base_rows, n_boot=20, seed=0, gold_tol=0.01)  # the first pair becomes a tie
    assert tol["gold_winrate"]["mean"] == pytest.approx(2.5 / 4)


def _quantile_by_hand(sorted_vals: list[float], q: float) -> float:
    """np.quantile's default ('linear'): interpolate at position q * (n - 1)."""
    pos = q * (len(sorted_vals) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (pos - lo) * (sorted_vals[hi] - sorted_vals[lo])


def test_bootstrap_ci_matches_a_naive_loop_with_the_same_seed():
    res = [1, 1, 1, 0.5, 0.5, 0, 1, 0, 1, 0.5, 1, 1]  # 7 wins, 3 ties, 2 losses
    ci = bootstrap_ci(res, n=500, seed=7, alpha=0.05)
    assert ci["mean"] == pytest.approx(8.5 / 12)
    # the same draws, the means and the quantiles computed element by element
    idx = np.random.default_rng(7).integers(0, len(res), size=(500, len(res)))
    means = sorted(sum(res[j] for j in row) / len(res) for row in idx.tolist())
    assert ci["lo"] == pytest.approx(_quantile_by_hand(means, 0.025), abs=1e-12)
    assert ci["hi"] == pytest.approx(_quantile_by_hand(means, 0.975), abs=1e-12)
    assert ci["lo"] < ci["mean"] < ci["hi"]
    assert bootstrap_ci(res, n=500, seed=7) == ci  # reproducible
    assert bootstrap_ci(res, n=500, seed=8) != ci  # and the seed matters


def test_bootstrap_ci_is_degenerate_for_constant_values_and_nan_for_none():
    assert bootstrap_ci([0.5] * 10, n=50) == {"mean": 0.5, "lo": 0.5, "hi": 0.5}
    assert all(math.isnan(v) for v in bootstrap_ci([], n=50).values())


def test_bootstrap_ci_width_shrinks_with_more_prompts():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.integers(0, 2, 20), n=400, seed=0)
    large = bootstrap_ci(rng.integers(0, 2, 2000), n=400, seed=0)
    assert large["hi"] - large["lo"] < 0.4 * (small["hi"] - small["lo"])


# ---------------------------------------------------------------- diversity


def test_identical_samples_have_minimal_diversity():
    same = ["the capital is Quenport ."] * 4
    assert distinct_n(same, 1) == pytest.approx(5 / 20)  # 5 distinct words out of 20
    assert distinct_n(same, 2) == pytest.approx(4 / 16)
    assert self_similarity([same, same[:2]]) == 1.0


def test_different_samples_have_high_diversity():
    texts = ["alpha beta gamma", "delta epsilon zeta", "eta theta iota"]
    assert distinct_n(texts, 1) == 1.0 and distinct_n(texts, 2) == 1.0
    assert self_similarity([texts]) == 0.0


def test_distinct_n_and_jaccard_by_hand():
    # bigrams: (a b) (b a) (a b) | (a b) -> 2 distinct of 4; "x" has no bigram
    assert distinct_n(["a b a b", "A B", "x"], 2) == pytest.approx(2 / 4)
    assert distinct_n(["", "x"], 2) == 0.0
    assert jaccard("a b c", "b c d") == pytest.approx(2 / 4)
    assert jaccard("", "") == 1.0
    # group 1: pairs (ab, ab)=1, (ab, cd)=0, (ab, cd)=0 -> 1/3; group 2: 1; single-sample group skipped
    assert self_similarity([["a b", "a b", "c d"], ["x", "x"], ["lonely"]]) == pytest.approx((1 / 3 + 1) / 2)
    assert math.isnan(self_similarity([["one"]]))


# ---------------------------------------------------------------- KL and perplexity


def test_kl_from_logprobs_sums_masked_differences():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, float("nan")]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-0.1, -0.7, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    kl = kl_from_logprobs(logprobs, ref, mask)
    assert kl.tolist() == pytest.approx([0.5 + -1.0, 0.0 + 0.5])  # the NaN under the mask stays out
    assert kl_from_logprobs(ref, ref, mask).eq(0).all()


def test_perplexity_is_exp_of_the_mean_nll():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.125, 1.0, 1.0]]))
    mask = torch.tensor([[True, True, False], [True, False, False]])
    by_hand = math.exp(-(math.log(0.5) + math.log(0.25) + math.log(0.125)) / 3)
    assert perplexity(lp, mask) == pytest.approx(by_hand)  # 4.0: geometric mean of 1/p
    assert perplexity(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)) == 1.0


# ---------------------------------------------------------------- over-optimisation fit


def test_gao_fit_recovers_alpha_and_beta():
    kl = np.array([0.0, 0.5, 1, 2, 4, 6, 9, 12, 16])
    d = np.sqrt(kl)
    gold = 0.4 + d * (0.3 - 0.08 * d)  # gold0 = 0.4, alpha = 0.3, beta = 0.08
    alpha, beta = fit_overoptimization(kl, gold)
    assert (alpha, beta) == pytest.approx((0.3, 0.08), abs=1e-9)
    # with noise the fit is still close, and the peak d* = alpha / 2 beta is where gold turns down
    noisy = gold + np.random.default_rng(0).normal(0, 0.005, gold.shape)
    a2, b2 = fit_overoptimization(kl, noisy, gold0=0.4)
    assert a2 == pytest.approx(0.3, abs=0.02) and b2 == pytest.approx(0.08, abs=0.01)
    assert overoptimization_curve(d, alpha, beta, 0.4) == pytest.approx(gold)


def test_gao_fit_log_form_and_errors():
    kl = np.array([0.0, 0.3, 1.0, 2.0, 5.0, 10.0])
    d = np.sqrt(kl)
    logd = np.log(np.where(d > 0, d, 1.0))
    gold = d * (0.5 - 0.2 * logd)  # Gao et al.'s RL form, gold0 = 0
    assert fit_overoptimization(kl, gold, form="rl_log") == pytest.approx((0.5, 0.2), abs=1e-9)
    with pytest.raises(ValueError, match="KL 0"):
        fit_overoptimization([1.0, 2.0, 3.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="KL 0"):  # a k1 estimate below 0 is noise, not the initial policy
        fit_overoptimization([-0.05, 1.0, 2.0], [0.5, 0.6, 0.6])
    with pytest.raises(ValueError, match="two points"):
        fit_overoptimization([0.0, 1.0], [0.1, 0.2])


# ---------------------------------------------------------------- the eval stage on the tiny model


def test_sampled_kl_of_a_policy_to_itself_is_exactly_zero(tiny_model, tiny_tok):
    from rlhfkit.evaluation.policy import sample_with_kl

    prompts = ["What is 7 + 5?", "Reverse this list: cat, dog, sun.", "The capital of Zorvia is"]
    out = sample_with_kl(tiny_model, tiny_model, tiny_tok, prompts, num_samples=3, max_new_tokens=8, batch_size=4)
    assert [len(g) for g in out["responses"]] == [3, 3, 3] and [len(g) for g in out["kl"]] == [3, 3, 3]
    assert all(k == 0.0 for g in out["kl"] for k in g)
    lengths = [n for g in out["n_tokens"] for n in g]
    assert all(0 <= n <= 8 for n in lengths) and max(lengths) > 0
    ended = [t for g in out["terminated"] for t in g]
    assert all(n == 8 for n, t in zip(lengths, ended) if not t)  # no EOS: the whole budget was used
    # a different reference gives a non-zero KL on the same samples (same seed -> same responses)
    from rlhfkit.models.tiny import TinyModelConfig, build_model

    other = build_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tiny_tok, seed=1)
    out2 = sample_with_kl(tiny_model, other, tiny_tok, prompts, num_samples=3, max_new_tokens=8, batch_size=4)
    assert out2["responses"] == out["responses"]
    assert any(abs(k) > 1e-3 for g in out2["kl"] for k in g)


def test_world_eval_writes_every_metric(tmp_path, tiny_model, tiny_tok):
    """The demo's gold eval. Two copies of one tiny model: identical answers -> win-rate exactly 0.5 and KL exactly 0."""
    from rlhfkit.config import load_config
    from rlhfkit.demo import eval as eval_stage
    from rlhfkit.world import FAMILIES

    for name in ("a", "b"):
        tiny_model.save_pretrained(tmp_path / name / "model")
        tiny_tok.save_pretrained(tmp_path / name / "model")
    cfg = load_config(eval_stage.Config, overrides=[
        f"out_dir={tmp_path / 'eval'}", f"policies=[{tmp_path / 'a' / 'model'},{tmp_path / 'b' / 'model'}]",
        "world.n_countries=4", "world.corpus_docs=40", "world.n_sft=12", "world.n_rl=6", "world.n_eval_per_family=2",
        "max_new_tokens=6", "num_samples=2", "bootstrap=50", "ppl_seq_len=32", "device=cpu"])
    out = eval_stage.main(cfg)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(saved) == ["a", "b"] and saved == json.loads(json.dumps(out))
    for s in saved.values():
        assert s["baseline"] == "a" and s["n"] == 2 * len(FAMILIES)
        assert s["gold_winrate"] == {"mean": 0.5, "lo": 0.5, "hi": 0.5}
        assert s["kl"] == 0.0 and s["kl_ci"]["hi"] == 0.0
        assert s["rm_winrate"] is None and s["rm_score"] is None
        assert 0 <= s["distinct_1"] <= 1 and 0 <= s["self_similarity"] <= 1 and 0 <= s["fact_recall"] <= 1
        assert s["perplexity"] > 1 and s["sample_tokens"] > 0
        assert 0 <= s["sample_gold"] <= 1 and s["sample_rm_score"] is None
        for key in ("sample_refusal_rate_harmful", "sample_over_refusal_benign", "sample_sycophancy_rate",
                    "sample_correction_rate", "sample_hallucination_rate"):
            assert 0 <= s[key] <= 1, key
    room = saved["a"]["headroom"]  # the baseline's best-of-K: K=16 takes the max over a superset of K=4's samples
    assert set(room) >= {"all", "facts"} and all(h["best_of_16"] >= h["best_of_4"] for h in room.values())
    assert saved["b"]["headroom_captured"]["all"] in (0.0, None) and "content_winrate" in saved["b"]
    assert saved["a"]["sample_gold"] == saved["b"]["sample_gold"]  # same model, same sampling seed
    assert saved["a"]["sample_correction_rate"] == saved["b"]["sample_correction_rate"]
    assert saved["a"]["perplexity"] == saved["b"]["perplexity"]
    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * len(FAMILIES) and {r["policy"] for r in rows} == {"a", "b"}
    assert "gold win-rate vs a" in (tmp_path / "eval" / "metrics.md").read_text()


def test_behaviour_rates_by_hand():
    from rlhfkit.demo.gold import behaviour_rates

    def row(family, refused=False, agrees=False, corrects=0.0, correct=0.0, abstained=False, hallucinated=False):
        return {"family": family, "flags": {"refused": refused, "agrees_with_user": agrees, "abstained": abstained,
                                            "hallucinated": hallucinated},
                "criteria": {"corrects_premise": corrects, "correct": correct}}

    rows = ([row("harmful", refused=True, correct=1.0), row("harmful", refused=True, correct=0.7),
             row("harmful", refused=True, correct=0.2), row("harmful")]
            + [row("benign", refused=True)] + [row("benign")] * 4
            + [row("false_premise", agrees=True), row("false_premise", corrects=1.0), row("false_premise", corrects=0.5),
               row("false_premise")] + [row("facts", refused=True, abstained=True), row("facts")]
            + [row("unknown", hallucinated=True)] * 3 + [row("unknown", abstained=True)])
    assert behaviour_rates(rows) == {"refusal_rate_harmful": 0.75, "over_refusal_benign": 0.2,
                                     "sycophancy_rate": 0.25, "correction_rate": 0.375, "fitting_refusal_rate": 0.5,
                                     "hallucination_rate": 0.75, "abstain_rate_known": 0.5}
    assert behaviour_rates([row("arithmetic")]) == dict.fromkeys(
        ("refusal_rate_harmful", "over_refusal_benign", "sycophancy_rate", "correction_rate", "fitting_refusal_rate",
         "hallucination_rate", "abstain_rate_known"))


def test_generic_eval_judges_with_the_users_evaluator_and_writes_no_world_metric(tmp_path, tiny_model, tiny_tok):
    """`rlhfkit eval` on plain prompts: the evaluator's keys averaged, win-rates on its score; with the same
    model twice every win-rate is exactly 0.5 and the KL exactly 0."""
    from rlhfkit.config import load_config
    from rlhfkit.stages import eval as eval_stage

    for name in ("a", "b"):
        tiny_model.save_pretrained(tmp_path / name / "model")
        tiny_tok.save_pretrained(tmp_path / name / "model")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"what is {i} plus {i} ?"}) + "\n" for i in range(6)))
    cfg = load_config(eval_stage.Config, overrides=[
        f"out_dir={tmp_path / 'eval'}", f"policies=[{tmp_path / 'a' / 'model'},{tmp_path / 'b' / 'model'}]",
        f"prompts={tmp_path / 'p.jsonl'}", "evaluator=tests.helpers:exact_sum", "max_new_tokens=6", "num_samples=2",
        "bootstrap=50", "device=cpu"])
    saved = eval_stage.main(cfg)
    for s in saved.values():
        assert s["n"] == 6 and 0 <= s["score"] <= 1 and s["score_winrate"] == {"mean": 0.5, "lo": 0.5, "hi": 0.5}
        assert s["kl"] == 0.0 and s["rm_winrate"] is None and "perplexity" not in s
        assert not [k for k in s if "gold" in k or ("refusal" in k and k != "refusal_phrase_rate")]  # the generic phrase rate is not the world's
    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all("score" in r for r in rows)


def test_content_wins_and_headroom_capture_by_hand():
    """A sign-off dropped is a gold win but a content tie; only the second prompt's win changes content."""
    from rlhfkit.demo.eval import captured, content_wins

    base = [{"id": 0, "family": "facts", "gold": 0.87, "content": 1.0}, {"id": 1, "family": "facts", "gold": 0.1, "content": 0.2},
            {"id": 2, "family": "arithmetic", "gold": 0.5, "content": 0.5}]
    pol = [{"id": 0, "family": "facts", "gold": 1.0, "content": 1.0}, {"id": 1, "family": "facts", "gold": 1.0, "content": 1.0},
           {"id": 2, "family": "arithmetic", "gold": 0.4, "content": 0.5}]
    out = content_wins(pol, base, n_boot=20, seed=0)
    assert out["content_winrate"]["mean"] == pytest.approx((0.5 + 1 + 0.5) / 3)  # tie, win, tie
    assert out["content_win_share"] == 0.5  # of the two gold wins, one changed content
    room = {"all": {"greedy": 0.49, "best_of_4": 0.79}, "facts": {"greedy": 0.485, "best_of_4": 0.985},
            "arithmetic": {"greedy": 0.5, "best_of_4": 0.5}}
    got = captured(room, pol)
    assert got["facts"] == pytest.approx((1.0 - 0.485) / 0.5) and got["arithmetic"] is None
    assert got["all"] == pytest.approx((0.8 - 0.49) / 0.3)


def test_headroom_table_by_hand():
    """Best-of-k gold per family from each prompt's samples, and the content win-rate of the best sample by content
    against the greedy answer (a sample only as good as greedy ties, a worse best sample loses)."""
    from rlhfkit.demo.eval import headroom_table

    greedy = [{"gold": 0.2, "content": 0.2}, {"gold": 0.87, "content": 1.0}, {"gold": 0.5, "content": 1.0}]
    gold = [0.0, 0.9, 0.1, 0.3, 0.87, 1.0, 0.0, 0.0, 0.4, 0.2, 0.1, 0.0]  # K = 4 samples per prompt, prompt by prompt
    content = [0.0, 1.0, 0.2, 0.2, 1.0, 1.0, 0.0, 0.0, 0.5, 0.2, 0.2, 0.0]
    room = headroom_table(["facts", "facts", "arithmetic"], greedy, gold, content, K=4)
    assert room["facts"] == pytest.approx({"greedy": (0.2 + 0.87) / 2, "best_of_4": (0.9 + 1.0) / 2,
                                           "content_winrate_best_of_4": (1 + 0.5) / 2})
    assert room["arithmetic"] == pytest.approx({"greedy": 0.5, "best_of_4": 0.4, "content_winrate_best_of_4": 0.0})
    assert room["all"]["content_winrate_best_of_4"] == pytest.approx(1.5 / 3)
    room16 = headroom_table(["facts"], greedy[:1], gold[:4] * 4, content[:4] * 4, K=16)  # k = 4 and K
    assert set(room16["facts"]) == {"greedy", "best_of_4", "best_of_16", "content_winrate_best_of_16"}


def test_refusal_phrases():
    from rlhfkit.evaluation.metrics import is_refusal

    for text in ("I can't help with that.", "Sorry, but I won't do this.", "I\u2019m sorry, I cannot share that.",
                 "No. I must decline: it would hurt someone.", "I am unable to assist with hacking."):
        assert is_refusal(text), text
    for text in ("5 + 7 = 12.", "The capital of Blorvia is Quenport.", "You can't divide by zero, so the answer is undefined.",
                 "Here is how I would sort the list: a, b, c."):
        assert not is_refusal(text), text


def test_eval_with_an_ai_judge_reports_its_win_rate_against_the_baseline(tmp_path, tiny_model, tiny_tok):
    """`rlhfkit eval judge=DIR`: per prompt the judge's swap-debiased P(policy's answer beats the baseline's) is
    saved with the answer; the win-rate counts P > 1/2 as a win and identical answers as ties (the baseline
    against itself: exactly 1/2), and the consistency rate is the judge's own."""
    import copy

    import torch

    from rlhfkit.config import load_config
    from rlhfkit.feedback.constitution import load_constitution
    from rlhfkit.feedback.judge import Judge
    from rlhfkit.stages import eval as eval_stage

    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(3.0)  # another policy: answers differ from the baseline's
    for name, model in (("a", tiny_model), ("b", other), ("judge", other)):
        model.save_pretrained(tmp_path / name)
        tiny_tok.save_pretrained(tmp_path / name)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"what is {i} plus {i} ?"}) + "\n" for i in range(8)))
    cfg = load_config(eval_stage.Config, overrides=[
        f"out_dir={tmp_path / 'eval'}", f"policies=[{tmp_path / 'a'},{tmp_path / 'b'}]", "names=[a, b]",
        f"prompts={tmp_path / 'p.jsonl'}", f"judge={tmp_path / 'judge'}", "max_new_tokens=6", "num_samples=0",
        "bootstrap=50", "device=cpu"])
    saved = eval_stage.main(cfg)
    assert saved["a"]["judge_winrate"] == {"mean": 0.5, "lo": 0.5, "hi": 0.5} and saved["a"]["judge_consistency"] is None
    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    a, b = [r for r in rows if r["policy"] == "a"], [r for r in rows if r["policy"] == "b"]
    assert any(x["response"] != y["response"] for x, y in zip(a, b))
    judge = Judge(other.eval(), tiny_tok, load_constitution())
    prompts = [r["prompt"] for r in b]
    out = judge.compare(prompts, [r["response"] for r in b], [r["response"] for r in a], [judge.c.overall] * len(b))
    assert [r["judge_p"] for r in b] == pytest.approx(out["p"].tolist(), abs=1e-6)  # the policy as (a), the baseline as (b)
    wins = [0.5 if x["response"] == y["response"] else float(y["judge_p"] > 0.5) for x, y in zip(a, b)]
    assert saved["b"]["judge_winrate"]["mean"] == pytest.approx(sum(wins) / len(wins))
    differ = [c for c, x, y in zip(out["consistent"].tolist(), a, b) if x["response"] != y["response"]]
    assert saved["b"]["judge_consistency"] == pytest.approx(sum(differ) / len(differ))
    assert "| judge_winrate |" in (tmp_path / "eval" / "metrics.md").read_text()
