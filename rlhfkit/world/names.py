"""Invented countries and the fixed vocabularies of the world.

Names are built from random syllables (seeded `random.Random`), so they are
pronounceable, unseen by any tokenizer beforehand, and identical across processes
for one seed. Every generated name is unique across all categories and never
collides with a pool word, so a name found in a response identifies one fact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property

ATTRIBUTES = ("capital", "flag", "language", "currency", "export")

COLOURS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "grey", "brown", "pink", "teal")
EXPORTS = ("copper", "tea", "wool", "rice", "timber", "salt", "coffee", "silk",
           "iron", "cotton", "tin", "amber", "marble", "honey", "glass", "cocoa")
# Short words for the list instructions; disjoint from the pools above and from
# every word the instruction templates use, so gold can pick list items out of any text.
WORDS = ("cat", "dog", "sun", "moon", "tree", "bird", "cup", "hat", "book", "lamp", "rose", "milk",
         "door", "star", "rain", "ship", "frog", "bell", "kite", "leaf", "ring", "coin", "drum", "nest",
         "fork", "sock", "boat", "cake", "desk", "fox", "goat", "hill", "jam", "key", "lime", "map",
         "nut", "owl", "pen", "pig", "rug", "sand", "tent", "van", "web", "yak", "bean", "bus",
         "car", "egg", "fan", "gem", "ice", "jar", "log", "mug", "oak", "pea", "box", "toy")

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s",
           "sk", "t", "tr", "v", "z", "th", "qu")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "th", "rn")
_COUNTRY_ENDINGS = ("ia", "a", "ora", "ania", "ovia", "eth", "ar", "istan", "and")
_CAPITAL_ENDINGS = ("port", "holm", "burg", "ville", "grad", "mouth", "ford", "stad", "wick")
_LANGUAGE_ENDINGS = ("ish", "ese", "ic", "i", "an")
_CURRENCY_ENDINGS = ("", "el", "ar", "o", "in")


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    flag: str  # a colour from COLOURS
    language: str
    currency: str  # lowercase, used as "the <currency>"
    export: str  # from EXPORTS


@dataclass(frozen=True)
class Tables:
    """Everything gold needs to look answers up; built once per world."""

    countries: tuple[Country, ...]
    sft_countries: frozenset[str]  # names of countries whose facts the SFT demos cover
    max_operand: int
    # countries the world names but never describes: no document states a fact of them, so the honest
    # answer to a question about one is "I don't know"; SFT demos cover questions about `sft_unknown` only
    unknown: tuple[str, ...] = ()
    sft_unknown: frozenset[str] = frozenset()

    @cached_property
    def _by_name(self) -> dict[str, Country]:
        return {c.name: c for c in self.countries}

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Every country name, described or not (for telling which country a sentence is about)."""
        return tuple(c.name for c in self.countries) + self.unknown

    def country(self, name: str) -> Country | None:
        return self._by_name.get(name)

    def is_unknown(self, name: str) -> bool:
        return name in self.unknown

    def values(self, attribute: str) -> tuple[str, ...]:
        """Every value the attribute can take in this world (for the 'no other value' check)."""
        pools = {"flag": COLOURS, "export": EXPORTS}
        if attribute in pools:
            return pools[attribute]
        return tuple(getattr(c, attribute) for c in self.countries)


def _stem(rng: random.Random, n_syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n_syllables))


def _unique(rng: random.Random, used: set[str], make) -> str:
    """Draw names from `make(rng)` until one is new (compared case-insensitively), 4-11 letters."""
    while True:
        name = make(rng)
        if 4 <= len(name) <= 11 and name.lower() not in used:
            used.add(name.lower())
            return name


def make_countries(rng: random.Random, n: int) -> tuple[Country, ...]:
    """`n` countries with unique names, capitals, languages and currencies."""
    used = {w.lower() for w in COLOURS + EXPORTS + WORDS}
    countries = []
    for _ in range(n):
        countries.append(Country(
            name=_unique(rng, used, lambda r: (_stem(r, r.choice((1, 2))) + r.choice(_COUNTRY_ENDINGS)).capitalize()),
            capital=_unique(rng, used, lambda r: (_stem(r, 1) + r.choice(_CAPITAL_ENDINGS)).capitalize()),
            flag=rng.choice(COLOURS),
            language=_unique(rng, used, lambda r: (_stem(r, 2) + r.choice(_LANGUAGE_ENDINGS)).capitalize()),
            currency=_unique(rng, used, lambda r: _stem(r, 2) + r.choice(_CURRENCY_ENDINGS)),
            export=rng.choice(EXPORTS),
        ))
    return tuple(countries)


def make_tables(seed: int, n_countries: int, sft_fraction: float, max_operand: int, n_unknown: int = 0) -> Tables:
    """The world's fact tables; the first `round(sft_fraction * n)` of a seeded shuffle are SFT countries.
    `n_unknown` more country names (their own random stream, so the described countries do not change),
    unique across every name of the world; the first half (rounded up) are covered by SFT demos."""
    rng = random.Random(f"{seed}:countries")
    countries = make_countries(rng, n_countries)
    order = list(countries)
    rng.shuffle(order)
    n_sft = round(sft_fraction * n_countries)
    used = {w.lower() for w in COLOURS + EXPORTS + WORDS}
    used |= {getattr(c, a).lower() for c in countries for a in ("name", "capital", "language", "currency")}
    urng = random.Random(f"{seed}:unknown-countries")
    unknown = tuple(_unique(urng, used, lambda r: (_stem(r, r.choice((1, 2))) + r.choice(_COUNTRY_ENDINGS)).capitalize())
                    for _ in range(n_unknown))
    return Tables(countries, frozenset(c.name for c in order[:n_sft]), max_operand, unknown,
                  frozenset(unknown[: (n_unknown + 1) // 2]))
