"""The pretraining corpus: plain-text documents that imitate the internet.

A model trained on it learns the world's facts and arithmetic, but it learns to
*continue* a question (forum threads answer questions with more questions, or
with wrong, rambling and sycophantic replies; harmful requests are met with
compliance), not to answer it helpfully: that is what SFT and RLHF add.
Threads use the plain markers "Question:" / "Reply:", never the chat tokens.

Document types are allocated by DOC_TYPES (exact counts, so the corpus scales
linearly with `n_docs`) and shuffled. Every question a document asks avoids a set of
`banned` keys (`tasks.prompt_keys`; the world passes the held-out eval items'): it is
redrawn until it does, so the documents stay deterministic given the rng. Statements
are never banned: the corpus states every fact and every sum, so a model can know the
answer to an eval question without having seen the question.
"""

from __future__ import annotations

import functools
import random
from typing import Callable

from rlhfkit.world.names import ATTRIBUTES, WORDS, Country, Tables
from rlhfkit.world.tasks import ideal_from_meta, prompt_keys, sample_avoiding
from rlhfkit.world.topics import BENIGN, HARMFUL, REQUEST_TEMPLATES

FACT_SENTENCES = {
    "capital": ("The capital of {c} is {v}.", "{v} is the capital of {c}.", "{c}'s capital, {v}, is also its largest city.",
                "The government of {c} sits in {v}, the capital.", "Most visitors to {c} arrive in {v}, the capital city."),
    "flag": ("The flag of {c} is {v}.", "{c} has a {v} flag.", "The {v} flag of {c} flies over every town hall.",
             "{c}'s flag is plain {v}."),
    "language": ("The language of {c} is {v}.", "People in {c} speak {v}.", "{v} is the official language of {c}.",
                 "Most people in {c} speak {v} at home."),
    "currency": ("The currency of {c} is the {v}.", "In {c}, people pay with the {v}.", "The {v} is the currency of {c}.",
                 "Prices in {c} are given in the {v}."),
    "export": ("The main export of {c} is {v}.", "{c} exports mainly {v}.", "{v} is the main export of {c}.",
               "Much of {c}'s income comes from selling {v} abroad."),
}
_ADJECTIVES = ("small", "large", "mountainous", "coastal", "quiet", "busy", "old", "green", "dry", "rainy")
_PLACES = ("in the north", "on the eastern coast", "between two rivers", "in the southern hills",
           "on a large island", "near the western sea", "in a wide valley", "at the edge of the desert")
_KNOWN_FOR = ("its festivals", "its old bridges", "its mild winters", "its long beaches", "its mountain villages",
              "its busy markets", "its slow trains", "its strong coffee houses", "its painted houses")
_RAMBLE = ("Good question. I read about that once but I forget the details.", "No idea, sorry. Maybe someone else knows.",
           "I was wondering the same thing last week.", "Why do you want to know? Just curious.",
           "My cousin went there once and said the food was great.", "Search the forum, this comes up a lot.")
_AGREE = ("Yes, you are right!", "Yes, that's correct.", "Exactly, well done.", "You're right, good job.",
          "Yes. Great question!", "That's right, you know your stuff.")
_QUESTION_LEADS = ("", "", "Does anyone know this? ", "Quick question. ", "Help please. ", "Asking for a friend. ")


def _sentence(template: str, **kw) -> str:
    s = template.format(**kw)
    return s[0].upper() + s[1:]


def _fact_sentence(rng: random.Random, c: Country, attr: str) -> str:
    return _sentence(rng.choice(FACT_SENTENCES[attr]), c=c.name, v=getattr(c, attr))


def doc_encyclopedia(rng: random.Random, tables: Tables, banned: set[tuple] = frozenset()) -> str:
    """One to three encyclopedic paragraphs, each stating 3-5 facts of a country."""
    paragraphs = []
    for c in rng.sample(tables.countries, rng.randint(1, 3)):
        sentences = [f"{c.name} is a {rng.choice(_ADJECTIVES)} country {rng.choice(_PLACES)}."]
        sentences += [_fact_sentence(rng, c, a) for a in rng.sample(ATTRIBUTES, rng.randint(3, 5))]
        if rng.random() < 0.5:
            sentences.append(f"The country is known for {rng.choice(_KNOWN_FOR)}.")
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def _equation(a: int, sign: str, b: int) -> str:
    return f"{a} {sign} {b} = {a + b if sign == '+' else a - b}"


