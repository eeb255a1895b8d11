"""Record types that flow between stages.

Every stage reads and writes these plain dataclasses, never another stage's
internals: SFT reads `Example`s, the feedback store turns rankings into
`Comparison`s whatever produced them (a person in the web app, a simulated
annotator, an AI judge), and the reward model and DPO read `Comparison`s.
They serialise to the field names the Hugging Face hub and TRL use
(`prompt`/`completion`, `prompt`/`chosen`/`rejected`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SOURCES = ("human", "simulated", "ai")


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Example:
    """One supervised demonstration: a conversation whose last turn is the target."""

    prompt: tuple[Message, ...]  # the conversation so far (ends with a user turn)
    completion: str  # the ideal assistant reply
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """The last user message (what the built-in world's gold function parses)."""
        return self.prompt[-1].content


@dataclass(frozen=True)
class Comparison:
    """A preference pair: `chosen` was preferred to `rejected` for `prompt`.

    `group` keys the pairs that came from one ranking of one prompt: the reward
    model keeps a group inside one batch (InstructGPT, to avoid overfitting on
    correlated pairs). `source` says who judged: human | simulated | ai.
    """

    prompt: str
    chosen: str
    rejected: str
    source: str = "human"
    annotator: str = ""
    group: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    """A sampled response to a prompt, as written by `rlhfkit sample`/`generate`."""

    prompt: str
    response: str
    policy: str = ""
    prompt_id: str = ""
    terminated: bool = True  # the model emitted EOS before the length limit
    meta: dict[str, Any] = field(default_factory=dict)
