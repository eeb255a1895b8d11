"""No held-out eval item leaks into what the model is trained on (issue 23, "No leakage").

Training data: the pretraining corpus (`corpus()`; PPO's ptx rows are a slice of it), the
SFT demonstrations (prompts and responses) and the RL prompts (also the feedback prompts).
The checker below is written from the rule, not from the generator's own keys:
- no eval prompt text occurs in any corpus document, and no eval ideal answer follows it;
- no question in the corpus, and no SFT/RL prompt, is an eval prompt, is about an eval
  arithmetic problem in any phrasing (either operand order for +; eval arithmetic false
  premises included), or asks the (country, attribute) question of an eval fact false premise;
- no SFT demonstration states the equation of an eval arithmetic problem.
Facts and sums may still be *stated* in the corpus: the model may know them.
Each check is shown to fire on a generator without the bans and on planted leaks.
"""

from __future__ import annotations

import random
import re

import pytest

from rlhfkit.world import WorldConfig, build_world
from rlhfkit.world.core import make_split
from rlhfkit.world.corpus import make_documents
from rlhfkit.world.tasks import _PARSE_ROWS, Prompt, normalize_text, parse_prompt


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig())  # the default world (~1 s with its corpus)


# ---- the rule, written out

def arith_problem(family: str, meta: dict) -> tuple | None:
    """(a, op, b) of an arithmetic item or arithmetic false premise; operands sorted for + (a+b is b+a)."""
    if family != "arithmetic" and meta.get("kind") != "arithmetic":
        return None
    a, b = (min(meta["a"], meta["b"]), max(meta["a"], meta["b"])) if meta["op"] == "+" else (meta["a"], meta["b"])
    return (a, meta["op"], b)


def fact_question(family: str, meta: dict) -> tuple | None:
    """(country, attribute) of a fact question or fact false premise."""
    if family != "facts" and meta.get("kind") != "facts":
        return None
    return (meta["country"], meta["attribute"])


def leaks(eval_prompts: list[Prompt], questions: list[tuple[str, str, dict]]) -> list[tuple[str, str]]:
    """(question text, why) for each (text, family, meta) that is an eval prompt, is about an eval
    arithmetic problem (eval false premises' included), or asks an eval fact false premise's question."""
    texts = {normalize_text(p.text) for p in eval_prompts}
    problems = {arith_problem(p.family, p.meta) for p in eval_prompts} - {None}
    fp_facts = {fact_question(p.family, p.meta) for p in eval_prompts if p.family == "false_premise"} - {None}
    out = []
    for text, family, meta in questions:
        if normalize_text(text) in texts:
            out.append((text, "eval prompt"))
        elif arith_problem(family, meta) in problems:
            out.append((text, f"eval arithmetic problem {arith_problem(family, meta)}"))
        elif fact_question(family, meta) in fp_facts:
            out.append((text, f"question of an eval false premise {fact_question(family, meta)}"))
    return out


def corpus_questions(docs: list[str], tables) -> list[tuple[str, str, dict]]:
    """Every world question asked anywhere in `docs` (whatever surrounds it), found with the
    world's template regexes (no slot matches a newline) and parsed; invalid matches dropped."""
    text, found = "\n".join(docs), set()
    for pattern in {row[1].pattern: row[1] for row in _PARSE_ROWS}.values():
        found.update(m.group(0) for m in pattern.finditer(text))
    out = []
    for q in sorted(found):
        try:
            out.append((q, *parse_prompt(q, tables)))
        except ValueError:
            pass  # e.g. a true "premise" or an unknown country: not a question of this world
    return out


