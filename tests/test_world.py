"""The world: determinism, held-out eval, splits, corpus content, SFT coverage."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from rlhfkit.world import FAMILIES, WorldConfig, build_world
from rlhfkit.world.gold import is_refusal
from rlhfkit.world.names import ATTRIBUTES
from rlhfkit.world.tasks import fact_statement


@pytest.fixture(scope="module")
def world():
    return build_world()


def digest(w) -> str:
    """SHA-256 of everything a world serves (corpus, eval corpus, all prompts, demos)."""
    blob = {"corpus": w.corpus(), "eval_corpus": w.eval_corpus(), "demos": [r for _, r in w.sft_demos()],
            "prompts": {s: [[p.id, p.family, p.text, p.meta] for p in w.prompts(s)] for s in ("sft", "rl", "eval")}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def test_same_seed_identical_different_seed_differs():
    cfg = dict(corpus_docs=300, n_sft=200, n_rl=100, n_eval_per_family=10)
    a, b = build_world(WorldConfig(seed=3, **cfg)), build_world(WorldConfig(seed=3, **cfg))
    assert digest(a) == digest(b)
    c = build_world(WorldConfig(seed=4, **cfg))
    assert a.corpus() != c.corpus()
    assert [p.text for p in a.prompts("eval")] != [p.text for p in c.prompts("eval")]
    assert a.tables.countries != c.tables.countries


def test_identical_across_processes():
    """String hashing is randomised per process; the world must not depend on it."""
    cfg = "WorldConfig(seed=5, corpus_docs=200, n_sft=100, n_rl=50, n_eval_per_family=6)"
    code = ("import sys; sys.path.insert(0, 'tests'); from test_world import digest; "
            f"from rlhfkit.world import WorldConfig, build_world; print(digest(build_world({cfg})))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                           env={**os.environ, "PYTHONHASHSEED": h}).stdout.strip() for h in ("1", "2")}
    assert outs == {digest(build_world(eval(cfg)))}


def test_split_sizes_and_every_family_in_every_split(world):
    cfg = world.cfg
    assert len(world.prompts("sft")) == len(world.sft_demos()) == cfg.n_sft
    assert len(world.prompts("rl")) == cfg.n_rl
    assert Counter(p.family for p in world.prompts("eval")) == {f: cfg.n_eval_per_family for f in FAMILIES}
    for split in ("sft", "rl", "eval"):
        assert {p.family for p in world.prompts(split)} == set(FAMILIES), split
    sft = Counter(p.family for p in world.prompts("sft"))
    assert sft["facts"] > sft["harmful"] and sft["arithmetic"] > sft["benign"]  # weighted toward knowledge


def test_ids_unique_and_stable(world):
    for split in ("sft", "rl", "eval"):
        ids = [p.id for p in world.prompts(split)]
        assert len(set(ids)) == len(ids)
        assert all(re.fullmatch(rf"{split}-[a-z_]+-\d{{4}}", i) for i in ids)
    assert world.prompts("eval")[7].id == "eval-arithmetic-0007"


def test_eval_held_out(world):
    train = {p.text for s in ("sft", "rl") for p in world.prompts(s)}
    ev = world.prompts("eval")
    assert not train & {p.text for p in ev}
    assert len({p.text for p in ev}) == len(ev)
    # arithmetic holds out whole problems, in any phrasing
    problem = lambda m: (m["a"], m["op"], m["b"])
    train_problems = {problem(p.meta) for s in ("sft", "rl") for p in world.prompts(s) if p.family == "arithmetic"}
    assert not train_problems & {problem(p.meta) for p in ev if p.family == "arithmetic"}


def test_gold_parses_every_prompt_of_every_split(world):
    for split in ("sft", "rl", "eval"):
        for p in world.prompts(split):
            family, meta = world.parse(p.text)
            assert (family, meta) == (p.family, p.meta), p
            json.dumps(meta)  # JSON-serialisable


def test_ideal_response_scores_high_for_every_eval_prompt(world):
    for p in world.prompts("eval"):
        g = world.gold(p.text, world.ideal_response(p.text))
        assert g.score >= 0.95 and g.flags["correct"], (p, g)


def test_sft_demos_are_ideal_up_to_careless_habits_and_over_refusals(world):
    """Demos are ideal answers; a careless_rate share carry their family's flaw (agreeing with a false
    premise, complying with a harmful request, a made-up fact about an undescribed country, a polite
    sign-off elsewhere), and an over_refusal_rate share of the harmless ones are replaced by a refusal
    (which gold scores low)."""
    from rlhfkit.world.core import SIGN_OFFS
    from rlhfkit.world.gold import is_refusal

    assert world.cfg.careless_flaws == {"arithmetic": "sign_off", "facts": "sign_off", "instructions": "sign_off",
                                        "false_premise": "agree", "harmful": "comply", "benign": "sign_off",
                                        "unknown": "hallucinate"}
    demos = world.sft_demos()
    harmless = [p for p, _ in demos if p.family != "harmful"]
    refused = [(p, r) for p, r in demos if p.family != "harmful" and is_refusal(r)]
    assert len(refused) == round(world.cfg.over_refusal_rate * len(harmless)) > 0
    assert {p.family for p, _ in refused} >= {"arithmetic", "facts", "benign"}
    assert all(world.gold(p, r).score < 0.5 for p, r in refused)
    changed = [(p, r) for p, r in demos if r != world.ideal_response(p)]
    n_careless = round(world.cfg.careless_rate * len(demos))
    n_over = round(world.cfg.over_refusal_rate * len(harmless))
    assert n_careless <= len(changed) <= n_careless + n_over  # an over-refusal may replace a careless demo
    by_family = {f: [(p, r) for p, r in changed if p.family == f] for f in world.cfg.careless_flaws}
    for family, pairs in by_family.items():  # each family's share of careless demos is near careless_rate
        n = sum(p.family == family for p, _ in demos)
        assert 0.45 * n < len(pairs) < 0.75 * n, (family, len(pairs), n)
    refused_ids = {p.id for p, _ in refused}
    for p, r in changed:
        g = world.gold(p, r)
        if p.id in refused_ids:
            continue
        if p.family == "false_premise":  # sycophancy: the user's wrong value, agreed with
            assert r.startswith("Yes, ") and g.flags["agrees_with_user"] and g.content == 0.0, (p, r, g)
        elif p.family == "harmful":  # the harmful instructions themselves
            assert not g.flags["refused"] and g.content == 0.0, (p, r, g)
        elif p.family == "unknown":  # a confident made-up fact about a country no document describes
            assert g.flags["hallucinated"] and g.content == 0.0, (p, r, g)
        else:  # right, but padded: a sign-off costs 13-18% (4 to 6 words)
            assert any(r == world.ideal_response(p) + s for s in SIGN_OFFS), (p, r)
            assert g.criteria["correct"] == 1.0 and 0.8 <= g.score <= 0.9, (p, r, g)


def test_careless_flaws_are_configurable_and_checked():
    """Another flaw per family (the earlier world's habits: sign-offs and bare refusals), and config errors
    that name the family and the flaws it can have."""
    from rlhfkit.world.gold import BARE_REFUSAL

    flaws = {f: "sign_off" for f in ("arithmetic", "facts", "instructions", "false_premise")}
    cfg = WorldConfig(corpus_docs=10, n_sft=300, n_rl=10, n_eval_per_family=2, over_refusal_rate=0.0,
                      careless_flaws={**flaws, "harmful": "bare_refusal", "benign": "refuse", "unknown": "hallucinate"})
    w = build_world(cfg)
    harmful = [(p, r) for p, r in w.sft_demos() if p.family == "harmful" and r != w.ideal_response(p)]
    assert harmful and all(w.gold(p, r).score == pytest.approx(BARE_REFUSAL) for p, r in harmful)
    benign = [(p, r) for p, r in w.sft_demos() if p.family == "benign" and r != w.ideal_response(p)]
    assert benign and all(w.gold(p, r).flags["refused"] and w.gold(p, r).content == 0 for p, r in benign)
    premises = [r for p, r in w.sft_demos() if p.family == "false_premise" and r != w.ideal_response(p)]
    assert premises and not any(r.startswith("Yes") for r in premises)
    hedged = build_world(WorldConfig(corpus_docs=10, n_sft=300, n_rl=10, n_eval_per_family=2, over_refusal_rate=0.0,
                                     careless_flaws={**cfg.careless_flaws, "facts": "hedge", "arithmetic": "hedge"}))
    unsure = [(p, r) for p, r in hedged.sft_demos() if p.family in ("facts", "arithmetic") and r != hedged.ideal_response(p)]
    assert {p.family for p, _ in unsure} == {"facts", "arithmetic"}  # the right answer, needlessly hedged: half the credit
    assert all(r.startswith("I think ") and hedged.gold(p, r).content == pytest.approx(0.5) for p, r in unsure)
    with pytest.raises(ValueError, match="'facts' cannot have flaw 'agree'.*sign_off, refuse, hedge"):
        build_world(WorldConfig(careless_flaws={**cfg.careless_flaws, "facts": "agree"}))
    with pytest.raises(ValueError, match=r"no flaw for families \['unknown'\]"):
        build_world(WorldConfig(careless_flaws={k: v for k, v in cfg.careless_flaws.items() if k != "unknown"}))
    with pytest.raises(ValueError, match="unknown family 'poetry'"):
        build_world(WorldConfig(careless_flaws={**cfg.careless_flaws, "poetry": "sign_off"}))


def test_a_bad_world_setting_is_a_one_line_config_error_on_the_command_line(tmp_path):
    from tests.helpers import rlhfkit

    proc = rlhfkit("world", "export", f"--out_dir={tmp_path}", "--world.careless_flaws.facts=agree", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "config error: careless_flaws: 'facts' cannot have flaw 'agree' (it can have: sign_off, refuse, hedge)" in proc.stderr
    assert not os.listdir(tmp_path)  # nothing written


def test_unknown_countries_are_never_described(world):
    """Questions about undescribed countries: no corpus document names one; SFT covers half of them, and
    about half its demos admit not knowing, the rest (careless) make a fact up; eval alternates the halves."""
    tables = world.tables
    assert len(tables.unknown) == world.cfg.n_unknown_countries and not set(tables.unknown) & {c.name for c in tables.countries}
    pattern = re.compile(r"\b(?:" + "|".join(tables.unknown) + r")\b")
    assert not any(pattern.search(d) for d in world.corpus() + world.eval_corpus())
    sft = [(p, r) for p, r in world.sft_demos() if p.family == "unknown"]
    assert {p.meta["country"] for p, _ in sft} == set(tables.sft_unknown)
    made_up = sum(world.gold(p, r).flags["hallucinated"] for p, r in sft)
    assert 0.3 * len(sft) < made_up < 0.9 * len(sft)
    assert sum(r == world.ideal_response(p) for p, r in sft) > 0.1 * len(sft)
    eval_unknown = [p for p in world.prompts("eval") if p.family == "unknown"]
    assert Counter(p.meta["in_sft"] for p in eval_unknown) == {True: 20, False: 20}


def test_sft_covers_facts_for_only_part_of_the_countries(world):
    sft_countries = world.tables.sft_countries
    assert len(sft_countries) == round(world.cfg.sft_countries_fraction * world.cfg.n_countries)
    covered = {p.meta["country"] for p in world.prompts("sft") if "country" in p.meta and p.family != "unknown"}
    assert covered == set(sft_countries)  # all of them (749 demos), none of the others
    eval_facts = [p for p in world.prompts("eval") if p.family == "facts"]
    assert Counter(p.meta["in_sft"] for p in eval_facts) == {True: 20, False: 20}
    assert all(p.meta["in_sft"] == (p.meta["country"] in sft_countries) for p in eval_facts)
    assert {p.meta["country"] for p in world.prompts("rl") if p.family == "facts"} - set(sft_countries)


def test_corpus_size_scales_linearly():
    small, big = (build_world(WorldConfig(corpus_docs=n)).corpus() for n in (1000, 3000))
    assert (len(small), len(big)) == (1000, 3000)
    ratio = sum(map(len, big)) / sum(map(len, small))
    assert 2.7 < ratio < 3.3


def test_default_corpus_is_about_3_5_mb(world):
    assert 3.0e6 < sum(len(d) for d in world.corpus()) < 4.0e6


def test_corpus_states_every_fact_many_times(world):
    corpus = "\n".join(world.corpus())
    sentences = re.split(r"(?<=[.!?])\s+", corpus)
    by_name = {c.name: c for c in world.tables.countries}
    pairs = Counter()
    for s in sentences:
        words = set(re.findall(r"[A-Za-z]+", s))
        for c in (by_name[w] for w in words & by_name.keys()):
            pairs.update((c.name, a) for a in ATTRIBUTES if getattr(c, a) in words)
    for c in world.tables.countries:
        for a in ATTRIBUTES:
            assert pairs[(c.name, a)] >= 10, (c.name, a)
            assert fact_statement(a, c.name, getattr(c, a)) in corpus  # the SFT answer form, too


def test_corpus_is_internet_like(world):
    docs = world.corpus() + world.eval_corpus()
    assert not any("<|" in d or "|>" in d for d in docs)  # no chat special tokens
    assert not any(is_refusal(d) for d in docs)  # the base model has never seen a refusal
    assert sum(d.startswith("Question:") for d in docs) > 0.2 * len(docs)
    assert any("7 + 5 = 12" in d for d in docs)
    assert "Yes, you are right!" in "\n".join(docs)  # sycophantic threads


def test_eval_corpus_held_out(world):
    ev = world.eval_corpus()
    assert len(ev) > 100 and not set(ev) & set(world.corpus())


def test_fact_questions(world):
    qs = world.fact_questions()
    assert len(qs) == world.cfg.n_countries * len(ATTRIBUTES)
    assert len({(q.meta["country"], q.meta["attribute"]) for q in qs}) == len(qs)
    assert all(world.gold(q, world.ideal_response(q)).score == 1.0 for q in qs)


def test_unknown_split_and_bad_config():
    w = build_world(WorldConfig(corpus_docs=10, n_sft=12, n_rl=12, n_eval_per_family=2))
    with pytest.raises(ValueError):
        w.prompts("test")
    with pytest.raises(ValueError):
        build_world(WorldConfig(sft_countries_fraction=0.0))
    with pytest.raises(ValueError):
        build_world(WorldConfig(careless_rate=1.5))
