"""Critiques: the world's examples of critiquing and revising an answer, from which its model learns
Constitutional AI's supervised stage (`rlhfkit cai`).

A chain is one prompt, an answer of a kind the world produces, a principle of the world's constitution
(`constitution.yaml`), a short critique and the revision. It is shown exactly as `rlhfkit cai` shows a
model its own answer at run time (the conversations of `rlhfkit.stages.cai.critique_conversation` and
`revision_conversation`: prompt, answer, critique request | critique, revision request | revision), as
two SFT rows: one ending with the critique, one with the revision. The answer itself is never a
training target (it is often the thing to fix), so the rows train the last assistant turn only.

Like reviews (rlhfkit/world/reviews.py) and SFT demonstrations, chains are written by the world with
knowledge of quality, for TRAINING prompts only (the `sft` and `rl` splits; tests/test_world_leakage.py
checks them). They cover the red-team families: harmful requests and their benign look-alikes, under
the two principles about them (`PRINCIPLES`: harmless, not_evasive), the principles the demo's `cai`
stage draws from. The answers are the world's kinds (`KINDS`): for a harmful request the ideal refusal
(reason and safe alternative), one without the alternative, a bare "I can't help with that.", one with
another topic's reason, compliance, an answer to another request, the ideal with a sign-off, a garbled
run-on; for a look-alike the ideal help, a refusal (bare or with some topic's reason), another topic's
help, the ideal with a sign-off, a garbled run-on. The critique answers the principle's question ("Yes."
or "No.") and names what is wrong with the answer, or that nothing is; the revision is the world's
ideal answer (for a look-alike: helping, not refusing), the same text when nothing was wrong.

`helpful_only_demos` are what the paper's red-team answers come from: a helpful-only model (Bai et al. 2022,
sec. 3: trained to help, never taught harmlessness). They are the world's SFT demonstrations with every
harmful request answered by compliance (the corpus's compliant text, as the `complies` kind writes it);
every other demonstration is the SFT one, careless and over-cautious ones included, so a model trained on
them differs from the SFT model in harmlessness only. They are for `sft` prompts, like the SFT demonstrations.
"""

from __future__ import annotations

import random
from typing import Callable

from rlhfkit.feedback.constitution import Constitution, load_constitution
from rlhfkit.stages.cai import critique_conversation, revision_conversation
from rlhfkit.world.core import SIGN_OFFS, World
from rlhfkit.world.reviews import CONSTITUTION, garbled, stray
from rlhfkit.world.tasks import Prompt
from rlhfkit.world.topics import BENIGN, HARMFUL, REFUSAL_OPENING, comply, refusal

FAMILIES = ("harmful", "benign")  # red-team prompts: harmful requests and their benign look-alikes
PRINCIPLES = ("harmless", "not_evasive")  # the constitution's principles about them
# principle -> the answers it says "Yes." to (its question asks whether this flaw is there)
YES = {"harmless": {("harmful", "complies"), ("benign", "harmful")}, "not_evasive": {("benign", "refuses")}}


def helpful_only_demos(world: World, seed: int = 0) -> list[tuple[Prompt, str]]:
    """The world's SFT demonstrations (same prompts, same order) with every harmful request answered by compliance."""
    rng = random.Random(f"{seed}:helpful-only")
    return [(p, comply(rng, p.meta["topic"]) if p.family == "harmful" else r) for p, r in world.sft_demos()]


def _other(rng: random.Random, topic: str):
    return HARMFUL[rng.choice([t for t in sorted(HARMFUL) if t != topic])]


def _harmful(world: World, p: Prompt, rng: random.Random) -> dict[str, tuple[str, str]]:
    """kind -> (answer, critique after "Yes."/"No.") for a harmful request."""
    t, ideal = HARMFUL[p.meta["topic"]], world.ideal_response(p)
    # another topic whose reason does not fit this request by gold (some topics' reasons fit each other's requests)
    other = rng.choice([o for name, o in sorted(HARMFUL.items()) if name != p.meta["topic"]
                        and world.gold(p, refusal(o)).score < 1.0 and world.gold(p, f"{REFUSAL_OPENING} {o.harm}").score < 1.0])
    compliant = comply(rng, p.meta["topic"])
    return {
        "ideal": (ideal, "It refuses, says why and offers a safe alternative."),
        "no_alternative": (f"{REFUSAL_OPENING} {t.harm}", "It refuses but offers no safe alternative."),
        "bare": (REFUSAL_OPENING, "It refuses but says neither why nor what it can do instead."),
        "other_reason": (rng.choice((refusal(other), f"{REFUSAL_OPENING} {other.harm}")),
                         f"It refuses, but its reason is about another request. {t.harm}"),
        "complies": (compliant, f"It helps with a harmful request. {t.harm}"),
        "off_topic": (BENIGN[rng.choice(sorted(BENIGN))].answer, "It answers another request and does not refuse this harmful one."),
        "filler": (ideal + rng.choice(SIGN_OFFS), "It refuses well but adds filler."),
        "garbled": (_garbled(world, p, rng), "It is garbled."),
    }


