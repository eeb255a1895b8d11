"""`rlhfkit sample` with forced prefixes (some of each prompt's K samples continue a given opening), and
the demo feedback stage's per-family K."""

from __future__ import annotations

import json

import pytest

from tests.helpers import WORLD, WORLD_ARGS, rlhfkit

PREFIX = "I can't help with that."


def rows(path):
    return [json.loads(line) for line in open(path)]


def test_prefixed_samples_continue_the_prefix_and_leave_the_free_samples_unchanged(tiny_runs, tmp_path):
    sft = f"{tiny_runs}/sft/model"
    common = (f"--model={sft}", f"--prompts={tiny_runs}/world/rl_prompts.jsonl", "--limit=12", "--max_new_tokens=16", "--seed=3")
    rlhfkit("sample", *common, "--num_samples=3", "--prefixed_samples=1", f"--out={tmp_path}/mixed.jsonl")
    rlhfkit("sample", *common, "--num_samples=2", f"--out={tmp_path}/free.jsonl")
    mixed, free = rows(tmp_path / "mixed.jsonl"), rows(tmp_path / "free.jsonl")
    assert len(mixed) == len(free) == 12
    for m, f in zip(mixed, free):
        assert len(m["responses"]) == len(m["terminated"]) == 3
        assert m["responses"][2].startswith(PREFIX)
        assert m["responses"][:2] == f["responses"]  # the same seed draws the same free samples
    assert not any(r.startswith(PREFIX) for f in free for r in f["responses"])  # so the check above can fail


def test_feedback_gives_families_their_own_k_and_the_prefixed_sample_to_some_families(tiny_runs, tmp_path):
    """The demo's queue: false premises 5 samples, facts 3, the rest 2; benign look-alikes get the forced
    refusal as their last candidate (K 3 there) and keep the same free samples as without it."""
    common = ("feedback", f"--policy={tiny_runs}/sft/model", "--limit=30", "--max_new_tokens=8", "--seed=1", *WORLD)
    rlhfkit(*common, f"--out_dir={tmp_path}/q", "--num_samples=2", "--prefixed_samples=1", "--prefixed_families=[benign]",
            "--num_samples_by_family={benign: 3, false_premise: 5, facts: 3}")
    rlhfkit(*common, f"--out_dir={tmp_path}/free", "--num_samples=2", "--num_samples_by_family={false_premise: 5, facts: 3}")
    got, free = rows(tmp_path / "q" / "queue.jsonl"), rows(tmp_path / "free" / "queue.jsonl")
    assert {r["family"] for r in got} >= {"benign", "harmful", "facts", "false_premise"}  # so every branch is checked
    k = {"false_premise": 5, "facts": 3, "benign": 3}
    for r, f in zip(got, free):
        assert len(r["responses"]) == len(r["terminated"]) == k.get(r["family"], 2)
        n_free = len(f["responses"])
        assert r["responses"][:n_free] == f["responses"]
        assert r["responses"][-1].startswith(PREFIX) == (r["family"] == "benign")
    assert (tmp_path / "q" / "pairs.jsonl").stat().st_size > 0


def test_a_family_can_have_its_own_forced_opening(tiny_runs, tmp_path):
    """`prefix_by_family`: facts get "I don't know" as their forced candidate while benign look-alikes keep the refusal;
    the free samples are those drawn without any prefix."""
    common = ("feedback", f"--policy={tiny_runs}/sft/model", "--limit=30", "--max_new_tokens=8", "--seed=1", *WORLD,
              "--num_samples=2")
    rlhfkit(*common, f"--out_dir={tmp_path}/q", "--num_samples_by_family={benign: 3, facts: 3}", "--prefixed_samples=1",
            "--prefixed_families=[benign, facts]", "--prefix_by_family={facts: I don't know}")
    rlhfkit(*common, f"--out_dir={tmp_path}/free")
    got, free = rows(tmp_path / "q" / "queue.jsonl"), rows(tmp_path / "free" / "queue.jsonl")
    assert {"benign", "facts"} <= {r["family"] for r in got}
    for r, f in zip(got, free):
        assert r["responses"][:2] == f["responses"]
        opening = {"facts": "I don't know", "benign": PREFIX}.get(r["family"])
        assert len(r["responses"]) == (3 if opening else 2)  # the other families: their free samples only
        assert opening is None or r["responses"][-1].startswith(opening)


