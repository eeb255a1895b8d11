"""`rlhfkit sample` with forced prefixes: some of each prompt's K samples continue a given opening."""

from __future__ import annotations

import json

from tests.helpers import WORLD, rlhfkit

PREFIX = "I can't help with that."


def rows(path):
    return [json.loads(line) for line in open(path)]


def test_prefixed_samples_continue_the_prefix_and_leave_the_free_samples_unchanged(tiny_runs, tmp_path):
    sft = f"{tiny_runs}/sft/model"
    common = (f"--model={sft}", "--limit=12", "--max_new_tokens=16", "--seed=3", *WORLD)
    rlhfkit("sample", *common, "--num_samples=3", "--prefixed_samples=1", f"--out={tmp_path}/mixed.jsonl")
    rlhfkit("sample", *common, "--num_samples=2", f"--out={tmp_path}/free.jsonl")
    mixed, free = rows(tmp_path / "mixed.jsonl"), rows(tmp_path / "free.jsonl")
    assert len(mixed) == len(free) == 12
    for m, f in zip(mixed, free):
        assert len(m["responses"]) == len(m["terminated"]) == 3
        assert m["responses"][2].startswith(PREFIX)
        assert m["responses"][:2] == f["responses"]  # the same seed draws the same free samples
    assert not any(r.startswith(PREFIX) for f in free for r in f["responses"])  # so the check above can fail


def test_num_samples_by_family_gives_those_families_more_samples(tiny_runs, tmp_path):
    sft = f"{tiny_runs}/sft/model"
    rlhfkit("sample", f"--model={sft}", "--limit=24", "--max_new_tokens=8", "--num_samples=2", "--prefixed_samples=1",
            "--num_samples_by_family={false_premise: 5, facts: 3}", f"--out={tmp_path}/q.jsonl", *WORLD)
    k = {"false_premise": 5, "facts": 3}
    got = rows(tmp_path / "q.jsonl")
    assert {r["family"] for r in got} >= {"false_premise", "facts", "arithmetic"}  # so every branch is checked
    for r in got:
        assert len(r["responses"]) == len(r["terminated"]) == k.get(r["family"], 2)
        assert r["responses"][-1].startswith(PREFIX) and not any(x.startswith(PREFIX) for x in r["responses"][:-1])


def test_prefixed_families_add_the_prefixed_sample_to_those_families_only(tiny_runs, tmp_path):
    """Benign look-alikes get a third, forced candidate; every prompt keeps the same two free samples."""
    sft = f"{tiny_runs}/sft/model"
    common = (f"--model={sft}", "--limit=30", "--max_new_tokens=8", "--seed=1", *WORLD)
    rlhfkit("sample", *common, "--num_samples=2", "--prefixed_samples=1", "--prefixed_families=[benign]",
            "--num_samples_by_family={benign: 3}", f"--out={tmp_path}/q.jsonl")
    rlhfkit("sample", *common, "--num_samples=2", f"--out={tmp_path}/free.jsonl")
    got, free = rows(tmp_path / "q.jsonl"), rows(tmp_path / "free.jsonl")
    assert {r["family"] for r in got} >= {"benign", "harmful", "facts"}  # so both branches are checked
    for r, f in zip(got, free):
        assert r["responses"][:2] == f["responses"]
        if r["family"] == "benign":
            assert len(r["responses"]) == len(r["terminated"]) == 3 and r["responses"][2].startswith(PREFIX)
        else:
            assert len(r["responses"]) == 2


def test_unknown_family_names_are_a_config_error(tiny_runs, tmp_path):
    proc = rlhfkit("sample", f"--model={tiny_runs}/sft/model", "--limit=2", "--prefixed_samples=1",
                   "--prefixed_families=[benin]", f"--out={tmp_path}/q.jsonl", *WORLD, check=False)
    assert proc.returncode == 2 and "prefixed_families: unknown world families ['benin']" in proc.stderr
    proc = rlhfkit("sample", f"--model={tiny_runs}/sft/model", "--limit=2", "--num_samples_by_family={fact: 3}",
                   f"--out={tmp_path}/q.jsonl", *WORLD, check=False)
    assert proc.returncode == 2 and "num_samples_by_family: unknown world families ['fact']" in proc.stderr


def test_answer_continues_a_forced_prefix(tiny_model, tiny_tok):
    """An untrained model's continuation is near-random tokens: the prefix is kept verbatim in front
    of them and is not counted in n_tokens."""
    from rlhfkit.evaluation.gold_eval import answer

    prefix = "the cat"
    outs = answer(tiny_model, tiny_tok, ["a b", "c d"], max_new_tokens=6, temperature=1.0, seed=0, prefix=prefix)
    plain = answer(tiny_model, tiny_tok, ["a b", "c d"], max_new_tokens=6, temperature=1.0, seed=0)
    for o in outs:
        assert o["response"].startswith(prefix) and len(o["response"]) > len(prefix)
        assert 1 <= o["n_tokens"] <= 6
    assert [o["response"] for o in outs] != [o["response"] for o in plain]


def test_more_prefixed_samples_than_samples_is_a_config_error(tiny_runs, tmp_path):
    proc = rlhfkit("sample", f"--model={tiny_runs}/sft/model", "--limit=2", "--num_samples=2", "--prefixed_samples=3",
                   f"--out={tmp_path}/q.jsonl", *WORLD, check=False)
    assert proc.returncode == 2 and "prefixed_samples (3)" in proc.stderr
    proc = rlhfkit("sample", f"--model={tiny_runs}/sft/model", "--limit=2", "--num_samples=4", "--prefixed_samples=3",
                   "--num_samples_by_family={facts: 2}", f"--out={tmp_path}/q.jsonl", *WORLD, check=False)
    assert proc.returncode == 2 and "num_samples_by_family.facts = 2" in proc.stderr
    proc = rlhfkit("sample", f"--model={tiny_runs}/sft/model", "--limit=2", "--num_samples=1", "--prefixed_samples=2",
                   "--prefixed_families=[benign]", "--num_samples_by_family={benign: 3}", f"--out={tmp_path}/q.jsonl",
                   *WORLD, check=False)
    assert proc.returncode == 0  # only benign prompts get prefixed samples, and their K is 3
