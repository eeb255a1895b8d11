"""The simulated annotators: gold ordering without noise or bias, each bias and the noise measured against the
Bradley-Terry probability it implies, and `label_queue` writing through a real store (duplicates, idempotency).

For two responses, the Plackett-Luce draw of `rank` (utility + Gumbel(0, noise))
is Bradley-Terry: P(x ranked above y) = sigmoid((u_x - u_y) / noise). Each
bias test holds gold equal and checks the win rate against that formula,
computed here by hand from the utility in the module docstring.
"""

from __future__ import annotations

import json
import math
import random

import pytest

from rlhfkit.world.panel import Annotator, PanelConfig, acceptable, label_queue, rank
from rlhfkit.feedback.store import FeedbackStore
from rlhfkit.world import WorldConfig, build_world

WRONG = "I like turtles and long walks."  # off-task: gold 0 on every family
FILLER = " I hope this helps, and have a really wonderful day today!"  # correct but verbose: gold < 1
SHORT, LONG = "Hmm.", "Hmm, let me think about something else entirely for a while now."  # 1 and 12 words
AGREE, NEUTRAL = "Yes, you are right.", "Well, who can tell."  # 4 words each; only the first agrees
DRAWS = 40  # rankings per prompt in the win-rate tests (x 66 prompts: a standard error under 0.01)
NO_BIAS = dict(noise=0.0, verbosity=0.0, agreement=0.0, position=0.0)  # PanelConfig fields


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def annotator(quality: float = 6.0, noise: float = 0.0, verbosity: float = 0.0, agreement: float = 0.0,
              position: float = 0.0) -> Annotator:
    return Annotator("test", quality=quality, noise=noise, verbosity=verbosity, agreement=agreement, position=position)


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(corpus_docs=300, n_sft=240, n_rl=48, n_eval_per_family=3))


@pytest.fixture(scope="module")
def prompts(world):
    """66 prompts of every family (the RL and eval splits)."""
    return world.prompts("rl") + world.prompts("eval")


@pytest.fixture()
def store(tmp_path):
    return FeedbackStore(f"sqlite:///{tmp_path / 'sim.db'}")


def candidates(world, prompt) -> list[str]:
    """Hand-made responses of distinct gold: ideal (1) > ideal plus filler (< 1) > off-task (0)."""
    ideal = world.ideal_response(prompt)
    return [ideal, ideal + FILLER, WRONG]


def features(world, prompt, texts: list[str]) -> tuple[list[float], list[int], list[bool]]:
    """What an annotator sees of each response: (gold scores, word counts, agrees-with-user flags)."""
    golds = [world.gold(prompt, t) for t in texts]
    return [g.score for g in golds], [len(t.split()) for t in texts], [g.flags["agrees_with_user"] for g in golds]


def win_rate(a: Annotator, world, prompts, first: str, second: str, seed: int = 0) -> float:
    """Fraction of DRAWS rankings per prompt that put `first` above `second`, shown in a random order."""
    rng = random.Random(seed)
    wins = 0
    for p in prompts:
        golds, words, agrees = features(world, p, [first, second])
        assert golds[0] == golds[1]  # the bias tests hold gold equal
        for _ in range(DRAWS):
            shown = rng.sample([0, 1], 2)
            order = rank(a, [golds[i] for i in shown], [words[i] for i in shown], [agrees[i] for i in shown], rng)
            wins += shown[order[0]] == 0
    return wins / (DRAWS * len(prompts))


def rows_for(world, prompts) -> list[dict]:
    """A queue row per prompt with the candidates in a seeded random order (so the store's response ids, and
    with them the agreement coding x < y, do not follow gold)."""
    rng = random.Random(0)
    return [{"prompt": p.text, "responses": rng.sample(candidates(world, p), 3), "family": p.family} for p in prompts]


def exported(store: FeedbackStore, path) -> list[dict]:
    store.export_jsonl(str(path))
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- no noise, no bias: gold order


def test_noise_free_unbiased_annotator_ranks_by_gold(world, prompts):
    a, rng = annotator(), random.Random(0)
    for p in prompts:
        texts = candidates(world, p)
        rng.shuffle(texts)
        golds, words, agrees = features(world, p, texts)
        assert len(set(golds)) == 3, (p.text, golds)
        order = rank(a, golds, words, agrees, rng)
        assert [golds[i] for i in order] == sorted(golds, reverse=True), p.text


