"""The world's Constitutional AI supervised stage (issue 21), in the paper's setting: a helpful-only policy
(demonstrations that comply with harmful requests) that complies where SFT refuses; critique/revision chains
written for training prompts only, never (in demo_ai) for a prompt the `cai` stage revises, rendered token for
token as `rlhfkit cai` renders its conversations at run time; a tiny critic, the helpful-only model taught by
them, that critiques in the taught form when `cai` asks it."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch

from rlhfkit.data.chat import render_examples, render_prompt, render_turn
from rlhfkit.data.loaders import load_sft
from rlhfkit.feedback.constitution import load_constitution
from rlhfkit.world import WorldConfig, build_world
from rlhfkit.world.critiques import FAMILIES, KINDS, PRINCIPLES, YES, comply, helpful_only_demos, make_chains
from rlhfkit.world.gold import complies
from rlhfkit.world.reviews import CONSTITUTION
from tests.helpers import WORLD_ARGS


@pytest.fixture(scope="module")
def tiny_world():
    return build_world(WorldConfig(**WORLD_ARGS))


def test_chains_are_for_red_team_training_prompts_with_the_ideal_revision(tiny_world):
    chains = make_chains(tiny_world, 300, seed=1)
    training = {p.id: p for split in ("sft", "rl") for p in tiny_world.prompts(split)}
    held_out = {p.text for p in tiny_world.prompts("eval")}
    assert len(chains) == 300
    for c in chains:
        p = training[c["source"]]
        assert p.text == c["question"] not in held_out and p.family == c["family"] in FAMILIES
        assert c["revision"] == tiny_world.ideal_response(p) and tiny_world.gold(p, c["revision"]).score == 1.0
        gold = tiny_world.gold(p, c["answer"])
        assert (gold.score == 1.0) == (c["kind"] == "ideal")  # every other kind is worse by gold
        # "Yes." exactly where the principle's flaw is there: help with harm, or refusing a harmless request
        assert c["critique"].startswith("Yes." if (c["family"], c["kind"]) in YES[c["principle"]] else "No.")
        if c["kind"] in ("complies", "refuses"):
            assert gold.flags["refused"] == (c["kind"] == "refuses")
        if c["kind"] in ("complies", "harmful"):  # harmful instructions, to a harmful request or to a look-alike
            assert complies(c["answer"]) and not gold.flags["refused"]
    first = {f: next(p for p in training.values() if p.family == f) for f in FAMILIES}
    assert {(c["family"], c["kind"]) for c in chains} == {(f, k) for f in FAMILIES for k in KINDS[f](tiny_world, first[f], random.Random(0))}
    assert {c["principle"] for c in chains} == set(PRINCIPLES)


def test_helpful_only_demos_comply_with_harm_and_are_the_sft_demos_otherwise(tiny_world):
    sft_demos, helpful = tiny_world.sft_demos(), helpful_only_demos(tiny_world)
    assert [p.id for p, _ in helpful] == [p.id for p, _ in sft_demos]
    harmful = [(p, r) for p, r in helpful if p.family == "harmful"]
    assert harmful and all(complies(r) and not tiny_world.gold(p, r).flags["refused"] and tiny_world.gold(p, r).score == 0
                           for p, r in harmful)
    assert all(r == s for (p, r), (_, s) in zip(helpful, sft_demos) if p.family != "harmful")
    # SFT's careful demonstrators refuse (its careless ones comply, as the helpful-only ones all do)
    refusals = [(p, s) for p, s in sft_demos if p.family == "harmful" and not complies(s)]
    assert refusals and all(tiny_world.gold(p, s).flags["refused"] for p, s in refusals)


def test_demo_ai_critic_is_never_taught_a_prompt_cai_revises(tmp_path, monkeypatch):
    """demo_ai's critic: chains of sft prompts and of the RL red-team texts held for it, none with the text of a
    prompt `cai` revises (the splits share texts: the request templates x actions are few), so every prompt `cai`
    revises is new to the critic. Without `unseen_revised` the sft prompts would repeat revised texts (the check
    can fail)."""
    from rlhfkit.config import parse_cli
    from rlhfkit.demo import cai_sl, pipeline

    monkeypatch.setattr(cai_sl.sft, "train", lambda cfg: None)  # the chains, not the training
    cfg = parse_cli(pipeline.Config, ["--config=demo_ai", f"--out_dir={tmp_path}"])  # the default world (the tiny one repeats no text)
    critic = cfg.cai_critic
    assert critic.splits == critic.parted == ["sft", "rl"] and critic.unseen_revised and 0 < critic.critic_share < 1
    world = build_world(critic.world)
    revised = cai_sl.red_team(world, critic.critic_share, critic.parted)[1]
    sources = {}
    for unseen in (True, False):
        critic.unseen_revised, critic.chains, critic.sft_demos = unseen, 200, 0
        cai_sl.train_critic(critic)
        sources[unseen] = [json.loads(line) for line in open(tmp_path / "cai_critic" / "chains_meta.jsonl")]
    training_ids = {p.id for s in ("sft", "rl") for p in world.prompts(s)}
    assert len(sources[True]) == 200 and all(c["source"] in training_ids for c in sources[True])
    assert {c["question"] for c in sources[True]}.isdisjoint(p.text for p in revised)
    assert {c["family"] for c in sources[True]} == set(FAMILIES)
    assert not {c["question"] for c in sources[False]}.isdisjoint(p.text for p in revised)


def test_critic_share_parts_red_team_texts_between_the_critic_and_cai(tmp_path, monkeypatch):
    """`cai_critic.critic_share`: a share of each topic's red-team texts in the `parted` splits is the critic's
    (chains of them, every harmful topic among them), `cai` revises only the rest; no text is on both sides, texts
    that recur (in one split or both) stay on one side, and 0 leaves every red-team prompt to `cai`."""
    from rlhfkit.config import parse_cli
    from rlhfkit.demo import cai_sl, pipeline

    monkeypatch.setattr(cai_sl.sft, "train", lambda cfg: None)
    class Stop(Exception):
        pass

    def stop(cfg):
        raise Stop

    monkeypatch.setattr(cai_sl.cai_stage, "main", stop)  # the prompts written, not the revising
    cfg = parse_cli(pipeline.Config, ["--config=demo_ai", f"--out_dir={tmp_path}", "--cai_critic.critic_share=0.5",
                                      "--cai_critic.parted=[sft,rl]", "--cai_critic.splits=[sft,rl]",
                                      "--cai_critic.chains=600", "--cai_critic.sft_demos=0"])
    assert cfg.cai.held_for_critic == 0.5 and cfg.cai.parted == ["sft", "rl"]  # wired from the critic's section
    world = build_world(cfg.world)
    red = [p for s in ("sft", "rl") for p in world.prompts(s) if p.family in FAMILIES]
    critics, revised = cai_sl.red_team(world, 0.5, ["sft", "rl"])
    assert sorted(p.id for p in critics + revised) == sorted(p.id for p in red) and critics and revised
    assert {p.text for p in critics}.isdisjoint(p.text for p in revised)
    assert cai_sl.red_team(world, 0.0, ["sft", "rl"]) == ([], red)
    rl_only = cai_sl.red_team(world, 0.5)  # the default: the RL split's alone
    assert {p.id for p in rl_only[0] + rl_only[1]} == {p.id for p in world.prompts("rl") if p.family in FAMILIES}
    cai_sl.train_critic(cfg.cai_critic)
    chains = [json.loads(line) for line in open(tmp_path / "cai_critic" / "chains_meta.jsonl")]
    asked = {c["question"] for c in chains}
    assert asked.isdisjoint(p.text for p in revised)
    topics = lambda ps: {p.meta["topic"] for p in ps if p.family == "harmful"}  # noqa: E731
    assert topics(p for p in critics if p.text in asked) == topics(red) == topics(revised)  # every topic on both sides
    with pytest.raises(Stop):
        cai_sl.revise(cfg.cai)
    written = [json.loads(line)["prompt"] for line in open(tmp_path / "cai" / "prompts.jsonl")]
    assert sorted(written) == sorted(p.text for p in revised for _ in range(cfg.cai.repeats))


def test_chain_rows_are_the_turns_cai_gives_the_model_at_run_time(tiny_world, tiny_tok, tmp_path, monkeypatch):
    """Run `rlhfkit cai` with a scripted model that answers, critiques and revises as a chain says: the
    conversations it is given are token for token the prompts of the chain's two SFT rows, and the rows'
    targets are the turns it wrote, rendered as SFT renders them."""
    from rlhfkit.stages import cai

    c = load_constitution(CONSTITUTION)
    for principle in PRINCIPLES:
        chains = [ch for ch in make_chains(tiny_world, 40, seed=2) if ch["principle"] == principle][:4]
        script = iter([[ch["answer"] for ch in chains], [ch["critique"] for ch in chains], [ch["revision"] for ch in chains]])
        seen = []

        def scripted(model, tok, conversations, **kwargs):
            seen.append(list(conversations))
            return [{"response": r, "terminated": True, "n_tokens": 1} for r in next(script)]

        monkeypatch.setattr(cai, "answer", scripted)
        monkeypatch.setattr(cai, "load_causal_lm", lambda path, device: (None, tiny_tok))
        prompts = tmp_path / f"{principle}.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": ch["question"]}) + "\n" for ch in chains))
        cai.main(cai.Config(model="unused", prompts=str(prompts), constitution=CONSTITUTION, principles=[principle],
                            out=str(tmp_path / f"{principle}_demos.jsonl"), chains=str(tmp_path / f"{principle}_chains.jsonl")))
        _, critique_convs, revision_convs = seen
        rows = tmp_path / f"{principle}_rows.jsonl"
        rows.write_text("".join(json.dumps(r) + "\n" for ch in chains for r in ch["rows"]))
        examples = load_sft(str(rows))
        rendered = render_examples(tiny_tok, [(e.prompt, e.completion) for e in examples], None, "test")
        for i, ch in enumerate(chains):
            for (ids, mask), conv, target in ((rendered[2 * i], critique_convs[i], ch["critique"]),
                                               (rendered[2 * i + 1], revision_convs[i], ch["revision"])):
                head = render_prompt(tiny_tok, conv)  # what `answer` feeds the model in `cai`
                assert ids == head + render_turn(tiny_tok, conv, target)
                assert mask == [False] * len(head) + [True] * (len(ids) - len(head))
        assert [m.content for m in critique_convs[0]][-1] == c.principle(principle).critique


@pytest.mark.slow  # trains the tiny model
def test_a_tiny_helpful_only_model_complies_and_its_critic_critiques_in_the_taught_form(tiny_runs, tmp_path):
    """sft_helpful -> cai_critic -> cai on the tiny fixtures. The helpful-only model, trained as SFT on
    demonstrations that comply with harmful requests, leans to complying over the ideal refusal (per-token logprob
    margin) by at least half a nat more than the SFT model on unseen harmful requests (over 1 nat in a try; the
    tiny model writes no fluent answer in these steps, so greedy answers would not tell). The critic, that model taught by chains of the RL split's red-team prompts, answers the principle's
    question first ("Yes." / "No.", which no demonstration does) when `cai` asks it at run time: the taught turns
    and the run-time turns are the same. The tiny model does not learn to revise in the steps a test can afford
    (in a try its revisions won 1 and lost 4 of 26 prompts); whether revisions beat the originals is measured at
    the default size (docs/results.md)."""
    from rlhfkit.demo import cai_sl
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.models.logprobs import scored_tokens, sequence_logprobs
    from rlhfkit.stages import sft

    world = WorldConfig(**WORLD_ARGS)
    tiny = dict(batch_size=16, eval_every=1000, sample_every=1000, ckpt_every=1000)
    helpful = cai_sl.HelpfulConfig(out_dir=str(tmp_path / "sft_helpful"), world=world, sft=sft.Config(
        model=str(tiny_runs / "pretrain" / "model"), data=str(tmp_path / "sft_helpful" / "data.jsonl"),
        out_dir=str(tmp_path / "sft_helpful"), epochs=5.0, lr=3e-3, **tiny))  # as the fixture's SFT model
    cai_sl.train_helpful(helpful)
    # The tiny model writes no fluent answer in these steps, so compare what it prefers: per token, the
    # logprob of complying minus that of the ideal refusal, on harmful requests it was not trained on.
    tw = build_world(world)
    harmful = [p for split in ("rl", "eval") for p in tw.prompts(split) if p.family == "harmful"]
    rng = random.Random(0)
    answers = [(comply(rng, p.meta["topic"]), tw.ideal_response(p)) for p in harmful]
    margin = {}
    for name in ("sft", "sft_helpful"):
        model, tok = load_causal_lm(str((tiny_runs if name == "sft" else tmp_path) / name / "model"), device="cpu")
        rows = [render_examples(tok, [(p.text, a) for p, a in zip(harmful, pair)], None, "test")
                for pair in zip(*answers)]  # [compliance rows, refusal rows]
        with torch.no_grad():
            lp = [sequence_logprobs(model, r, tok.pad_token_id) / torch.tensor([scored_tokens(x) for x in r]) for r in rows]
        margin[name] = (lp[0] - lp[1]).tolist()
    gap = [h - s for h, s in zip(margin["sft_helpful"], margin["sft"])]
    assert len(harmful) >= 8 and sum(gap) / len(gap) >= 0.5 and sum(g > 0 for g in gap) >= 0.9 * len(gap), margin

    critic = cai_sl.CriticConfig(out_dir=str(tmp_path / "cai_critic"), world=world, chains=64, sft_demos=0, splits=["rl"],
                                 sft=sft.Config(model=str(tmp_path / "sft_helpful" / "model"), data=str(tmp_path / "cai_critic" / "data.jsonl"),
                                                out_dir=str(tmp_path / "cai_critic"), epochs=4.0, lr=5e-3, warmup_steps=3,
                                                max_len=320, **tiny))
    cai_sl.train_critic(critic)
    revise = cai_sl.ReviseConfig(out_dir=str(tmp_path / "cai"), model=str(tmp_path / "cai_critic" / "model"), world=world)
    revise.cai.temperature, revise.cai.max_new_tokens = 0.0, 24
    m = cai_sl.revise(revise)
    chains = [json.loads(line) for line in (tmp_path / "cai" / "chains.jsonl").read_text().splitlines()]
    critiques = [c["rounds"][0]["critique"] for c in chains]
    assert len(chains) == m["prompts"] > 10 and {c["rounds"][0]["principle"] for c in chains} <= set(PRINCIPLES)
    assert sum(c.startswith(("Yes.", "No.")) for c in critiques) >= 0.8 * len(critiques), critiques
    o = m["revision_vs_original"]["all"]
    assert abs(o["win"] + o["tie"] + o["loss"] - 1) < 1e-9 and 0 <= m["critique_verdict_accuracy"] <= 1
    assert 0 <= m["compliance_harmful_revision"] <= 1 and 0 <= m["compliance_harmful_original"] <= 1


def test_cai_sl_stages_run_with_demo_ai_only():
    from rlhfkit.config import parse_cli
    from rlhfkit.demo import pipeline

    stages = ("sft_helpful", "cai_critic", "cai", "sft_cai")
    default = parse_cli(pipeline.Config, [])
    assert not set(stages) & set(default.enabled()) and "sft_cai" not in default.eval.names
    on = parse_cli(pipeline.Config, ["--config=demo_ai", "--out_dir=r"])
    assert [s for s in on.enabled() if s in stages] == list(stages) and {"sft_helpful", "sft_cai"} <= set(on.eval.names)
    assert on.cai.model == "r/cai_critic/model" and on.sft_cai.demos == "r/cai/demos.jsonl"
    # the helpful-only policy answers, the critic (from the pretrained model) critiques and revises; the helpful-only
    # policy is trained from the pretrained model exactly as the SFT model is, and so is the CAI-SL policy by default
    # (their own data and out_dir)
    assert on.cai.responder == "r/sft_helpful/model" and on.cai.helpful_answers and on.cai_critic.sft.model == "r/pretrain/model"
    assert on.sft_helpful.sft.model == on.sft_cai.sft.model == on.sft.model == "r/pretrain/model"
    assert on.sft_helpful.sft.data == "r/sft_helpful/data.jsonl" and on.sft_cai.sft.data == "r/sft_cai/data.jsonl"
    for name in ("sft_helpful", "sft_cai"):
        assert replace(on.stage(name).sft, data=on.sft.data, out_dir=on.sft.out_dir) == on.sft


@pytest.mark.parametrize("override, name", [("--cai_critic.critic_share=1.0", "critic_share"),
                                            ("--cai_critic.parted=[eval]", "parted"),
                                            ("--cai_critic.splits=[sft,eval]", "splits")])
def test_critic_section_rejects_eval_prompts_and_a_whole_share(tmp_path, override, name):
    """The critic's chains and `cai`'s revisions are of training prompts only, and a critic share of 1 would leave
    `cai` nothing: each fails at load time, naming the field."""
    from rlhfkit.config import ConfigError, parse_cli
    from rlhfkit.demo import pipeline

    with pytest.raises(ConfigError, match=name):
        parse_cli(pipeline.Config, ["--config=demo_ai", f"--out_dir={tmp_path}", override])


def test_helpful_only_sft_settings_come_from_the_sft_section(tmp_path):
    """The helpful-only policy is trained as `sft` says: a setting under `sft` reaches it, and one made under
    `sft_helpful.sft` alone (which the pipeline's copy would drop) fails at load time, naming the setting."""
    from rlhfkit.config import ConfigError, parse_cli
    from rlhfkit.demo import pipeline

    cfg = parse_cli(pipeline.Config, ["--config=demo_ai", f"--out_dir={tmp_path}", "--sft.lr=0.002"])
    assert cfg.sft_helpful.sft.lr == cfg.sft.lr == 0.002
    cfg.resolve()  # resolving again keeps the copy
    assert cfg.sft_helpful.sft.lr == 0.002
    with pytest.raises(ConfigError, match=r"sft_helpful\.sft.*'lr'"):
        parse_cli(pipeline.Config, ["--config=demo_ai", f"--out_dir={tmp_path}", "--sft_helpful.sft.lr=0.002"])
