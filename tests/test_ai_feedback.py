"""The world's AI-feedback path (issue 21): reviews written for training prompts only with gold's verdicts,
a judge that labels the queue from texts alone (gold sabotaged while it does), and `rlhfkit pipeline
--config=demo_ai` end to end at tiny size (source="ai" rows in the store, the comparison metrics, RLAIF PPO
evaluated and reported)."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

import pytest

from rlhfkit.feedback.constitution import load_constitution
from rlhfkit.world import WorldConfig, build_world
from rlhfkit.world.reviews import CONSTITUTION, MIN_GAP, make_reviews, sample_reviews
from tests.helpers import WORLD_ARGS, rlhfkit
from tests.test_pipeline import PPO, TINY, statuses


@pytest.fixture(scope="module")
def tiny_world():
    return build_world(WorldConfig(**WORLD_ARGS))


def test_reviews_cover_training_prompts_only_with_gold_verdicts(tiny_world):
    rows = make_reviews(tiny_world, 400, seed=3)
    training = {p.id: p.text for split in ("sft", "rl") for p in tiny_world.prompts(split)}
    held_out = {p.text for p in tiny_world.prompts("eval")}
    c = load_constitution(CONSTITUTION)
    assert len(rows) == 400
    for r in rows:
        assert training.get(r["source"]) == r["question"] and r["question"] not in held_out
        assert abs(r["gold_a"] - r["gold_b"]) > MIN_GAP
        # the verdict is gold's order, read back from the answers (not from the row's own gold fields)
        better = "A" if tiny_world.gold(r["question"], r["a"]).score > tiny_world.gold(r["question"], r["b"]).score else "B"
        assert r["label"] == better and r["completion"] == c.templates["verdict"] + better
        assert r["prompt"] == c.fill("compare", prompt=r["question"], principle=c.principle(r["principle"]).comparison,
                                     a=r["a"], b=r["b"])
    assert 0.4 < sum(r["label"] == "A" for r in rows) / len(rows) < 0.6  # the better answer is first in about half
    counts = Counter(r["family"] for r in rows)  # the families take turns, whatever the prompt mix
    assert set(counts) == {"arithmetic", "facts", "instructions", "harmful", "false_premise", "benign", "unknown"}
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert {r["principle"] for r in rows} == {p.name for p in c.principles}


def test_reviews_of_model_samples_pair_distinct_answers_by_gold_and_never_state_an_eval_sum(tiny_world):
    """sample_reviews: every pair of a prompt's distinct samples more than MIN_GAP apart by gold (with the sample's
    `terminated`) is a candidate; the verdict is gold's order; answers stating an eval equation are dropped; eval
    prompts are refused."""
    c = load_constitution(CONSTITUTION)
    sums = [p for p in tiny_world.prompts("sft") if p.family == "arithmetic"][:3]
    ev = next(p for p in tiny_world.prompts("eval") if p.family == "arithmetic")
    leaked = f"{ev.meta['a']} {ev.meta['op']} {ev.meta['b']} = {ev.meta['answer']}."  # an eval item's equation
    samples = []
    for p in sums:
        m = p.meta
        right, wrong = f"{m['a']} {m['op']} {m['b']} = {m['answer']}.", f"{m['a']} {m['op']} {m['b']} = {m['answer'] + 1}."
        # the right answer twice (one pair, not two), cut short once (terminated=False scores lower), and the leak
        samples.append((p, [(right, True), (right, True), (wrong, True), (leaked, True), (right + " And", False)]))
    rows = sample_reviews(tiny_world, samples, 100, seed=1)
    assert rows and all(leaked not in (r["a"], r["b"]) for r in rows)
    expected = 0
    for p, answers in samples:
        texts = {t: ok for t, ok in reversed(answers)}
        golds = [tiny_world.gold(p, t, ok).score for t, ok in texts.items() if t != leaked]
        expected += sum(abs(x - y) > MIN_GAP for i, x in enumerate(golds) for y in golds[i + 1:])
    assert len(rows) == expected  # n above the candidates: all of them, each once
    assert len({(r["source"], frozenset((r["a"], r["b"]))) for r in rows}) == len(rows)
    for r in rows:
        assert r["origin"] == "sample" and r["family"] == "arithmetic"
        assert r["label"] == ("A" if r["gold_a"] > r["gold_b"] else "B") and r["completion"] == c.templates["verdict"] + r["label"]
    assert len(sample_reviews(tiny_world, samples, 2, seed=1)) == 2
    with pytest.raises(ValueError, match="eval prompt"):
        sample_reviews(tiny_world, [(ev, [("1.", True), ("2.", True)])], 5)


def test_the_world_constitution_loads_and_its_labels_are_single_tokens_of_the_tiny_tokenizer(tiny_tok):
    from rlhfkit.feedback.judge import label_ids

    c = load_constitution(CONSTITUTION)
    assert {p.name for p in c.principles} == {"harmless", "honest", "concise", "not_evasive", "correct", "humble"}
    a, b = label_ids(tiny_tok, c.templates["verdict"], c.labels)
    assert a != b


def test_the_ai_path_is_off_by_default():
    from rlhfkit.config import parse_cli
    from rlhfkit.demo import pipeline

    default = parse_cli(pipeline.Config, [])
    assert not {"judge", "ai_label", "rm_ai", "ppo_ai"} & set(default.enabled())
    on = parse_cli(pipeline.Config, ["--config=demo_ai"])
    assert [s for s in on.enabled() if s in ("judge", "ai_label", "rm_ai", "ppo_ai")] == ["judge", "ai_label", "rm_ai", "ppo_ai"]
    assert on.ppo_cai.policy.endswith("sft_cai/model") and on.ppo_cai.reward_model.endswith("rm_cai/model")
    assert on.rm_cai.model.endswith("sft_cai/model") and on.rm_cai.data.endswith("cai_label/pairs.jsonl")
    assert on.ppo_ai.reward_model.endswith("rm_ai/model") and on.rm_ai.data.endswith("ai_label/pairs.jsonl")
    assert "ppo_ai" in on.eval.names and "ppo_ai" not in default.eval.names


def test_the_judge_labels_the_queue_from_texts_alone(tiny_runs, tmp_path, monkeypatch):
    """The labelling step runs with every way to gold sabotaged, and still writes source=ai judgements."""
    from rlhfkit.demo import ai_feedback, feedback
    from rlhfkit.world import core, gold

    fb = tmp_path / "feedback"
    feedback.main(feedback.Config(out_dir=str(fb), policy=str(tiny_runs / "sft" / "model"), limit=6, max_new_tokens=12,
                                  world=WorldConfig(**WORLD_ARGS)))

    def no_gold(*args, **kwargs):
        raise AssertionError("the judge's labelling read gold")

    monkeypatch.setattr(core.World, "gold", no_gold)
    monkeypatch.setattr(gold, "gold_from_meta", no_gold)
    monkeypatch.setattr(core, "gold_from_meta", no_gold)
    cfg = ai_feedback.LabelConfig(out_dir=str(tmp_path / "ai"), judge=str(tiny_runs / "sft" / "model"), feedback_dir=str(fb),
                                  world=WorldConfig(**WORLD_ARGS), batch_size=8)
    db, stats = ai_feedback.ai_judgements(cfg)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT source, judge, principle, prob FROM judgements WHERE source = 'ai'").fetchall()
        sim = con.execute("SELECT count(*) FROM judgements WHERE source = 'simulated'").fetchone()[0]
    assert rows and len(rows) == stats["pairs_judged"] and sim > 0  # the panel's rankings are in the copy too
    names = {p.name for p in load_constitution(CONSTITUTION).principles}
    assert all(j.endswith("sft/model") and p in names and 0 <= pr <= 1 for _, j, p, pr in rows)
    pairs = [json.loads(line) for line in open(tmp_path / "ai" / "pairs.jsonl")]
    assert pairs and {p["source"] for p in pairs} == {"ai"}


def test_pipeline_ai_path_end_to_end(tmp_path):
    out = tmp_path / "demo"
    ai = ("--config=demo_ai", "--judge.reviews=160", "--judge.sample_reviews=40", "--judge.sample_prompts=30", "--judge.sft.epochs=1", "--judge.sft.batch_size=16",
          "--judge.sft.eval_every=5", "--ai_label.heldout_samples=8", "--ai_label.max_new_tokens=16", "--rm_ai.epochs=1",
          "--rm_ai.eval_every=10", *(f"--ppo_ai.{a[2:]}" for a in PPO), "--cai_critic.chains=60", "--cai_critic.sft_demos=20",
          "--cai_critic.sft.epochs=1", "--cai_critic.sft.batch_size=16", "--cai_critic.sft.eval_every=5",
          "--cai.cai.max_new_tokens=16", "--sft_cai.sft_demos=20", "--sft_cai.sft.epochs=1", "--sft_cai.sft.batch_size=16",
          "--sft_cai.sft.eval_every=5", "--cai_label.max_new_tokens=16", "--rm_cai.epochs=1", "--rm_cai.eval_every=10",
          *(f"--ppo_cai.{a[2:]}" for a in PPO))
    proc = rlhfkit("pipeline", f"--out_dir={out}", *TINY, *ai)
    ran = statuses(proc.stdout)
    ai_stages = ["judge", "ai_label", "rm_ai", "ppo_ai", "sft_helpful", "cai_critic", "cai", "sft_cai", "cai_label", "rm_cai",
                 "ppo_cai"]
    assert [s for s in ran if s in ai_stages] == ai_stages
    assert set(ran.values()) == {"running"}
    origins = [json.loads(line)["origin"] for line in open(out / "judge" / "reviews_meta.jsonl")]
    assert origins.count("world") == 160 and 0 < origins.count("sample") <= 40  # the SFT model's own samples, reviewed

    with sqlite3.connect(out / "ai_label" / "feedback.db") as con:
        n_ai = con.execute("SELECT count(*) FROM judgements WHERE source = 'ai'").fetchone()[0]
    assert n_ai > 0
    m = json.loads((out / "ai_label" / "ai_metrics.json").read_text())
    h, q = m["heldout"], m["queue"]
    assert h["pairs"] > 0 and 0 <= h["judge_accuracy"] <= 1 and 0 <= h["panel_accuracy"] <= 1
    assert sum(v["pairs"] for v in h["by_family"].values()) == h["pairs"] == sum(v["pairs"] for v in h["by_principle"].values())
    assert 0 <= h["position_consistency"] <= 1 and h["judge_labels_per_second"] > 0
    assert q["ai_pairs"] > 0 and q["judge_labels_per_second"] > 0 and q["panel_labels_per_second"] > 0
    assert q["agreement_with_panel_majority"] is None or 0 <= q["agreement_with_panel_majority"] <= 1
    evaluated = json.loads((out / "eval" / "metrics.json").read_text())
    assert all("gold_winrate" in evaluated[p] for p in ("ppo_ai", "ppo", "sft_helpful", "sft_cai", "ppo_cai"))
    # RL-CAI's data: the judge's labels of sft_cai's red-team samples under harmlessness principles, and the panel's
    # pairs of every other family
    with sqlite3.connect(out / "cai_label" / "feedback.db") as con:
        principles = {p for (p,) in con.execute("SELECT principle FROM judgements WHERE source = 'ai'")}
    assert principles and principles <= {"harmless", "not_evasive"}
    mixed = [json.loads(line) for line in open(out / "cai_label" / "pairs.jsonl")]
    ai_fams = {p["meta"].get("family") for p in mixed if p["source"] == "ai"}
    panel_fams = {p["meta"]["family"] for p in mixed if p["source"] == "simulated"}
    assert {p["source"] for p in mixed} == {"ai", "simulated"} and not panel_fams & {"harmful", "benign"}
    queue = [json.loads(line) for line in open(out / "cai_label" / "queue.jsonl")]
    assert {q["family"] for q in queue} <= {"harmful", "benign"} and all(q["policy"].endswith("sft_cai/model") for q in queue)
    cm = json.loads((out / "cai_label" / "cai_label_metrics.json").read_text())
    assert cm["ai_pairs"] > 0 and cm["panel_pairs"] == len(mixed) - cm["ai_pairs"]
    assert ai_fams  # the exported AI pairs carry their item's family where the queue gave one
    cai = json.loads((out / "cai" / "cai_metrics.json").read_text())
    assert cai["prompts"] > 0 and abs(sum(cai["revision_vs_original"]["all"][k] for k in ("win", "tie", "loss")) - 1) < 1e-9
    report = (out / "report" / "report.html").read_text()
    assert 'id="ai-summary"' in report and 'id="ai-rlaif"' in report and 'id="ai-by_principle"' in report
    assert all(f'data-src="{s}/stage.json:seconds"' in report for s in ai_stages)
    assert 'id="ai-cai"' in report and 'id="ai-cai-policy"' in report and 'data-metric="sft_helpful.refusal_rate_harmful"' in report

    # Nothing changed: the AI stages are cached like every other.
    again = statuses(rlhfkit("pipeline", f"--out_dir={out}", *TINY, *ai).stdout)
    assert set(again.values()) == {"up to date, skipped"}