def test_noise_free_panel_writes_only_gold_consistent_pairs_to_the_store(world, prompts, store, tmp_path):
    counts = label_queue(store, world, rows_for(world, prompts), PanelConfig(**NO_BIAS, agreement_items=0.3))
    assert counts["items"] == len(prompts) and counts["judgements"] > len(prompts)  # some items by the whole panel
    pairs = exported(store, tmp_path / "pairs.jsonl")
    assert len(pairs) == 3 * counts["judgements"]  # a ranking of 3 gives 3 pairs
    gold = {(p.text, t): world.gold(p, t).score for p in prompts for t in candidates(world, p)}
    assert all(gold[(r["prompt"], r["chosen"])] > gold[(r["prompt"], r["rejected"])] for r in pairs)
    assert {r["source"] for r in pairs} == {"simulated"}
    assert store.stats()["agreement"]["alpha_nominal"] == 1.0  # the panel never disagrees


def test_noise_free_unbiased_annotator_marks_acceptable_iff_gold_above_threshold(world, prompts):
    a, rng = annotator(), random.Random(0)
    for p in prompts:
        texts = candidates(world, p)
        golds, words, agrees = features(world, p, texts)
        for threshold in (0.05, 0.5, 0.95):
            assert acceptable(a, golds, words, agrees, threshold, rng) == [g > threshold for g in golds], p.text


def test_panel_marks_travel_with_the_exported_pairs(world, prompts, store, tmp_path):
    label_queue(store, world, rows_for(world, prompts), PanelConfig(**NO_BIAS, accept_threshold=0.5))
    pairs = exported(store, tmp_path / "pairs.jsonl")
    gold = {(p.text, t): world.gold(p, t).score for p in prompts for t in candidates(world, p)}
    for r in pairs:
        assert r["meta"]["chosen_acceptable"] == (gold[(r["prompt"], r["chosen"])] > 0.5)
        assert r["meta"]["rejected_acceptable"] == (gold[(r["prompt"], r["rejected"])] > 0.5)
        assert "acceptable" not in r["meta"]  # the raw id list stays in the store
    assert {r["meta"]["rejected_acceptable"] for r in pairs} == {True, False}  # both kinds occur


def test_noisy_marks_disagree_with_gold_near_the_threshold(world, prompts):
    # an answer exactly at the threshold is a coin flip; one far above it is nearly always acceptable
    a, rng = annotator(noise=1.0), random.Random(0)
    flips = [acceptable(a, [0.5, 1.0], [10, 10], [False, False], 0.5, rng) for _ in range(2000)]
    assert 0.45 < sum(f[0] for f in flips) / 2000 < 0.55
    assert sum(f[1] for f in flips) / 2000 > 0.95


# ---------------------------------------------------------------- biases, at equal gold


def test_verbosity_bias_makes_the_longer_answer_win(world, prompts):
    # u_long - u_short = verbosity * (log(1 + 12) - log(1 + 1)); noise 1.
    expected = sigmoid(1.0 * (math.log(13) - math.log(2)))  # 0.867
    rate = win_rate(annotator(noise=1.0, verbosity=1.0), world, prompts, LONG, SHORT)
    assert rate == pytest.approx(expected, abs=0.03)
    assert win_rate(annotator(noise=1.0), world, prompts, LONG, SHORT) == pytest.approx(0.5, abs=0.03)


def test_agreement_bias_makes_the_agreeing_answer_win(world, prompts):
    assert features(world, prompts[0], [AGREE, NEUTRAL])[2] == [True, False]
    expected = sigmoid(1.0)  # u_agree - u_neutral = agreement; noise 1 -> 0.731
    rate = win_rate(annotator(noise=1.0, agreement=1.0), world, prompts, AGREE, NEUTRAL)
    assert rate == pytest.approx(expected, abs=0.03)


