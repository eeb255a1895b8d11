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
from typing import Any, Union

SOURCES = ("human", "simulated", "ai")


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


# What a policy answers: a user string, or a whole conversation (messages ending with a user turn, system
# turn and history kept). A conversation of one user message is always given as its string, so the two
# forms of the same prompt never differ (one key, one store row).
Prompt = Union[str, tuple[Message, ...]]


def as_prompt(messages: tuple[Message, ...]) -> Prompt:
    """A conversation as a `Prompt`: the string when it is one user message, else the messages."""
    return messages[0].content if len(messages) == 1 and messages[0].role == "user" else tuple(messages)


def prompt_json(prompt: Prompt) -> str | list[dict[str, str]]:
    """A prompt in the JSON form the loaders read back: a string (also for a one-user-message conversation),
    or a list of {role, content}."""
    prompt = prompt if isinstance(prompt, str) else as_prompt(tuple(prompt))
    return prompt if isinstance(prompt, str) else [{"role": m.role, "content": m.content} for m in prompt]


def prompt_line(prompt: Prompt) -> str:
    """A prompt as one line of text for logs: a string as is, a conversation as its last user message."""
    return prompt if isinstance(prompt, str) else prompt[-1].content


@dataclass(frozen=True)
class Example:
    """One supervised demonstration: a conversation whose last turn is the target."""

    prompt: tuple[Message, ...]  # the conversation so far (ends with a user turn); () for a plain-text document
    completion: str  # the ideal assistant reply (or the whole document)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """The last user message (what the built-in world's gold function parses)."""
        return self.prompt[-1].content if self.prompt else ""


@dataclass(frozen=True)
class Comparison:
    """A preference pair: `chosen` was preferred to `rejected` for `prompt`.

    `group` keys the pairs that came from one ranking of one prompt: the reward
    model keeps a group inside one batch (InstructGPT, to avoid overfitting on
    correlated pairs). `source` says who judged: human | simulated | ai.
    """

    prompt: Prompt  # a user string, or the conversation (system turn and history kept)
    chosen: str
    rejected: str
    source: str = "human"
    annotator: str = ""
    group: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "prompt": prompt_json(self.prompt)}


@dataclass(frozen=True)
class Sample:
    """A sampled response to a prompt, as written by `rlhfkit sample`/`generate`."""

    prompt: str
    response: str
    policy: str = ""
    prompt_id: str = ""
    terminated: bool = True  # the model emitted EOS before the length limit
    meta: dict[str, Any] = field(default_factory=dict)
