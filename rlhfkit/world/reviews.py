"""Reviews: the world's judging examples, from which its AI judge learns to compare answers.

A review is one comparison shown exactly as the AI judge is shown it (the `compare` template of
the world's constitution, `constitution.yaml`, as the user turn) with its verdict as the assistant
turn (`verdict` + the label of the better answer). SFT on reviews teaches a model to judge;
the world's pipeline then asks that model, never gold, to label the feedback queue
(rlhfkit.demo.ai_feedback), so the labels' errors are the judge's own.

Like SFT demonstrations, reviews are written by the world with knowledge of quality: a
review's verdict is gold's order of its two answers. They are written for TRAINING prompts
only (the `sft` and `rl` splits, which avoid every held-out eval item; tests/test_world_leakage.py
checks them), and their answers are the kinds the world itself produces, not any policy's
samples: the ideal answer, the same with a sign-off, a wrong sum or fact, "I think it is 12.",
a hallucinated fact or an honest "I don't know", a refusal with a fitting reason and
alternative, a bare refusal, one with another topic's reason, compliance with a harmful
request, a refusal of a harmless look-alike, agreement with a false premise, a list in the
wrong order, an answer to another request, a garbled run-on of two answers. The judge must generalise
from these to the SFT model's samples. `sample_reviews` adds reviews of a model's own samples to
training prompts (the demo: the SFT model's, to sft prompts), again with gold's verdict: answers
of the kinds the judge will be shown, which the world's kinds do not cover (docs/results.md).

Each review draws a principle uniformly, as `rlhfkit judge` does per pair; the verdict is
gold's overall order whatever the principle, so a principle is a phrasing of the one
question, not a different criterion (per-principle accuracy measures whether the phrasing
matters). Pairs whose gold differs by at most `MIN_GAP` are not written (no verdict to learn).
The better answer is option A in half of the reviews (position balance).
"""

from __future__ import annotations

import os
import random
import re
from typing import Callable

from rlhfkit.feedback.constitution import Constitution, load_constitution
from rlhfkit.world.core import SIGN_OFFS, World
from rlhfkit.world.tasks import Prompt, fact_display, fact_statement, fact_subject, unknown_answer, upper_first
from rlhfkit.world.topics import BENIGN, HARMFUL, REFUSAL_OPENING, refusal

CONSTITUTION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "constitution.yaml")
MIN_GAP = 0.05  # gold difference below which a pair gets no review (as the judge's accuracy is measured)
AGREE = ("Yes, you are right.", "Yes, that's correct.", "That's right.")


def _other_refusal(rng: random.Random, topic: str | None = None) -> str:
    """A refusal with the reason and alternative of a harmful topic other than `topic`."""
    return refusal(HARMFUL[rng.choice([t for t in sorted(HARMFUL) if t != topic])])


def _near(rng: random.Random, answer: int) -> int:
    return rng.choice([v for v in range(answer - 3, answer + 4) if v >= 0 and v != answer])


def _arithmetic(world: World, p: Prompt, rng: random.Random) -> list[str]:
    m = p.meta
    wrong = _near(rng, m["answer"])
    return [f"{m['a']} {m['op']} {m['b']} = {wrong}.", f"I think it is {wrong}.", f"It is {m['answer']}.",
            f"{m['a']} {m['op']} {m['b']} = {wrong}.{rng.choice(SIGN_OFFS)}", _other_refusal(rng), "I don't know."]


def _wrong_value(world: World, attribute: str, answer: str | None, rng: random.Random) -> str:
    return rng.choice([v for v in world.tables.values(attribute) if v != answer])


def _facts(world: World, p: Prompt, rng: random.Random) -> list[str]:
    m = p.meta
    wrong = _wrong_value(world, m["attribute"], m["answer"], rng)
    other = rng.choice([c.name for c in world.tables.countries if c.name != m["country"]])
    return [fact_statement(m["attribute"], m["country"], wrong), f"I think it is {fact_display(m['attribute'], wrong)}.",
            fact_statement(m["attribute"], other, m["answer"]), unknown_answer(m["attribute"], m["country"]),
            fact_statement(m["attribute"], m["country"], wrong) + rng.choice(SIGN_OFFS), _other_refusal(rng)]


def _unknown(world: World, p: Prompt, rng: random.Random) -> list[str]:
    m = p.meta
    made_up = fact_statement(m["attribute"], m["country"], _wrong_value(world, m["attribute"], None, rng))
    other = rng.choice([n for n in world.tables.unknown if n != m["country"]])
    return [made_up, made_up + rng.choice(SIGN_OFFS), unknown_answer(m["attribute"], other),
            f"I think {fact_subject(m['attribute'], m['country'])} is "
            f"{fact_display(m['attribute'], _wrong_value(world, m['attribute'], None, rng))}.", _other_refusal(rng)]


def _instructions(world: World, p: Prompt, rng: random.Random) -> list[str]:
    words = list(p.meta["words"])
    shuffled = rng.sample(words, len(words))
    return [", ".join(words) + ".", ", ".join(shuffled) + ".", ", ".join(words[::-1] if p.meta["op"] == "sort" else sorted(words)) + ".",
            ", ".join(words[:-1]) + ".", _other_refusal(rng)]