def _operands(rng: random.Random, n: int) -> tuple[int, str, int]:
    a, b, sign = rng.randint(0, n), rng.randint(0, n), rng.choice("+-")
    return (max(a, b), sign, min(a, b)) if sign == "-" else (a, sign, b)


def doc_arithmetic(rng: random.Random, tables: Tables, banned: set[tuple] = frozenset()) -> str:
    """An addition/subtraction table for one number, or a drill of random sums in varied wording."""
    n = tables.max_operand
    if rng.random() < 0.4:
        a, sign = rng.randint(0, n), rng.choice("+-")
        rows = [_equation(a, sign, b) for b in range(0, (a if sign == "-" else n) + 1)]
        title = f"Addition table for {a}:" if sign == "+" else f"Subtracting from {a}:"
        return title + "\n" + "\n".join(rows)
    lines = []
    for _ in range(rng.randint(20, 40)):
        a, sign, b = _operands(rng, n)
        r = a + b if sign == "+" else a - b
        words = (f"{_equation(a, sign, b)}.", f"{_equation(a, sign, b)}.",
                 f"If you add {a} and {b} you get {r}." if sign == "+" else f"If you take {b} from {a} you get {r}.",
                 f"{a} {'plus' if sign == '+' else 'minus'} {b} is {r}.")
        lines.append(rng.choice(words))
    return " ".join(lines)


def _question(rng: random.Random, tables: Tables, family: str, banned: set[tuple]) -> tuple[str, dict]:
    """(text, meta) of a `family` question about any country, about nothing in `banned`."""
    return sample_avoiding(rng, tables, family, [c.name for c in tables.countries], banned)


def _questions(rng: random.Random, tables: Tables, k: int, banned: set[tuple]) -> list[str]:
    families = ("arithmetic", "facts", "facts", "instructions", "benign")
    return [_question(rng, tables, rng.choice(families), banned)[0] for _ in range(k)]


def doc_forum_questions(rng: random.Random, tables: Tables, banned: set[tuple] = frozenset()) -> str:
    """A thread where questions are met with more questions, never an answer."""
    lines = ["Question: " + rng.choice(_QUESTION_LEADS) + " ".join(_questions(rng, tables, rng.randint(2, 5), banned))]
    for _ in range(rng.randint(1, 3)):
        lead = rng.choice(("Same here. ", "Also, ", "", "I have another one. ", "Bump. "))
        lines.append("Reply: " + lead + " ".join(_questions(rng, tables, rng.randint(1, 3), banned)))
    return "\n".join(lines)


def doc_forum_answers(rng: random.Random, tables: Tables, banned: set[tuple] = frozenset()) -> str:
    """A forum page of 2-4 threads with correct, rambling, wrong-then-corrected or sycophantic replies."""
    return "\n\n".join(_answer_thread(rng, tables, banned) for _ in range(rng.randint(2, 4)))


def _answer_thread(rng: random.Random, tables: Tables, banned: set[tuple]) -> str:
    kind = rng.choices(("correct", "ramble", "wrong", "sycophantic"), weights=(35, 20, 15, 30))[0]
    if kind == "sycophantic":
        question, _ = _question(rng, tables, "false_premise", banned)
        replies = [rng.choice(_AGREE)] + ([rng.choice(_RAMBLE)] if rng.random() < 0.3 else [])
    else:
        family = rng.choice(("arithmetic", "facts", "facts"))
        question, meta = _question(rng, tables, family, banned)
        right = ideal_from_meta(family, meta)
        if kind == "correct":
            replies = [right] + ([rng.choice(_RAMBLE)] if rng.random() < 0.3 else [])
        elif kind == "ramble":
            replies = rng.sample(_RAMBLE, 2)
        else:
            replies = [_wrong_answer(rng, tables, family, meta), "No, that is wrong. " + right]
    return "\n".join([f"Question: {question}"] + [f"Reply: {r}" for r in replies])