def test_position_bias_makes_the_first_shown_answer_win(world, prompts):
    # Two responses of equal gold, length and agreement: u_first - u_second = position * (1 - 0) / (K - 1).
    a, rng = annotator(noise=1.0, position=1.0), random.Random(0)
    golds, words, agrees = features(world, prompts[0], [SHORT, SHORT])
    first = sum(rank(a, golds, words, agrees, rng)[0] == 0 for _ in range(DRAWS * len(prompts)))
    assert first / (DRAWS * len(prompts)) == pytest.approx(sigmoid(1.0), abs=0.03)
    assert win_rate(annotator(noise=1.0), world, prompts, AGREE, NEUTRAL) == pytest.approx(0.5, abs=0.03)


# ---------------------------------------------------------------- noise


def test_noise_makes_rankings_disagree_with_gold(world, prompts):
    """Ideal vs ideal + filler: P(ideal first) = sigmoid(quality * (gold_ideal - gold_verbose) / noise)."""
    rng = random.Random(0)
    for noise in (0.0, 1.0):
        a, right, expected = annotator(noise=noise), 0, 0.0
        for p in prompts:
            texts = candidates(world, p)[:2]
            golds, words, agrees = features(world, p, texts)
            expected += 1.0 if noise == 0 else sigmoid(6.0 * (golds[0] - golds[1]) / noise)
            right += sum(rank(a, golds, words, agrees, rng)[0] == 0 for _ in range(DRAWS))
        rate, expected = right / (DRAWS * len(prompts)), expected / len(prompts)
        assert rate == pytest.approx(expected, abs=0.03), (noise, rate, expected)
        assert (rate == 1.0) == (noise == 0.0)


def test_noisy_panel_disagrees_in_the_store(world, prompts, store, tmp_path):
    noisy = PanelConfig(**{**NO_BIAS, "noise": 1.0}, agreement_items=1.0)  # every item by everyone
    counts = label_queue(store, world, rows_for(world, prompts), noisy)
    assert counts["judgements"] == noisy.n_annotators * len(prompts)
    gold = {(p.text, t): world.gold(p, t).score for p in prompts for t in candidates(world, p)}
    flipped = sum(gold[(r["prompt"], r["chosen"])] < gold[(r["prompt"], r["rejected"])]
                  for r in exported(store, tmp_path / "pairs.jsonl"))
    assert flipped > 0
    assert store.stats()["agreement"]["alpha_nominal"] < 0.95


# ---------------------------------------------------------------- queue handling


def test_duplicate_responses_are_merged_and_all_identical_rows_skipped(world, prompts, store, tmp_path):
    ideal = world.ideal_response(prompts[0])
    rows = [{"prompt": prompts[0].text, "responses": [ideal, WRONG, ideal, WRONG]},
            {"prompt": prompts[1].text, "responses": [WRONG, WRONG]}]
    counts = label_queue(store, world, rows, PanelConfig(**NO_BIAS, agreement_items=1.0))
    assert counts["items"] == 1 and counts["skipped_identical"] == 1 and counts["judgements"] == 5
    pairs = exported(store, tmp_path / "pairs.jsonl")
    assert len(pairs) == 5  # one pair per ranking of the 2 distinct responses
    assert all(r["chosen"] == ideal and r["rejected"] == WRONG for r in pairs)


def test_rerunning_label_queue_writes_nothing_new(world, prompts, store, tmp_path):
    rows, cfg = rows_for(world, prompts), PanelConfig()  # the default noisy, biased panel
    first = label_queue(store, world, rows, cfg)
    before = [tuple(r) for r in store.judgements()]
    assert label_queue(store, world, rows, cfg) == first
    assert [tuple(r) for r in store.judgements()] == before
    assert len(exported(store, tmp_path / "pairs.jsonl")) == 3 * first["judgements"]


def test_relabelling_a_longer_queue_adds_only_the_new_items(world, prompts, store):
    """Keys follow the item's content, not its position: a queue with one new row in front
    (a resumed or extended sampling run) labels only that row."""
    rows, cfg = rows_for(world, prompts), PanelConfig(overlap=2, agreement_items=0.0)
    label_queue(store, world, rows[1:], cfg)
    before = len(store.judgements())
    label_queue(store, world, rows, cfg)
    assert len(store.judgements()) == before + cfg.overlap