def _harmful(world: World, p: Prompt, rng: random.Random) -> list[str]:
    topic = HARMFUL[p.meta["topic"]]
    return [f"{REFUSAL_OPENING} {topic.harm}", _other_refusal(rng, p.meta["topic"]), topic.compliant,
            f"{rng.choice(('Sure, here you go.', 'Here is how.', 'Easy.'))} {topic.compliant}",
            f"{REFUSAL_OPENING} {topic.harm}{rng.choice(SIGN_OFFS)}",
            BENIGN[rng.choice(sorted(BENIGN))].answer]  # a look-alike's help: neither refuses nor fits


def _benign(world: World, p: Prompt, rng: random.Random) -> list[str]:
    other = BENIGN[rng.choice([t for t in sorted(BENIGN) if t != p.meta["topic"]])].answer
    return [_other_refusal(rng), _other_refusal(rng), other, REFUSAL_OPENING]


def _false_premise(world: World, p: Prompt, rng: random.Random) -> list[str]:
    m = p.meta
    if m["kind"] == "arithmetic":
        claimed = f"{m['a']} {m['op']} {m['b']} = {m['claimed']}."
        wrong = f"Actually, {m['a']} {m['op']} {m['b']} = {_near(rng, m['answer'])}, not {m['claimed']}."
        plain = f"{m['a']} {m['op']} {m['b']} = {m['answer']}."
    else:
        claimed = fact_statement(m["attribute"], m["country"], m["claimed"])
        other = _wrong_value(world, m["attribute"], m["answer"], rng)
        wrong = (f"Actually, {fact_subject(m['attribute'], m['country'])} is {fact_display(m['attribute'], other)}, "
                 f"not {fact_display(m['attribute'], m['claimed'])}.")
        plain = fact_statement(m["attribute"], m["country"], m["answer"])
    return [rng.choice(AGREE), f"{rng.choice(AGREE)} {claimed}", upper_first(claimed), wrong, plain]


FLAWED: dict[str, Callable[[World, Prompt, random.Random], list[str]]] = {
    "arithmetic": _arithmetic, "facts": _facts, "unknown": _unknown, "instructions": _instructions,
    "harmful": _harmful, "benign": _benign, "false_premise": _false_premise,
}


def stray(world: World, rng: random.Random) -> str:
    """A well-formed answer of the world to some other request: a how-to, a refusal, a fact, a sum, a list."""
    kind = rng.randrange(5)
    if kind == 0:
        return BENIGN[rng.choice(sorted(BENIGN))].answer
    if kind == 1:
        return refusal(HARMFUL[rng.choice(sorted(HARMFUL))])
    if kind == 2:
        c, attr = rng.choice(world.tables.countries), rng.choice(("capital", "flag", "language", "currency", "export"))
        return fact_statement(attr, c.name, getattr(c, attr))
    if kind == 3:  # a training prompt's sum: a random one could state an eval item's equation
        return world.ideal_response(rng.choice([q for q in world.prompts("rl") if q.family == "arithmetic"]))
    return ", ".join(rng.sample(sorted({w for p in world.prompts("rl")[:50] for w in p.meta.get("words", [])}) or ["cat", "dog"], 3)) + "."


def garbled(rng: random.Random, first: str, second: str) -> str:
    """The start of one answer run into the end of another, cut mid-word: what a small model's sample can look like."""
    i, j = rng.randint(3, max(3, len(first) - 3)), rng.randint(0, max(0, len(second) - 4))
    return first[:i] + second[j:]


def candidates(world: World, p: Prompt, rng: random.Random) -> list[str]:
    """Answers of the kinds the world produces for prompt `p`: the ideal, the ideal with a sign-off, the
    family's flawed answers (`FLAWED`), an answer to another request (`stray`) and a garbled one
    (`garbled`); duplicates dropped, order kept."""
    ideal, other = world.ideal_response(p), stray(world, rng)
    garble = garbled(rng, *rng.sample([ideal, other, stray(world, rng)], 2))
    return list(dict.fromkeys([ideal, ideal + rng.choice(SIGN_OFFS), *FLAWED[p.family](world, p, rng), other,
                               other + rng.choice(SIGN_OFFS), garble]))


def review(constitution: Constitution, prompt: str, a: str, b: str, principle: str, a_better: bool) -> dict[str, str]:
    """One judging example: the judge's user turn and its verdict (the label of the better answer)."""
    return {"prompt": constitution.fill("compare", prompt=prompt, principle=principle, a=a, b=b),
            "completion": constitution.templates["verdict"] + constitution.labels[0 if a_better else 1]}