def test_borrowed_samples_are_free_samples_of_a_pool_prompt_on_another_topic(tiny_runs, tmp_path):
    """`borrowed_samples`: benign and harmful prompts get, as their last candidate, a free sample drawn for another
    benign or harmful prompt on another topic; their own free samples are those drawn without borrowing."""
    from rlhfkit.world import WorldConfig, build_world

    common = ("feedback", f"--policy={tiny_runs}/sft/model", "--limit=48", "--max_new_tokens=8", "--seed=1", *WORLD)
    rlhfkit(*common, f"--out_dir={tmp_path}/q", "--num_samples=2", "--num_samples_by_family={benign: 3, harmful: 3}",
            "--borrowed_samples=1", "--borrowed_families=[benign, harmful]")
    rlhfkit(*common, f"--out_dir={tmp_path}/free", "--num_samples=2")
    got, free = rows(tmp_path / "q" / "queue.jsonl"), rows(tmp_path / "free" / "queue.jsonl")
    topic = {p.text: p.meta.get("topic") for p in build_world(WorldConfig(**WORLD_ARGS)).prompts("rl")}
    pool = [r for r in got if r["family"] in ("benign", "harmful")]
    assert len({topic[r["prompt"]] for r in pool}) >= 3 and len(pool) < len(got)  # so every check below can fail
    for r, f in zip(got, free):
        assert r["responses"][:2] == f["responses"]
        assert len(r["responses"]) == len(r["terminated"]) == (3 if r in pool else 2)
        if r in pool:
            sources = [o for o in pool if r["responses"][2] in o["responses"][:2] and topic[o["prompt"]] != topic[r["prompt"]]]
            assert sources  # another pool prompt's free sample, on another topic
            assert r["terminated"][2] in [o["terminated"][o["responses"].index(r["responses"][2])] for o in sources]


def test_borrowed_samples_must_leave_a_free_sample(tmp_path):
    proc = rlhfkit("feedback", f"--out_dir={tmp_path}", "--num_samples=3", "--prefixed_samples=1", "--borrowed_samples=2",
                   check=False)
    assert proc.returncode == 2 and "borrowed_samples (2) must leave at least one free sample" in proc.stderr
    proc = rlhfkit("feedback", f"--out_dir={tmp_path}", "--borrowed_samples=1", "--borrowed_families=[benin]", check=False)
    assert proc.returncode == 2 and "borrowed_families: unknown world families ['benin']" in proc.stderr


def test_unknown_family_names_are_a_config_error(tmp_path):
    proc = rlhfkit("feedback", f"--out_dir={tmp_path}", "--prefixed_samples=1", "--prefixed_families=[benin]", check=False)
    assert proc.returncode == 2 and "prefixed_families: unknown world families ['benin']" in proc.stderr
    proc = rlhfkit("feedback", f"--out_dir={tmp_path}", "--num_samples_by_family={fact: 3}", check=False)
    assert proc.returncode == 2 and "num_samples_by_family: unknown world families ['fact']" in proc.stderr
    proc = rlhfkit("feedback", f"--out_dir={tmp_path}", "--prefix_by_family={fact: nope}", check=False)
    assert proc.returncode == 2 and "prefix_by_family: unknown world families ['fact']" in proc.stderr
    proc = rlhfkit("feedback", f"--out_dir={tmp_path}", "--prefixed_samples=1", "--prefixed_families=[benign]",
                   "--prefix_by_family={facts: nope}", check=False)
    assert proc.returncode == 2 and "prefix_by_family: ['facts'] get no prefixed samples" in proc.stderr


@pytest.mark.parametrize("args,error", [
    (("--num_samples=4", "--prefixed_samples=3", "--num_samples_by_family={facts: 2}"), "num_samples_by_family.facts = 2"),
    (("--num_samples=2", "--prefixed_samples=3"), "prefixed_samples (3)"),
])
def test_more_prefixed_samples_than_samples_is_a_config_error(tmp_path, args, error):
    proc = rlhfkit("feedback", f"--out_dir={tmp_path}", *args, check=False)
    assert proc.returncode == 2 and error in proc.stderr
    proc = rlhfkit("sample", "--prompt=[hi]", "--num_samples=2", "--prefixed_samples=3", check=False)
    assert proc.returncode == 2 and "prefixed_samples (3)" in proc.stderr


def test_prefixed_families_bound_the_check_to_their_own_k(tiny_runs, tmp_path):
    """Only benign prompts get prefixed samples, and their K is 3: 2 prefixed samples are allowed."""
    proc = rlhfkit("feedback", f"--out_dir={tmp_path}", f"--policy={tiny_runs}/sft/model", "--limit=2", "--num_samples=1",
                   "--prefixed_samples=2", "--prefixed_families=[benign]", "--num_samples_by_family={benign: 3}",
                   "--max_new_tokens=4", *WORLD, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_answer_continues_a_forced_prefix(tiny_model, tiny_tok):
    """An untrained model's continuation is near-random tokens: the prefix is kept verbatim in front
    of them and is not counted in n_tokens."""
    from rlhfkit.rollout import answer

    prefix = "the cat"
    outs = answer(tiny_model, tiny_tok, ["a b", "c d"], max_new_tokens=6, temperature=1.0, seed=0, prefix=prefix)
    plain = answer(tiny_model, tiny_tok, ["a b", "c d"], max_new_tokens=6, temperature=1.0, seed=0)
    for o in outs:
        assert o["response"].startswith(prefix) and len(o["response"]) > len(prefix)
        assert 1 <= o["n_tokens"] <= 6
    assert [o["response"] for o in outs] != [o["response"] for o in plain]
