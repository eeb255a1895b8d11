"""A constitution: written principles plus the prompts an AI judge and a self-critiquing model are given.

Bai et al. (2022), "Constitutional AI": each principle is a critique request, a
revision request (the supervised stage: the model critiques and rewrites its own
answer) and a pairwise comparison question (the RL stage: an AI judge picks the
better of two answers). A constitution is a YAML file (the packaged default,
`constitutions/hhh.yaml`, documents every field):

    principles: [{name, critique, revision, comparison}, ...]   at least one
    templates: {compare, compare_cot, verdict, cot_verdict, rate, critique, revision}   each optional
    rating: str       overall: str       labels: [A, B]       yes_no: [Yes, No]             optional

A template left out is the default's; a template given must contain exactly the
{slots} its use fills (`SLOTS`). Every problem is a `ConfigError` naming the file
and the field, e.g. `my.yaml: field 'principles[1].revision': missing`.
"""

from __future__ import annotations

import os
import random
import string
from dataclasses import dataclass

from rlhfkit.config import ConfigError, read_yaml

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "constitutions", "hhh.yaml")
PRINCIPLE_FIELDS = ("name", "critique", "revision", "comparison")
SLOTS = {  # template -> the slots it must contain (and may contain)
    "compare": {"prompt", "principle", "a", "b"},
    "compare_cot": {"prompt", "principle", "a", "b"},
    "verdict": set(),
    "cot_verdict": set(),
    "rate": {"prompt", "response", "question"},
    "critique": {"request"},
    "revision": {"request"},
}
PAIRS = ("labels", "yes_no")  # two distinct answer strings each
TEXTS = ("rating", "overall")  # optional top-level questions


@dataclass(frozen=True)
class Principle:
    name: str  # short id stored with every AI label
    critique: str  # critique request (CAI supervised stage)
    revision: str  # revision request
    comparison: str  # the pairwise question the judge answers


@dataclass(frozen=True)
class Constitution:
    path: str  # the file it came from
    principles: tuple[Principle, ...]
    templates: dict[str, str]  # every key of SLOTS
    rating: str  # single-answer question (the judge reward's `rate`)
    overall: str  # pairwise question of the judge reward against a reference answer
    labels: tuple[str, str]  # answer strings for "the first / second response is better"
    yes_no: tuple[str, str]  # answer strings for "yes / no" to `rating`

    def fill(self, template: str, **slots: str) -> str:
        """The template with its slots filled (values are inserted verbatim, braces and all)."""
        return self.templates[template].format(**slots)

    def sample(self, rng: random.Random) -> Principle:
        """One principle drawn uniformly (Bai et al. draw one per comparison and per revision)."""
        return self.principles[rng.randrange(len(self.principles))]

    def principle(self, name: str) -> Principle:
        for p in self.principles:
            if p.name == name:
                return p
        raise ConfigError(f"{self.path}: no principle named {name!r} (have {', '.join(p.name for p in self.principles)})")


def load_constitution(path: str | None = None) -> Constitution:
    """The constitution at `path` (None or "": the packaged default), validated."""
    path = path or DEFAULT
    try:
        data = read_yaml(path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    default = _parse(read_yaml(DEFAULT), DEFAULT, None) if os.path.abspath(path) != DEFAULT else None
    return _parse(data, path, default)


def _parse(data: dict, path: str, default: Constitution | None) -> Constitution:
    def bad(field: str, problem: str) -> ConfigError:
        return ConfigError(f"{path}: field {field!r}: {problem}")

    known = {"principles", "templates", *TEXTS, *PAIRS}
    for key in data:
        if key not in known:
            raise bad(str(key), f"unknown (a constitution has {', '.join(sorted(known))})")
    if "principles" not in data:
        raise bad("principles", "missing")
    raw = data["principles"]
    if not isinstance(raw, list) or not raw:
        raise bad("principles", "expected a non-empty list of principles" if isinstance(raw, list) or raw is None
                  else f"expected a list of principles, got {type(raw).__name__}")
    principles = tuple(_principle(p, f"principles[{i}]", bad) for i, p in enumerate(raw))
    names = [p.name for p in principles]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise bad(f"principles[{names.index(dup, names.index(dup) + 1)}].name", f"{dup!r} given twice")

    templates = data.get("templates") or {}
    if not isinstance(templates, dict):
        raise bad("templates", f"expected a mapping of templates, got {type(templates).__name__}")
    for name, text in templates.items():
        if name not in SLOTS:
            raise bad(f"templates.{name}", f"unknown template (known: {', '.join(SLOTS)})")
        _check_slots(text, SLOTS[name], f"templates.{name}", bad)
    missing = [n for n in SLOTS if n not in templates and default is None]
    if missing:
        raise bad(f"templates.{missing[0]}", "missing")
    filled = {n: templates.get(n, default.templates[n] if default else "") for n in SLOTS}

    texts = {}
    for name in TEXTS:
        value = data.get(name, getattr(default, name, None))
        if not isinstance(value, str) or not value.strip():
            raise bad(name, "missing" if value is None else "expected a non-empty string")
        texts[name] = value
    pairs = {}
    for name in PAIRS:
        value = data.get(name, getattr(default, name, None))
        if value is None:
            raise bad(name, "missing")
        if not (isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, str) and v.strip() for v in value)
                and value[0] != value[1]):
            raise bad(name, f"expected two different non-empty strings, got {value!r}")
        pairs[name] = tuple(value)
    return Constitution(path, principles, filled, **texts, **pairs)


def _principle(raw, where: str, bad) -> Principle:
    if not isinstance(raw, dict):
        raise bad(where, f"expected a mapping with {', '.join(PRINCIPLE_FIELDS)}, got {type(raw).__name__}")
    for key in raw:
        if key not in PRINCIPLE_FIELDS:
            raise bad(f"{where}.{key}", f"unknown (a principle has {', '.join(PRINCIPLE_FIELDS)})")
    for key in PRINCIPLE_FIELDS:
        value = raw.get(key)
        if value is None:
            raise bad(f"{where}.{key}", "missing")
        if not isinstance(value, str) or not value.strip():
            raise bad(f"{where}.{key}", f"expected a non-empty string, got {value!r}")
    return Principle(*(raw[k].strip() for k in PRINCIPLE_FIELDS))


def _check_slots(text, needed: set[str], field: str, bad) -> None:
    """The template's {slots} are exactly `needed` (a missing one would silently leave out what the judge
    must see; an unknown one could never be filled)."""
    if not isinstance(text, str):
        raise bad(field, f"expected a string, got {type(text).__name__}")
    try:
        found = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:  # a lone { or }
        raise bad(field, f"{e} (write a literal brace as {{{{ or }}}})") from None
    if lack := sorted(needed - found):
        raise bad(field, f"missing slot{'s' if len(lack) > 1 else ''} {', '.join('{' + s + '}' for s in lack)}")
    if extra := sorted(found - needed):
        allowed = ", ".join("{" + s + "}" for s in sorted(needed)) or "none"
        raise bad(field, f"unknown slot {{{extra[0]}}} (allowed: {allowed})")
