"""Constitutions: the packaged default loads; a file with a missing field, an empty principle list or a
template without the slots it needs fails with an error naming the file and the field."""

from __future__ import annotations

import random

import pytest
import yaml

from rlhfkit.config import ConfigError
from rlhfkit.feedback.constitution import DEFAULT, SLOTS, load_constitution

PRINCIPLE = {"name": "honest", "critique": "What is false?", "revision": "Make it true.", "comparison": "Which is truer?"}


def write(tmp_path, data) -> str:
    path = tmp_path / "mine.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_the_default_constitution_loads_and_fills_its_templates():
    c = load_constitution()
    assert c.path == DEFAULT and len(c.principles) >= 3 and set(c.templates) == set(SLOTS)
    assert {"harmless", "helpful", "honest"} <= {p.name for p in c.principles}
    text = c.fill("compare", prompt="Q {x}", principle="Which?", a="first", b="second")
    assert "Q {x}" in text and "(A) first" in text and "(B) second" in text  # values are inserted verbatim
    assert c.sample(random.Random(0)) == c.sample(random.Random(0))  # seeded draws
    assert len({c.sample(random.Random(s)).name for s in range(40)}) == len(c.principles)


def test_a_user_file_keeps_the_default_templates_it_does_not_replace(tmp_path):
    c = load_constitution(write(tmp_path, {"principles": [PRINCIPLE], "templates": {"verdict": "Verdict: "},
                                           "labels": ["1", "2"]}))
    assert c.principles[0].name == "honest" and c.labels == ("1", "2")
    assert c.templates["verdict"] == "Verdict: " and c.templates["compare"] == load_constitution().templates["compare"]


@pytest.mark.parametrize("data, field, problem", [
    ({}, "principles", "missing"),
    ({"principles": []}, "principles", "non-empty list"),
    ({"principles": None}, "principles", "non-empty list"),
    ({"principles": "be nice"}, "principles", "expected a list"),
    ({"principles": [PRINCIPLE, {k: v for k, v in PRINCIPLE.items() if k != "revision"} | {"name": "b"}]},
     "principles[1].revision", "missing"),
    ({"principles": [PRINCIPLE | {"critique": "  "}]}, "principles[0].critique", "non-empty string"),
    ({"principles": [PRINCIPLE | {"weight": 2}]}, "principles[0].weight", "unknown"),
    ({"principles": [PRINCIPLE, PRINCIPLE]}, "principles[1].name", "given twice"),
    ({"principles": [PRINCIPLE], "templates": {"compare": "{prompt} {principle} (A) {a}"}}, "templates.compare", "missing slot {b}"),
    ({"principles": [PRINCIPLE], "templates": {"rate": "{prompt} {answer} {question}"}}, "templates.rate", "missing slot {response}"),
    ({"principles": [PRINCIPLE], "templates": {"critique": "{request} {principle}"}}, "templates.critique", "unknown slot {principle}"),
    ({"principles": [PRINCIPLE], "templates": {"revision": "{request"}}, "templates.revision", "literal brace"),
    ({"principles": [PRINCIPLE], "templates": {"judge": "{prompt}"}}, "templates.judge", "unknown template"),
    ({"principles": [PRINCIPLE], "labels": ["A", "A"]}, "labels", "two different"),
    ({"principles": [PRINCIPLE], "rating": ""}, "rating", "non-empty string"),
    ({"principles": [PRINCIPLE], "principle": []}, "principle", "unknown"),
])
def test_a_bad_constitution_names_the_file_and_the_field(tmp_path, data, field, problem):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_constitution(path)
    assert str(e.value).startswith(f"{path}: field {field!r}: ") and problem in str(e.value), str(e.value)


def test_an_unreadable_constitution_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_constitution(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"mine.yaml: invalid YAML"):
        load_constitution(write(tmp_path, "principles: [\n"))
