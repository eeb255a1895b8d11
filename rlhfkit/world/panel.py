"""Simulated annotators: the demo's stand-in for a panel of human labellers.

Each annotator ranks the K responses to a prompt by a Plackett-Luce draw over a
utility (Gumbel-max trick: sort u_i + Gumbel noise):

    u_i = quality * gold_i + verbosity * log(1 + words_i) + agreement * agrees_i - position * i / (K - 1)

`gold` is the world's true quality; the three biases are those documented for
human raters (Sharma et al. 2023 on sycophancy; Singhal et al. 2023 on length;
position effects in pairwise judging). Each annotator's weights are the panel's
scaled by a per-annotator factor, so raters disagree systematically as well as
by noise. By default every bias is real but weaker than the quality signal.
Only these annotators ever see gold; their rankings go into the same store rows
a person in the web app writes (source = "simulated").

Besides the ranking, each annotator marks every response acceptable or not, the
absolute judgement labelling guidelines ask for next to the comparison
(InstructGPT's raters also scored each answer on a 1-7 scale): acceptable iff

    quality * (gold_i - accept_threshold) + verbosity * (log(1 + words_i) - log(1 + 10))
        + agreement * agrees_i + noise * (Gumbel - its median) > 0

(the same biases, no position effect; at the threshold, a coin flip). A ranking says which
answer is better; only these marks say whether the answers to one prompt are
good or bad at all, which is what lets a reward model put answers to different
prompts on one scale.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass


@dataclass
class PanelConfig:
    n_annotators: int = 5  # people on the panel
    overlap: int = 2  # annotators per item in general
    agreement_items: float = 0.15  # fraction of items ranked by the whole panel (agreement, accuracy ceiling)
    quality: float = 6.0  # utility per unit of gold quality
    noise: float = 0.3  # Gumbel scale: 0 = deterministic
    verbosity: float = 0.3  # utility per unit of log(1 + words)
    agreement: float = 0.5  # utility for agreeing with the user ("yes, you're right")
    position: float = 0.3  # utility lost from the first to the last position shown
    spread: float = 0.3  # per-annotator bias factors drawn from [1 - spread, 1 + spread]
    accept_threshold: float = 0.5  # gold below which an answer is marked unacceptable (before biases and noise)
    seed: int = 0  # panel composition and draws


@dataclass(frozen=True)
class Annotator:
    name: str
    quality: float
    noise: float
    verbosity: float
    agreement: float
    position: float


def make_panel(cfg: PanelConfig) -> list[Annotator]:
    rng = random.Random(cfg.seed)

    def jitter(x: float) -> float:
        return x * rng.uniform(1 - cfg.spread, 1 + cfg.spread)

    return [Annotator(f"sim-{i}", cfg.quality, cfg.noise, jitter(cfg.verbosity), jitter(cfg.agreement), jitter(cfg.position))
            for i in range(cfg.n_annotators)]


GUMBEL_MEDIAN = -math.log(math.log(2))  # so an answer exactly at the threshold is a coin flip
REFERENCE_WORDS = 10  # the length at which the verbosity bias neither helps nor hurts an acceptability mark


def gumbel(rng: random.Random) -> float:
    return -math.log(-math.log(max(rng.random(), 1e-12)))


def utilities(a: Annotator, golds: list[float], words: list[int], agrees: list[bool]) -> list[float]:
    """Noise-free utility of each response, in the order shown."""
    k = len(golds)
    return [a.quality * g + a.verbosity * math.log1p(w) + a.agreement * float(ag) - a.position * i / max(1, k - 1)
            for i, (g, w, ag) in enumerate(zip(golds, words, agrees))]


def rank(a: Annotator, golds: list[float], words: list[int], agrees: list[bool], rng: random.Random) -> list[int]:
    """A Plackett-Luce ranking (indices, best first) of the responses."""
    u = utilities(a, golds, words, agrees)
    noisy = [x + a.noise * gumbel(rng) for x in u]  # + Gumbel(0, noise)
    return sorted(range(len(u)), key=lambda i: -noisy[i])


def acceptable(a: Annotator, golds: list[float], words: list[int], agrees: list[bool], threshold: float,
               rng: random.Random) -> list[bool]:
    """The annotator's absolute mark for each response: is it an acceptable answer? (module docstring)"""
    return [a.quality * (g - threshold) + a.verbosity * (math.log1p(w) - math.log1p(REFERENCE_WORDS))
            + a.agreement * float(ag) + a.noise * (gumbel(rng) - GUMBEL_MEDIAN) > 0
            for g, w, ag in zip(golds, words, agrees)]


def label_queue(store, world, rows: list[dict], cfg: PanelConfig) -> dict:
    """Rank every queue row (`{"prompt", "responses", "terminated"?, "policy"?}`) with the panel and store it.

    Duplicate responses are merged first (two identical texts carry no
    preference). Each row is ranked by `overlap` consecutive panel members (starting where
    the item's content hash points), or by
    the whole panel for an `agreement_items` fraction; every annotator sees the
    responses in their own random order, as a labelling UI shows them, so
    position bias is individual noise rather than a shared preference.
    Each ranking carries the annotator's acceptability marks in its `meta`
    (`acceptable`: the ids of the responses marked acceptable).
    Idempotency keys (seed, item content, annotator) make a rerun a no-op,
    even if the queue was reordered or extended. Returns counts.
    """
    panel = make_panel(cfg)
    ids = {a.name: store.add_annotator(a.name, "simulated", meta=a.__dict__)[0] for a in panel}
    n_judgements = n_items = 0
    for row in rows:
        terminated = row.get("terminated") or [True] * len(row["responses"])
        unique = dict(zip(row["responses"], terminated))  # text -> terminated, first occurrence order
        if len(unique) < 2:
            continue
        responses = list(unique)
        golds, words, agrees = [], [], []
        for r in responses:
            g = world.gold(row["prompt"], r, unique[r])
            golds.append(g.score)
            words.append(len(r.split()))
            agrees.append(bool(g.flags.get("agrees_with_user", False)))
        prompt_id = store.add_prompt(row["prompt"], family=row.get("family"))
        response_ids = store.add_responses(prompt_id, responses, policy=row.get("policy", ""))
        item = hashlib.sha256(json.dumps([row["prompt"], sorted(responses)]).encode()).hexdigest()[:32]
        rng = random.Random(f"{cfg.seed}:{item}")  # the item's content, not its place in the queue, decides its labels
        everyone = rng.random() < cfg.agreement_items
        first = int(item, 16) % len(panel)
        raters = panel if everyone else [panel[(first + j) % len(panel)] for j in range(cfg.overlap)]
        for a in raters:
            shown = rng.sample(range(len(responses)), len(responses))  # display order for this annotator
            seen = [golds[i] for i in shown], [words[i] for i in shown], [agrees[i] for i in shown]
            order = rank(a, *seen, rng)
            marks = acceptable(a, *seen, cfg.accept_threshold, rng)
            store.add_ranking(prompt_id, [response_ids[shown[i]] for i in order], ids[a.name], source="simulated",
                              key=f"sim:{cfg.seed}:{item}:{a.name}",
                              meta={"acceptable": [response_ids[shown[i]] for i, ok in enumerate(marks) if ok]})
            n_judgements += 1
        n_items += 1
    return {"items": n_items, "skipped_identical": len(rows) - n_items, "judgements": n_judgements, "annotators": len(panel)}