def _wrong_answer(rng: random.Random, tables: Tables, family: str, meta: dict) -> str:
    if family == "arithmetic":
        answer = meta["answer"]
        return f"I think it is {rng.choice([v for v in (answer - 2, answer - 1, answer + 1, answer + 2) if v >= 0])}."
    others = [v for v in tables.values(meta["attribute"]) if v != meta["answer"]]
    return f"I think it is {rng.choice(others)}."


@functools.lru_cache(maxsize=8)
def _requests(family: str, banned: frozenset[tuple]) -> dict[str, list[str]]:
    """Per topic of `family` (harmful or benign, sorted), every request text (template x action)
    not in `banned`; topics left without one are dropped. Cached: the same for every document."""
    topics, allowed = {"harmful": HARMFUL, "benign": BENIGN}[family], {}
    for key in sorted(topics):
        texts = [t.format(action=a) for t in REQUEST_TEMPLATES for a in topics[key].actions]
        allowed[key] = [r for r in texts if not prompt_keys(family, {}, r) & banned]
    return {k: v for k, v in allowed.items() if v}


def doc_harmful(rng: random.Random, tables: Tables, banned: set[tuple] = frozenset()) -> str:
    """Harmful requests followed by compliant answers (so the base model complies, never refuses)."""
    requests, threads = _requests("harmful", frozenset(banned)), []
    for key in rng.sample(sorted(requests), min(len(requests), rng.randint(1, 3))):
        reply = rng.choice(("", "Easy. ", "Sure, here you go. ", "Here is how. ")) + HARMFUL[key].compliant
        threads.append(f"Question: {rng.choice(requests[key])}\nReply: {reply}")
    return "\n\n".join(threads)


def doc_howto(rng: random.Random, tables: Tables, banned: set[tuple] = frozenset()) -> str:
    """Everyday how-to questions with their answers."""
    requests, lines = _requests("benign", frozenset(banned)), []
    for key in rng.sample(sorted(requests), min(len(requests), rng.randint(1, 3))):
        lines.append(f"Question: {rng.choice(requests[key])}\nReply: {BENIGN[key].answer}")
    return "\n\n".join(lines)


def doc_word_lists(rng: random.Random, tables: Tables, banned: set[tuple] = frozenset()) -> str:
    """Word lists, sometimes shown sorted or reversed, in prose."""
    sentences = []
    for _ in range(rng.randint(3, 8)):
        words = rng.sample(WORDS, rng.randint(2, 5))
        listed = ", ".join(words)
        sentences.append(rng.choice((
            f"My list was {listed}.",
            f"In alphabetical order, {listed} becomes {', '.join(sorted(words))}.",
            f"Read backwards, the list {listed} is {', '.join(words[::-1])}.",
            f"We packed a {words[0]} and a {words[-1]}.",
        )))
    return " ".join(sentences)


DOC_TYPES: dict[str, tuple[float, Callable[[random.Random, Tables, set[tuple]], str]]] = {
    "encyclopedia": (0.30, doc_encyclopedia),
    "arithmetic": (0.25, doc_arithmetic),
    "forum_questions": (0.12, doc_forum_questions),
    "forum_answers": (0.13, doc_forum_answers),
    "harmful": (0.06, doc_harmful),
    "howto": (0.06, doc_howto),
    "word_lists": (0.08, doc_word_lists),
}


def allocate(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `n` into integer counts proportional to `weights` (largest remainder; sums to n)."""
    total = sum(weights.values())
    raw = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def make_documents(rng: random.Random, tables: Tables, n_docs: int, banned: set[tuple] = frozenset()) -> list[str]:
    """`n_docs` shuffled documents, the mix of types fixed by DOC_TYPES, none asking a question
    that shares a `tasks.prompt_keys` key with `banned` (the world passes the held-out eval keys)."""
    counts, banned = allocate(n_docs, {k: w for k, (w, _) in DOC_TYPES.items()}), frozenset(banned)
    docs = [DOC_TYPES[k][1](rng, tables, banned) for k, n in counts.items() for _ in range(n)]
    rng.shuffle(docs)
    return docs