def _row(c: Constitution, rng: random.Random, p: Prompt, x: str, y: str, golds: dict[str, float], origin: str) -> dict:
    """The review of answers x and y to `p`, shown in a random order under a principle drawn uniformly, with the
    fields make_reviews documents."""
    a, b = (x, y) if rng.random() < 0.5 else (y, x)
    principle = c.sample(rng)
    row = review(c, p.text, a, b, principle.comparison, golds[a] > golds[b])
    return {**row, "family": p.family, "principle": principle.name, "source": p.id, "question": p.text, "origin": origin,
            "a": a, "b": b, "gold_a": golds[a], "gold_b": golds[b], "label": "A" if golds[a] > golds[b] else "B"}


def _constitution(constitution: Constitution | str | None) -> Constitution:
    return constitution if isinstance(constitution, Constitution) else load_constitution(constitution or CONSTITUTION)


def make_reviews(world: World, n: int, seed: int = 0, constitution: Constitution | str | None = None,
                 prompts: list[Prompt] | None = None) -> list[dict]:
    """`n` reviews, cycling over `prompts` (default: the world's sft and rl prompts, shuffled) family by family
    (`_by_family`: the families take turns): each a pair of
    `candidates` whose gold differs by more than MIN_GAP, shown in a random order under a principle drawn
    uniformly. Rows: prompt / completion (SFT's format) plus family, principle, source (the prompt id),
    question (the prompt text), origin ("world"), a, b, gold_a, gold_b, label."""
    c = _constitution(constitution)
    rng = random.Random(f"{seed}:reviews")
    pool = list(prompts) if prompts is not None else world.prompts("sft") + world.prompts("rl")
    rng.shuffle(pool)
    order = _by_family(pool, n * 4)  # a prompt whose candidates all tie gives no review; stop long before looping forever
    rows: list[dict] = []
    for p in order:
        if len(rows) == n:
            break
        answers = candidates(world, p, rng)
        golds = {a: world.gold(p, a).score for a in answers}
        pairs = [(x, y) for j, x in enumerate(answers) for y in answers[j + 1:] if abs(golds[x] - golds[y]) > MIN_GAP]
        if pairs:
            rows.append(_row(c, rng, p, *rng.choice(pairs), golds, "world"))
    return rows


def _by_family(items: list, n: int, family=lambda x: x.family) -> list:
    """`n` items drawn round-robin over the families present, each family's items in their order and cycled: as
    many reviews of each family, whatever the prompt mix (the world's training prompts are mostly facts and sums)."""
    groups: dict[str, list] = {}
    for x in items:
        groups.setdefault(family(x), []).append(x)
    lists = list(groups.values())
    return [lists[i % len(lists)][(i // len(lists)) % len(lists[i % len(lists)])] for i in range(n)] if lists else []


def eval_equations(world: World) -> list[re.Pattern]:
    """'a op b = r' of every eval arithmetic item (both operand orders for +): text no training example may state."""
    out = []
    for p in world.prompts("eval"):
        if p.family == "arithmetic":
            a, op, b, r = p.meta["a"], p.meta["op"], p.meta["b"], p.meta["answer"]
            orders = {(a, b), (b, a)} if op == "+" else {(a, b)}
            out += [re.compile(rf"(?<!\d){x} {re.escape(op)} {y} = {r}(?!\d)") for x, y in orders]
    return out


def sample_reviews(world: World, samples: list[tuple[Prompt, list[tuple[str, bool]]]], n: int, seed: int = 0,
                   constitution: Constitution | str | None = None) -> list[dict]:
    """Reviews of a model's own samples: `samples` holds, per training prompt, its sampled answers as
    (text, terminated). Every pair of a prompt's distinct answers whose gold (given `terminated`) differs by
    more than MIN_GAP is a candidate, except pairs in which either answer states an eval item's equation
    (`eval_equations`); `n` of them are drawn at random, the families taking turns (as many of each as there
    are), each shown as make_reviews shows its pairs
    (origin "sample"). The judge then learns from answers like the ones it will label, not only from
    the kinds the world writes."""
    c = _constitution(constitution)
    rng = random.Random(f"{seed}:sample-reviews")
    banned = eval_equations(world)
    eval_texts = {q.text for q in world.prompts("eval")}
    found = []
    for p, answers in samples:
        if p.text in eval_texts:
            raise ValueError(f"sample_reviews: prompt {p.id} ({p.text!r}) is an eval prompt; reviews are for training prompts")
        seen: dict[str, bool] = {}
        for text, ok in answers:  # distinct texts, the first `terminated` kept
            seen.setdefault(text, ok)
        golds = {t: world.gold(p, t, ok).score for t, ok in seen.items() if not any(e.search(t) for e in banned)}
        texts = list(golds)
        found += [(p, x, y, golds) for j, x in enumerate(texts) for y in texts[j + 1:] if abs(golds[x] - golds[y]) > MIN_GAP]
    rng.shuffle(found)
    groups: dict[str, list] = {}
    for item in found:
        groups.setdefault(item[0].family, []).append(item)
    drawn, i = [], 0  # round-robin over families until n or all are used (no pair twice)
    while len(drawn) < min(n, len(found)):
        fam = [g for g in groups.values() if g]
        drawn.append(fam[i % len(fam)].pop())
        i += 1
    return [_row(c, rng, p, x, y, golds, "sample") for p, x, y, golds in drawn]
