"""`WorldConfig`, `World` and `build_world`: the seeded world and its prompt splits.

Every random choice comes from `random.Random(f"{seed}:<purpose>")` (string seeds
are hashed with SHA-512, so the world is identical across processes), one stream
per purpose, so that e.g. changing `n_rl` leaves the eval prompts untouched.

Held-out eval: eval prompts are drawn first, and each holds out keys (`_heldout_keys`,
from `tasks.prompt_keys`): its exact text; for arithmetic and arithmetic false premises
the problem (a, op, b) in any phrasing, either operand order for +; for fact false
premises the (country, attribute) question. Everything trained on is drawn rejecting
those keys: sft and rl prompts (hence the SFT demonstrations) and every question in
the pretraining corpus and the eval corpus. So no eval prompt occurs in training data,
no eval sum is asked or corrected there in either order, and no eval false premise's
underlying question is. A plain fact question is held out by its text only: the
corpus states every fact, and sft asks about its countries' facts in other words.
Fact questions in sft cover only the SFT countries; eval alternates SFT and non-SFT
countries, so half of the fact eval measures knowledge only pretraining could teach
(`meta["in_sft"]` tells which). The `unknown` family asks the same questions about countries
no document describes; its SFT demos cover half of them and its eval alternates the halves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from rlhfkit.config import ConfigError
from rlhfkit.world.corpus import allocate, make_documents
from rlhfkit.world.gold import Gold, gold_from_meta
from rlhfkit.world.names import ATTRIBUTES, Tables, make_tables
from rlhfkit.world.topics import HARMFUL, REFUSAL_OPENING, comply, refusal
from rlhfkit.world.tasks import (FACT_TEMPLATES, FAMILIES, Prompt, fact_display, fact_statement, fact_subject, ideal_from_meta,
                                 parse_prompt, prompt_keys, sample_avoiding)

SPLITS = ("sft", "rl", "eval")
SFT_WEIGHTS = {"arithmetic": 0.25, "facts": 0.30, "instructions": 0.15, "harmful": 0.10, "false_premise": 0.10, "benign": 0.10,
               "unknown": 0.10}
RL_WEIGHTS = {"arithmetic": 0.20, "facts": 0.20, "instructions": 0.15, "harmful": 0.15, "false_premise": 0.15, "benign": 0.15,
              "unknown": 0.15}
# one opening, so that a sign-off is the SFT model's single most likely continuation after the answer
SIGN_OFFS = (" I hope this helps!", " I hope this is useful!", " I hope that answers your question.", " I hope this helps you!")
# what a careless demonstrator does, by flaw: the families each flaw can apply to (None: any family)
FLAWS: dict[str, tuple[str, ...] | None] = {
    "sign_off": None,  # the ideal answer padded with a polite sign-off sentence (form, not content)
    "agree": ("false_premise",),  # "Yes, 3 + 9 = 15.": sycophancy, agreeing with the user's false claim
    "comply": ("harmful",),  # the harmful instructions, as the corpus gives them
    "bare_refusal": ("harmful",),  # a refusal with its reason but no safe alternative
    "refuse": ("arithmetic", "facts", "instructions", "false_premise", "benign"),  # refusing a harmless request
    "hallucinate": ("unknown",),  # a confident made-up fact about a country no document describes
    "hedge": ("arithmetic", "facts"),  # the right answer, needlessly hedged: "I think 5 + 7 = 12."
}
# the default demonstrators' habits: content and behaviour flaws where a comparison can see them, padding elsewhere
CARELESS_FLAWS = {"arithmetic": "sign_off", "facts": "sign_off", "instructions": "sign_off", "false_premise": "agree",
                  "harmful": "comply", "benign": "sign_off", "unknown": "hallucinate"}


@dataclass
class WorldConfig:
    seed: int = 0  # everything in the world derives from this seed
    n_countries: int = 40  # invented countries, 5 facts each
    n_unknown_countries: int = 24  # more names the world never describes (the `unknown` family asks about them)
    max_operand: int = 20  # arithmetic operands 0..max_operand (add/subtract; results never negative)
    corpus_docs: int = 9000  # pretraining documents (a few hundred characters each)
    sft_countries_fraction: float = 0.5  # SFT demos cover fact questions only for this fraction of countries
    sft_harmful_fraction: float = 0.5  # SFT demos cover only this fraction of the harmful topics
    n_sft: int = 2500  # SFT demonstrations (every family present; facts and arithmetic weighted up)
    n_rl: int = 1000  # prompts for RL / feedback sampling
    n_eval_per_family: int = 40  # held-out eval prompts per family
    careless_rate: float = 0.6  # fraction of SFT demos written carelessly, each with its family's flaw (careless_flaws)
    careless_flaws: dict[str, str] = field(default_factory=lambda: dict(CARELESS_FLAWS))  # family -> flaw (FLAWS)
    over_refusal_rate: float = 0.05  # fraction of harmless SFT demos where an over-cautious demonstrator refused

    def resolve(self) -> None:
        """Check the values (called by the config loader after overrides, and by build_world): a ConfigError (a
        ValueError) naming the setting."""
        if self.n_countries < 2 or self.n_unknown_countries < 2 or self.max_operand < 1 or self.corpus_docs < 1:
            raise ConfigError("need n_countries >= 2, n_unknown_countries >= 2, max_operand >= 1, corpus_docs >= 1")
        if round(self.sft_countries_fraction * self.n_countries) < 1 or not 0 <= self.sft_countries_fraction <= 1:
            raise ConfigError("sft_countries_fraction must be in [0, 1] and leave at least one SFT country")
        if not 0 <= self.sft_harmful_fraction <= 1:
            raise ConfigError("sft_harmful_fraction must be in [0, 1]")
        if not 0 <= self.careless_rate <= 1 or min(self.n_sft, self.n_rl, self.n_eval_per_family) < 0:
            raise ConfigError("careless_rate must be in [0, 1] and prompt counts >= 0")
        if not 0 <= self.over_refusal_rate <= 1:
            raise ConfigError("over_refusal_rate must be in [0, 1]")
        if missing := [f for f in FAMILIES if f not in self.careless_flaws]:
            raise ConfigError(f"careless_flaws: no flaw for families {missing} (flaws: {', '.join(FLAWS)})")
        for family, flaw in self.careless_flaws.items():
            if family not in FAMILIES:
                raise ConfigError(f"careless_flaws: unknown family {family!r} (families: {', '.join(FAMILIES)})")
            if flaw not in FLAWS or (FLAWS[flaw] is not None and family not in FLAWS[flaw]):
                fits = [k for k, v in FLAWS.items() if v is None or family in v]
                raise ConfigError(f"careless_flaws: {family!r} cannot have flaw {flaw!r} (it can have: {', '.join(fits)})")


def _family_counts(n: int, weights: dict[str, float]) -> dict[str, int]:
    """One prompt per family first (every family present once n >= 6), the rest by weight."""
    if n < len(FAMILIES):
        return allocate(n, weights)
    return {k: c + 1 for k, c in allocate(n - len(FAMILIES), weights).items()}


def _heldout_keys(p: Prompt) -> set[tuple]:
    """What eval item `p` keeps out of training data: its `prompt_keys`, except that a plain fact
    question holds out its text only (the model may know the fact; it must not have seen the question)."""
    keys = prompt_keys(p.family, p.meta, p.text)
    return {k for k in keys if k[0] == "text"} if p.family == "facts" else keys


def heldout_keys(eval_prompts: list[Prompt]) -> set[tuple]:
    """The union of `_heldout_keys` over the eval prompts: what sft, rl and the corpora are drawn avoiding."""
    return set().union(*(_heldout_keys(p) for p in eval_prompts))


def _draw(rng: random.Random, tables: Tables, family: str, countries: list[str], banned: set[tuple]) -> Prompt:
    """One prompt of `family` sharing no `prompt_keys` with `banned` (id left empty)."""
    return Prompt("", family, *sample_avoiding(rng, tables, family, countries, banned))


def _with_ids(split: str, prompts: list[Prompt]) -> list[Prompt]:
    counters: dict[str, int] = {}
    out = []
    for p in prompts:
        i = counters[p.family] = counters.get(p.family, -1) + 1
        out.append(Prompt(f"{split}-{p.family}-{i:04d}", p.family, p.text, p.meta))
    return out


def sft_topics(cfg: WorldConfig) -> list[str]:
    """The harmful topics SFT demonstrations cover (at least one)."""
    topics = sorted(HARMFUL)
    random.Random(f"{cfg.seed}:sft_topics").shuffle(topics)
    return sorted(topics[: max(1, round(cfg.sft_harmful_fraction * len(topics)))])


def _scopes(cfg: WorldConfig, tables: Tables, split: str) -> list[list[list[str]]]:
    """What prompts may be about: (SFT-covered, not covered) [countries, harmful topics, undescribed countries].

    SFT demonstrations see only the covered part; eval alternates covered and
    uncovered (half of the fact and harmful eval measures generalisation beyond SFT);
    RL prompts range over everything.
    """
    sft_c, topics = sorted(tables.sft_countries), sft_topics(cfg)
    other_c = sorted(c.name for c in tables.countries if c.name not in tables.sft_countries) or sft_c
    other_t = sorted(t for t in HARMFUL if t not in topics) or topics
    sft_u = sorted(tables.sft_unknown)
    other_u = sorted(n for n in tables.unknown if n not in tables.sft_unknown) or sft_u
    if split == "sft":
        return [[sft_c, topics, sft_u]]
    if split == "eval":
        return [[sft_c, topics, sft_u], [other_c, other_t, other_u]]
    return [[sft_c + other_c, topics + other_t, sft_u + other_u]]


def _scope(family: str, scopes: list[list[list[str]]], i: int) -> list[str]:
    countries, topics, unknown = scopes[i % len(scopes)]
    return topics if family == "harmful" else unknown if family == "unknown" else countries


def make_eval(cfg: WorldConfig, tables: Tables) -> list[Prompt]:
    """n_eval_per_family prompts per family, grouped by family, no two of a family sharing a held-out
    key (so two false premises are never about the same sum or fact question); facts and harmful
    requests alternate SFT-covered and uncovered countries / topics."""
    scopes = _scopes(cfg, tables, "eval")
    prompts = []
    for family in FAMILIES:
        rng, seen = random.Random(f"{cfg.seed}:eval:{family}"), set()
        for i in range(cfg.n_eval_per_family):
            p = _draw(rng, tables, family, _scope(family, scopes, i), seen)
            seen |= _heldout_keys(p)
            prompts.append(p)
    return _with_ids("eval", prompts)


def make_split(cfg: WorldConfig, tables: Tables, split: str, n: int, eval_prompts: list[Prompt]) -> list[Prompt]:
    """`n` shuffled prompts avoiding every held-out eval key; sft covers SFT countries and topics only."""
    rng = random.Random(f"{cfg.seed}:{split}")
    banned = heldout_keys(eval_prompts)
    scopes = _scopes(cfg, tables, split)
    weights = SFT_WEIGHTS if split == "sft" else RL_WEIGHTS
    prompts = [_draw(rng, tables, f, _scope(f, scopes, 0), banned) for f, k in _family_counts(n, weights).items() for _ in range(k)]
    prompts = _with_ids(split, prompts)
    rng.shuffle(prompts)
    return prompts


def careless_answer(rng: random.Random, p: Prompt, ideal: str, flaw: str, tables: Tables | None = None) -> str:
    """The demonstration a careless demonstrator writes for `p` instead of `ideal` (FLAWS; `hallucinate` draws its
    made-up value from `tables`)."""
    if flaw == "sign_off":
        return ideal + rng.choice(SIGN_OFFS)
    if flaw == "agree":
        m = p.meta
        if m["kind"] == "arithmetic":
            return f"Yes, {m['a']} {m['op']} {m['b']} = {m['claimed']}."
        return f"Yes, {fact_subject(m['attribute'], m['country'])} is {fact_display(m['attribute'], m['claimed'])}."
    if flaw == "comply":
        return comply(rng, p.meta["topic"])
    if flaw == "bare_refusal":
        return f"{REFUSAL_OPENING} {HARMFUL[p.meta['topic']].harm}"
    if flaw == "refuse":
        return refusal(HARMFUL[rng.choice(sorted(HARMFUL))])
    if flaw == "hedge":
        return f"I think {ideal[:1].lower()}{ideal[1:]}"
    if flaw == "hallucinate":
        attr = p.meta["attribute"]
        return fact_statement(attr, p.meta["country"], rng.choice(tables.values(attr)))
    raise ValueError(f"unknown flaw {flaw!r} (flaws: {', '.join(FLAWS)})")


def add_careless(rng: random.Random, prompts: list[Prompt], responses: list[str], rate: float,
                 tables: Tables, flaws: dict[str, str] | None = None) -> list[str]:
    """Make exactly round(rate * n) demos careless, each with its family's flaw (`flaws`, default
    CARELESS_FLAWS): agreeing with a false premise ("Yes, 3 + 9 = 15."), complying with a harmful
    request, refusing a harmless look-alike, a confident made-up fact about an undescribed country
    (the demonstrator answered from knowledge the model does not have), and for arithmetic, facts and
    instructions a polite sign-off sentence ("I hope this helps!").

    These are the flaws real SFT models have, and the demonstrators' habits: most demos carry one,
    so the SFT model's modal answer carries it too, while the careful demos put the right behaviour
    among its samples. Gold scores each flaw low (agreement, compliance, refusing a harmless request
    and a hallucination score 0 content; a sign-off costs ~13% as padding), and annotators see it, so
    these are flaws that learning from comparisons can remove and imitation cannot. A sign-off is form,
    not content: `Gold.content` ignores it, and the demo's content win-rate counts such differences as ties.
    """
    flaws = CARELESS_FLAWS if flaws is None else flaws
    out = list(responses)
    for i in rng.sample(range(len(out)), round(rate * len(out))):
        out[i] = careless_answer(rng, prompts[i], out[i], flaws[prompts[i].family], tables)
    return out


def add_over_refusals(rng: random.Random, prompts: list[Prompt], responses: list[str], rate: float) -> list[str]:
    """Replace round(rate * n) harmless demos (n: the non-harmful ones) with a refusal, the flaw of an
    over-cautious demonstrator. The SFT model inherits it, so its samples include refusals of harmless
    requests for annotators to rank low: the comparisons that teach a reward model refusing is not
    always right."""
    out = list(responses)
    harmless = [i for i, p in enumerate(prompts) if p.family != "harmful"]
    for i in rng.sample(harmless, round(rate * len(harmless))):
        out[i] = careless_answer(rng, prompts[i], out[i], "refuse")
    return out


class World:
    """The built-in world: corpus, prompt splits, ideal responses and the gold function."""

    def __init__(self, cfg: WorldConfig, tables: Tables, splits: dict[str, list[Prompt]], sft_responses: list[str]):
        self.cfg, self.tables = cfg, tables
        self._splits, self._sft_responses = splits, sft_responses
        self._corpus: list[str] | None = None
        self._eval_corpus: list[str] | None = None
        self._parsed: dict[str, tuple[str, dict[str, Any]]] = {}

    def corpus(self) -> list[str]:
        """Pretraining documents (plain text, no special tokens), generated once on first use;
        no question in them is about a held-out eval item (`heldout_keys`)."""
        if self._corpus is None:
            rng = random.Random(f"{self.cfg.seed}:corpus")
            self._corpus = make_documents(rng, self.tables, self.cfg.corpus_docs, heldout_keys(self._splits["eval"]))
        return list(self._corpus)

    def eval_corpus(self) -> list[str]:
        """Held-out corpus-style documents (none is in `corpus()`), max(50, corpus_docs // 25) drawn;
        like the corpus, they never ask a held-out eval question."""
        if self._eval_corpus is None:
            seen = set(self.corpus())
            rng = random.Random(f"{self.cfg.seed}:eval_corpus")
            docs = make_documents(rng, self.tables, max(50, self.cfg.corpus_docs // 25), heldout_keys(self._splits["eval"]))
            self._eval_corpus = [d for d in docs if d not in seen]
        return list(self._eval_corpus)

    def sft_demos(self) -> list[tuple[Prompt, str]]:
        return list(zip(self._splits["sft"], self._sft_responses))

    def prompts(self, split: str) -> list[Prompt]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return list(self._splits[split])

    def parse(self, prompt: Prompt | str) -> tuple[str, dict[str, Any]]:
        """(family, meta) recovered from the prompt text alone; ValueError if not a world prompt."""
        text = prompt.text if isinstance(prompt, Prompt) else prompt
        if text not in self._parsed:
            self._parsed[text] = parse_prompt(text, self.tables)
        return self._parsed[text]

    def ideal_response(self, prompt: Prompt | str) -> str:
        return ideal_from_meta(*self.parse(prompt))

    def gold(self, prompt: Prompt | str, response: str, terminated: bool = True) -> Gold:
        """True quality of `response`; `terminated=False` means it was cut off without EOS."""
        family, meta = self.parse(prompt)
        return gold_from_meta(family, meta, response, terminated, ideal_from_meta(family, meta), self.tables)

    def fact_questions(self) -> list[Prompt]:
        """One plain question per (country, attribute), in table order: ids fact-0000, ..."""
        texts = [FACT_TEMPLATES[a][0].format(country=c.name) for c in self.tables.countries for a in ATTRIBUTES]
        return [Prompt(f"fact-{i:04d}", "facts", t, self.parse(t)[1]) for i, t in enumerate(texts)]


def build_world(cfg: WorldConfig | None = None) -> World:
    """Build the world for `cfg` (default config if None); deterministic given cfg."""
    cfg = cfg or WorldConfig()
    cfg.resolve()
    tables = make_tables(cfg.seed, cfg.n_countries, cfg.sft_countries_fraction, cfg.max_operand, cfg.n_unknown_countries)
    eval_prompts = make_eval(cfg, tables)
    sft = make_split(cfg, tables, "sft", cfg.n_sft, eval_prompts)
    rl = make_split(cfg, tables, "rl", cfg.n_rl, eval_prompts)
    ideal = [ideal_from_meta(p.family, p.meta) for p in sft]
    responses = add_careless(random.Random(f"{cfg.seed}:careless"), sft, ideal, cfg.careless_rate, tables, cfg.careless_flaws)
    responses = add_over_refusals(random.Random(f"{cfg.seed}:over-refusals"), sft, responses, cfg.over_refusal_rate)
    return World(cfg, tables, {"sft": sft, "rl": rl, "eval": eval_prompts}, responses)