def _garbled(world: World, p: Prompt, rng: random.Random) -> str:
    """The ideal answer run into another answer (`reviews.garbled`), redrawn where the run-on happens to be as
    good as the ideal by gold; the ideal's first half after five tries."""
    ideal = world.ideal_response(p)
    for _ in range(5):
        text = garbled(rng, ideal, stray(world, rng))
        if world.gold(p, text).score < 1.0:
            return text
    return ideal[: len(ideal) // 2]


def _benign(world: World, p: Prompt, rng: random.Random) -> dict[str, tuple[str, str]]:
    """kind -> (answer, critique after "Yes."/"No.") for a harmless look-alike."""
    ideal, other = world.ideal_response(p), _other(rng, "")
    help_other = BENIGN[rng.choice([t for t in sorted(BENIGN) if t != p.meta["topic"]])].answer
    return {
        "ideal": (ideal, "It helps with a harmless request."),
        "refuses": (rng.choice((refusal(other), f"{REFUSAL_OPENING} {other.harm}", REFUSAL_OPENING)),
                    "It refuses a harmless request."),
        "off_topic": (help_other, "It answers another request."),
        # what a helpful-only model says to a look-alike: a harmful topic's instructions (revised to the help, not a refusal)
        "harmful": (comply(rng, rng.choice(sorted(HARMFUL))), "It gives harmful instructions; the request itself is harmless."),
        "filler": (ideal + rng.choice(SIGN_OFFS), "It helps but adds filler."),
        "garbled": (_garbled(world, p, rng), "It is garbled."),
    }


KINDS: dict[str, Callable[[World, Prompt, random.Random], dict[str, tuple[str, str]]]] = {
    "harmful": _harmful, "benign": _benign}


def critique(family: str, kind: str, principle: str, reason: str) -> str:
    """The critique under `principle`: its question answered, then what is wrong (or that nothing is)."""
    return f"{'Yes' if (family, kind) in YES.get(principle, ()) else 'No'}. {reason}"


def make_chains(world: World, n: int, seed: int = 0, constitution: Constitution | str | None = None,
                prompts: list[Prompt] | None = None, principles: tuple[str, ...] = PRINCIPLES,
                splits: tuple[str, ...] = ("sft", "rl")) -> list[dict]:
    """`n` chains, cycling over `prompts` (default: the prompts of `FAMILIES` in the training `splits`, shuffled): each
    an answer of a kind drawn uniformly, a principle drawn uniformly from `principles`, its critique and the
    ideal revision. Rows: source (prompt id), family, question, kind, principle, answer, critique, revision,
    and `rows`: the two SFT rows (`sft_rows`)."""
    c = constitution if isinstance(constitution, Constitution) else load_constitution(constitution or CONSTITUTION)
    rng = random.Random(f"{seed}:critiques")
    if set(splits) - {"sft", "rl"}:
        raise ValueError(f"chains are written for training splits (sft, rl) only, got {list(splits)}")
    pool = list(prompts) if prompts is not None else [p for s in splits for p in world.prompts(s) if p.family in FAMILIES]
    pool = [p for p in pool if p.family in KINDS]
    rng.shuffle(pool)
    chains = []
    for i in range(n if pool else 0):
        p = pool[i % len(pool)]
        kinds = KINDS[p.family](world, p, rng)
        kind = rng.choice(sorted(kinds))
        answer, reason = kinds[kind]
        principle = c.principle(rng.choice(principles))
        chain = {"source": p.id, "family": p.family, "question": p.text, "kind": kind, "principle": principle.name,
                 "answer": answer, "critique": critique(p.family, kind, principle.name, reason),
                 "revision": world.ideal_response(p)}
        chains.append({**chain, "rows": sft_rows(c, chain)})
    return chains


def sft_rows(constitution: Constitution, chain: dict) -> list[dict]:
    """The chain as two SFT rows (`messages`, the last turn the target): the critique of the answer, then the
    revision, in the conversations `rlhfkit cai` builds at run time."""
    principle = constitution.principle(chain["principle"])
    asked = critique_conversation(constitution, chain["question"], chain["answer"], principle)
    revise = revision_conversation(constitution, asked, chain["critique"], principle)
    as_dicts = lambda conv, last: [{"role": m.role, "content": m.content} for m in conv] + [{"role": "assistant", "content": last}]  # noqa: E731
    return [{"messages": as_dicts(asked, chain["critique"]), "family": chain["family"]},
            {"messages": as_dicts(revise, chain["revision"]), "family": chain["family"]}]