def in_corpus(docs: list[str], items: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Of the (question, ideal answer) items: the questions occurring verbatim in some document,
    and those followed by their answer later in the same document."""
    blob = "\n\x00\n".join(docs)  # one search per question; \x00 never occurs in a document
    seen = [q for q, _ in items if q in blob]
    answered = [q for q, a in items if q in seen and any(q in d and a in d[d.index(q) + len(q):] for d in docs)]
    return seen, answered


def eval_items(world) -> list[tuple[str, str]]:
    return [(p.text, world.ideal_response(p)) for p in world.prompts("eval")]


def equations(eval_prompts: list[Prompt]) -> list[re.Pattern]:
    """'a op b = r' of each eval arithmetic item (both orders for +), as whole numbers."""
    out = []
    for p in eval_prompts:
        if p.family == "arithmetic":
            a, op, b, r = p.meta["a"], p.meta["op"], p.meta["b"], p.meta["answer"]
            for x, y in {(a, b), (b, a)} if op == "+" else {(a, b)}:
                out.append(re.compile(rf"(?<!\d){x} {re.escape(op)} {y} = {r}(?!\d)"))
    return out


def split_questions(prompts: list[Prompt]) -> list[tuple[str, str, dict]]:
    return [(p.text, p.family, p.meta) for p in prompts]


# ---- the default world is clean

def test_no_eval_prompt_or_answer_in_the_corpus(world):
    for docs in (world.corpus(), world.eval_corpus()):  # eval_corpus: not trained on, drawn the same way
        assert in_corpus(docs, eval_items(world)) == ([], [])


def test_no_corpus_question_is_about_an_eval_item(world):
    questions = corpus_questions(world.corpus(), world.tables)
    families = {f for _, f, _ in questions}
    assert families == {"arithmetic", "facts", "instructions", "false_premise", "harmful", "benign"}  # the finder works
    assert leaks(world.prompts("eval"), questions) == []
    assert leaks(world.prompts("eval"), corpus_questions(world.eval_corpus(), world.tables)) == []


def test_no_sft_or_rl_prompt_is_about_an_eval_item(world):
    for split in ("sft", "rl"):
        assert leaks(world.prompts("eval"), split_questions(world.prompts(split))) == [], split


def test_no_sft_demo_states_an_eval_equation(world):
    eqs = equations(world.prompts("eval"))
    assert len(eqs) > world.cfg.n_eval_per_family  # sums count twice
    assert [r for _, r in world.sft_demos() if any(e.search(r) for e in eqs)] == []


def test_facts_and_sums_are_still_stated_in_the_corpus(world):
    """The model may know what eval asks: the corpus still states the facts and sums eval asks about."""
    corpus = "\n".join(world.corpus())
    for p in world.prompts("eval"):
        if p.family == "facts":
            assert world.ideal_response(p) in corpus, p  # "The capital of X is Y." (encyclopedia)
    assert all(e.search(corpus) for e in equations(world.prompts("eval")))  # addition / subtraction tables


# ---- negative controls: the checks fire on a generator without the bans and on planted leaks

def test_checks_fire_on_the_corpus_generator_without_bans(world):
    """The old corpus: questions drawn with nothing banned (what corpus() did before issue 23)."""
    docs = make_documents(random.Random("0:corpus"), world.tables, 3000)
    seen, answered = in_corpus(docs, eval_items(world))
    assert len(seen) >= 60 and len(answered) >= 20, (len(seen), len(answered))  # 114 and 48 when written
    why = {w.split(" (")[0] for _, w in leaks(world.prompts("eval"), corpus_questions(docs, world.tables))}
    assert why == {"eval prompt", "eval arithmetic problem", "question of an eval false premise"}


def test_checks_fire_on_an_sft_split_drawn_without_bans(world):
    sft = make_split(world.cfg, world.tables, "sft", world.cfg.n_sft, eval_prompts=[])
    why = {w.split(" (")[0] for _, w in leaks(world.prompts("eval"), split_questions(sft))}
    assert why == {"eval prompt", "eval arithmetic problem", "question of an eval false premise"}


def test_checks_fire_on_planted_leaks(world):
    ev = world.prompts("eval")
    s = next(p for p in ev if p.family == "arithmetic" and p.meta["op"] == "+" and p.meta["a"] != p.meta["b"])
    a, b, r = s.meta["a"], s.meta["b"], s.meta["answer"]
    fp = next(p for p in ev if p.meta.get("kind") == "facts")
    country, attr = fact_question(fp.family, fp.meta)
    fact_q = {"capital": f"Name the capital of {country}.", "flag": f"Which colour is {country}'s flag?",
              "language": f"What do people in {country} speak?", "currency": f"What money is used in {country}?",
              "export": f"What does {country} export most?"}[attr]
    wrong = r + 1
    planted = [
        f"Also, Compute {b} plus {a}. Sort these words: cat, dog.",  # an eval sum, reversed and reworded
        f"Question: {b} + {a} = {wrong}, correct?\nReply: Yes, you are right!",  # as the subject of a false premise
        f"Question: Quick question. {fact_q}",  # an eval false premise's fact question, reworded
    ]
    found = leaks(ev, corpus_questions(planted, world.tables))
    assert [q for q, _ in found] == sorted([f"Compute {b} plus {a}.", f"{b} + {a} = {wrong}, correct?", fact_q])
    item = [(s.text, world.ideal_response(s))]
    assert in_corpus(["Some text.", f"Question: {s.text}\nReply: {item[0][1]}"], item) == ([s.text], [s.text])
    assert in_corpus([item[0][1], s.text], item) == ([s.text], [])  # the answer in another document
    eqs = equations([s])
    assert any(e.search(f"Actually, {b} + {a} = {r}, not {wrong}.") for e in eqs)  # an SFT demo, reversed
    assert not any(e.search(f"1{b} + {a} = {r}0.") for e in eqs)  # another sum


# ---- the AI judge's reviews (rlhfkit/world/reviews.py) are training data too

@pytest.fixture(scope="module")
def reviews(world):
    from rlhfkit.world.reviews import make_reviews

    return make_reviews(world, 3000)


def test_no_review_is_about_an_eval_item_or_states_an_eval_equation(world, reviews):
    """The judge's training examples ask only sft/rl prompts, and neither answer of one states an eval sum."""
    questions = [(r["question"], *parse_prompt(r["question"], world.tables)) for r in reviews]
    assert leaks(world.prompts("eval"), questions) == []
    eqs = equations(world.prompts("eval"))
    assert [r["prompt"] for r in reviews if any(e.search(r["prompt"]) for e in eqs)] == []


def test_checks_fire_on_reviews_written_for_eval_prompts(world):
    from rlhfkit.world.reviews import make_reviews

    ev = world.prompts("eval")
    leaked = make_reviews(world, 50, prompts=ev)
    questions = [(r["question"], *parse_prompt(r["question"], world.tables)) for r in leaked]
    assert len(leaks(ev, questions)) == len(leaked) == 50
    assert any(e.search(r["prompt"]) for r in leaked for e in equations(ev))  # the ideal answer states the eval sum


# ---- the critique/revision chains the world's critic learns from (rlhfkit/world/critiques.py) are training data too

@pytest.fixture(scope="module")
def chains(world):
    from rlhfkit.world.critiques import make_chains

    return make_chains(world, 3000)


def test_no_chain_is_about_an_eval_item_or_states_an_eval_equation(world, chains):
    """The critic's training chains ask only sft/rl prompts, and no turn of their rows states an eval sum."""
    questions = [(c["question"], *parse_prompt(c["question"], world.tables)) for c in chains]
    assert leaks(world.prompts("eval"), questions) == []
    eqs = equations(world.prompts("eval"))
    turns = [m["content"] for c in chains for row in c["rows"] for m in row["messages"]]
    assert [t for t in turns if any(e.search(t) for e in eqs)] == []
    assert {m["content"] for c in chains for row in c["rows"] for m in row["messages"][:1]} <= {c["question"] for c in chains}


def test_checks_fire_on_chains_written_for_eval_prompts(world):
    from rlhfkit.world.critiques import FAMILIES, make_chains

    ev = world.prompts("eval")
    leaked = make_chains(world, 50, prompts=[p for p in ev if p.family in FAMILIES])
    questions = [(c["question"], *parse_prompt(c["question"], world.tables)) for c in leaked]
    assert len(leaks(ev, questions)) == len(leaked) == 50


# ---- CAI's helpful-only demonstrations (rlhfkit/world/critiques.py) are SFT data too

def test_helpful_only_demos_ask_sft_prompts_and_state_no_eval_equation(world):
    """The helpful-only policy's demonstrations ask the SFT prompts (no other question) and, where they differ from
    the SFT demonstrations (harmful requests answered by compliance), state no eval sum."""
    from rlhfkit.world.critiques import helpful_only_demos

    demos = helpful_only_demos(world)
    assert [p.id for p, _ in demos] == [p.id for p in world.prompts("sft")]
    assert leaks(world.prompts("eval"), split_questions([p for p, _ in demos])) == []
    eqs = equations(world.prompts("eval"))
    assert [r for _, r in demos if any(e.search(r) for e in eqs)] == []
