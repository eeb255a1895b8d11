"""Load data in the formats people already have, into the record types of `rlhfkit.data.records`.

Sources (nothing is ever downloaded):
  * a `.jsonl` file (blank lines allowed), or a `.parquet` file;
  * a directory saved by `datasets` `save_to_disk` (it holds `state.json` /
    `dataset_info.json`); a saved `DatasetDict` (`dataset_dict.json`) gives the split `split=`;
  * a directory of `.jsonl` / `.parquet` files, searched recursively. When file
    or folder names carry split names (`train.jsonl`, `data/test-00000.parquet`)
    only the files of `split=` are read; otherwise all of them are.
A single file is one split: `split=` does not apply to it.

Schemas, in the field names of TRL and the Hugging Face hub:
  * SFT: `prompt` + `completion`, each a string or a list of `{role, content}`
    messages (TRL's conversational form), or `messages` alone, whose final
    assistant message is the completion and the earlier ones the prompt; or
    `text` alone (TRL's language-modelling form: every token is trained, no
    chat template).
  * Preferences: `prompt` + `chosen` + `rejected` as strings or messages; or
    `chosen` / `rejected` as whole conversations sharing a prefix ("implicit
    prompt"). Optional `source`, `annotator`, `group`, `meta`.
  * Prompts: `prompt` (string or messages) or `messages` (a final assistant
    reply, if any, is not part of the prompt).
A prompt given as messages keeps all of them (system turn, earlier turns): every
stage renders the whole conversation (`rlhfkit.data.records.Prompt`).
Columns a schema does not use go into the record's `meta`. A null counts as an
absent field (columnar formats fill missing columns with nulls).

Nothing is dropped silently: every malformed row raises `DataError` naming the
file, the line (JSONL, 1-based) or row (Parquet / datasets, 0-based as in
`ds[N]`) and the field, e.g. `pairs.jsonl:5: missing field 'rejected'`; a row of
another stage's format says which format it is (`row_format`), e.g. demonstrations
given to `rm`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from typing import Any, Iterable

from rlhfkit.data.readers import DataError, _field_error, _kind, read_records  # noqa: F401  (DataError, read_records: API)
from rlhfkit.data.records import SOURCES, Comparison, Example, Message, Prompt, as_prompt
from rlhfkit.files import atomic_open

ROLES = ("user", "assistant", "system")

# ---------------------------------------------------------------- public API


def load_sft(path: str, split: str = "train") -> list[Example]:
    """Every row of `path` as an `Example` (see the module docstring for the accepted schemas)."""
    return [parse_example(row, loc) for loc, row in read_records(path, split)]


def load_preferences(path: str, split: str = "train") -> list[Comparison]:
    """Every row of `path` as a `Comparison`."""
    return [parse_comparison(row, loc) for loc, row in read_records(path, split)]


def load_prompts(path: str, split: str = "train") -> list[tuple[Message, ...]]:
    """Every row of `path` as a prompt conversation (ending with a user message)."""
    return [parse_prompt(row, loc) for loc, row in read_records(path, split)]


def prompt_list(path: str, split: str = "train") -> list[Prompt]:
    """The prompts of `path` in file order, as policies answer them: a user string, or the whole conversation
    (system turn and earlier turns kept) where there is more than one user message."""
    return [as_prompt(conv) for conv in load_prompts(path, split)]


def prompts_and_columns(path: str, split: str = "train") -> tuple[list[Prompt], dict[str, list]]:
    """`prompt_list(path)` and the rows' other columns (e.g. a reference `answer`), each a list aligned
    with the prompts (None where a row has no such column): what a custom reward receives."""
    prompts, rows = [], []
    for loc, row in read_records(path, split):
        prompts.append(as_prompt(parse_prompt(row, loc)))
        rows.append(_meta(row, ("prompt", "messages"), loc))
    return prompts, {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}


def split_heldout(records: list, fraction: float, seed: int, path: str, what: str, heldout: list | None = None):
    """`(held-out, train)`: `heldout` (records of an eval split) when given, else a seeded `fraction` of
    `records` (at least one); the training records are shuffled by `seed` either way. A DataError, before
    any model loads, when nothing would be left to train on."""
    records = list(records)
    random.Random(seed).shuffle(records)
    if heldout is not None:
        return list(heldout), records
    n_held = max(1, int(len(records) * fraction))
    check_enough(path, len(records), n_held, what)
    return records[:n_held], records[n_held:]


def check_enough(path: str, n: int, n_held: int, what: str) -> None:
    """DataError if `n` records leave nothing to train on once `n_held` are held out (before any model loads)."""
    if n - n_held < 1:
        raise DataError(f"{path}: {n} {what}: too few to hold out {n_held} and train on the rest "
                        f"(need at least {n_held + 1})")


def write_jsonl(path: str, rows: Iterable[Any]) -> int:
    """Write dicts or record dataclasses as JSONL, atomically (temp file + rename); returns the row count.

    Readers never see a half-written file: the old content stays until the new
    one is complete on disk.
    """
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(_plain(row), ensure_ascii=False) + "\n")
            n += 1
    return n


# ---------------------------------------------------------------- rows -> records


def row_format(row: dict[str, Any]) -> str:
    """Which of the formats above a row is in, and which stages read it (for errors on a row given to the wrong stage)."""
    if _has(row, "chosen") or _has(row, "rejected"):
        return "a preference pair (prompt/chosen/rejected, the format `rm` and `dpo` read)"
    if _has(row, "label") and isinstance(row["label"], bool):
        return "an unpaired preference (prompt/completion/label, KTO's format, which no rlhfkit stage trains on)"
    if _has(row, "completion") or (_has(row, "messages") and isinstance(row["messages"], (list, tuple)) and row["messages"]
                                   and isinstance(row["messages"][-1], dict) and row["messages"][-1].get("role") == "assistant"):
        return "a demonstration (prompt/completion or messages, the format `sft` reads)"
    if _has(row, "prompt") or _has(row, "messages"):
        return "a prompt (prompt or messages, the format `ppo`, `rloo`, `grpo`, `sample` and `eval` read)"
    if _has(row, "text"):
        return "plain text (text, the language-modelling format `pretrain` and `sft` read)"
    return f"no known format (its columns: {', '.join(sorted(row)) or 'none'})"


def _one_form(row: dict[str, Any], loc: str) -> None:
    """A row gives `messages` or `prompt`, not both: which would win is a guess."""
    if _has(row, "messages") and _has(row, "prompt"):
        raise DataError(f"{loc}: both 'messages' and 'prompt' given; keep one")


def parse_example(row: dict[str, Any], loc: str) -> Example:
    """One SFT row -> `Example`: `prompt` + `completion`, or `messages`."""
    _one_form(row, loc)
    if _has(row, "label") and isinstance(row["label"], bool):  # TRL's unpaired preference format
        raise DataError(f"{loc}: field 'label': a (prompt, completion, label) row is an unpaired preference "
                        "(KTO's format: the completion is desirable or not), not a demonstration; SFT would imitate "
                        "the undesirable ones too. Train on the desirable rows only, or on pairs with `rm`/`dpo`")
    if _has(row, "text") and not any(_has(row, k) for k in ("prompt", "completion", "messages", "chosen", "rejected")):
        return Example((), _text(row["text"], loc, "text"), _meta(row, ("text",), loc))  # every token trained, no template
    if _has(row, "completion") or not _has(row, "messages"):
        if "completion" not in row:
            raise DataError(f"{loc}: missing field 'completion' (or give 'messages' or 'text'); the row is {row_format(row)}")
        prompt = _prompt(_required(row, "prompt", loc), loc, "prompt")
        completion = _reply(row["completion"], loc, "completion")
        return Example(prompt, completion, _meta(row, ("prompt", "completion"), loc))
    messages = _messages(row["messages"], loc, "messages")
    if messages[-1].role != "assistant":
        raise _field_error(loc, f"messages[{len(messages) - 1}].role",
                           f"the last message is the completion and must be from the assistant, got {messages[-1].role!r}; "
                           f"the row is {row_format(row)}")
    prompt = _prompt_end(messages[:-1], loc, "messages")
    return Example(prompt, messages[-1].content, _meta(row, ("messages",), loc))


ACCEPTABLE_FIELDS = ("chosen_acceptable", "rejected_acceptable")


def parse_comparison(row: dict[str, Any], loc: str) -> Comparison:
    """One preference row -> `Comparison` (explicit prompt, conversational, or implicit-prompt form)."""
    _one_form(row, loc)
    chosen, rejected = _required(row, "chosen", loc), _required(row, "rejected", loc)
    if isinstance(chosen, (list, tuple)) != isinstance(rejected, (list, tuple)):
        want = "a list of messages" if isinstance(chosen, (list, tuple)) else "a string"
        raise _field_error(loc, "rejected", f"expected {want} like 'chosen', got {_kind(rejected)}")
    if not _has(row, "prompt") and isinstance(chosen, str) and isinstance(rejected, str) \
            and _hh_turns(chosen) and _hh_turns(rejected):  # HH-RLHF: two whole transcripts, the prompt implicit
        chosen, rejected = ([{"role": m.role, "content": m.content} for m in _hh_turns(t)] for t in (chosen, rejected))
    if isinstance(chosen, (list, tuple)):
        prompt, chosen, rejected = _split_conversations(row, chosen, rejected, loc)
    else:
        prompt = as_prompt(_prompt(_required(row, "prompt", loc), loc, "prompt"))
        chosen, rejected = _text(chosen, loc, "chosen", True), _text(rejected, loc, "rejected", True)
    if chosen == rejected:
        raise _field_error(loc, "rejected", "identical to 'chosen': a pair of equal answers prefers nothing")
    provenance = {name: _optional_str(row, name, loc) for name in ("source", "annotator", "group")}
    if provenance["source"] is not None and provenance["source"] not in SOURCES:
        raise _field_error(loc, "source", f"expected one of {', '.join(SOURCES)}, got {provenance['source']!r}")
    used = ("prompt", "chosen", "rejected", "source", "annotator", "group")
    meta = _meta(row, used, loc)
    for name in ACCEPTABLE_FIELDS:  # optional absolute marks (rlhfkit.world.panel: the demo panel gives them): true / false
        if meta.get(name) is not None and not isinstance(meta[name], bool):
            raise _field_error(loc, f"meta.{name}", f"expected true or false, got {_kind(meta[name])}")
    margin = meta.get("margin")  # how much better chosen is (Llama 2's margin; the reward model subtracts it)
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin != margin
                               or abs(margin) == float("inf")):
        raise _field_error(loc, "margin", f"expected a finite number, got {margin!r}")
    return Comparison(prompt, chosen, rejected, meta=meta,
                      **{k: v for k, v in provenance.items() if v is not None})


def parse_prompt(row: dict[str, Any], loc: str) -> tuple[Message, ...]:
    """One prompt row -> conversation: `prompt` (string or messages) or `messages` minus a final reply."""
    _one_form(row, loc)
    if _has(row, "prompt") or not _has(row, "messages"):
        return _prompt(_required(row, "prompt", loc), loc, "prompt")
    messages = _messages(row["messages"], loc, "messages")
    if messages[-1].role == "assistant":
        messages = messages[:-1]
    return _prompt_end(messages, loc, "messages")


# ---------------------------------------------------------------- field checks


def _has(row: dict, name: str) -> bool:
    return row.get(name) is not None


def _required(row: dict, name: str, loc: str) -> Any:
    if name not in row:
        raise DataError(f"{loc}: missing field {name!r}; the row is {row_format(row)}")
    return row[name]


def _text(value: Any, loc: str, field: str, allow_empty: bool = False) -> str:
    """A required piece of text: a string with something in it (or possibly empty: a
    model's empty answer is a real, usually bad, response that preferences may rank)."""
    if not isinstance(value, str):
        raise _field_error(loc, field, f"expected a string, got {_kind(value)}")
    if not allow_empty and not value.strip():
        raise _field_error(loc, field, "expected a non-empty string, got an empty one")
    return value


def _messages(value: Any, loc: str, field: str) -> tuple[Message, ...]:
    """A non-empty list of `{role, content}` dicts -> Messages."""
    if not isinstance(value, (list, tuple)):
        raise _field_error(loc, field, f"expected a list of messages, got {_kind(value)}")
    if not value:
        raise _field_error(loc, field, "expected a non-empty list of messages, got an empty list")
    out = []
    for i, m in enumerate(value):
        at = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise _field_error(loc, at, f"expected a message {{role, content}}, got {_kind(m)}")
        extra = [k for k, v in m.items() if k not in ("role", "content") and v is not None]
        if extra:  # tool calls, names, ...: refusing them beats quietly training without them
            raise _field_error(loc, at, f"unexpected key {extra[0]!r} (a message has role and content)")
        if m.get("role") not in ROLES:
            raise _field_error(loc, f"{at}.role", f"expected one of {', '.join(ROLES)}, got {m.get('role')!r}")
        out.append(Message(m["role"], _text(m.get("content"), loc, f"{at}.content")))
    return tuple(out)


def _prompt(value: Any, loc: str, field: str) -> tuple[Message, ...]:
    """A prompt given as a user string, an Anthropic HH transcript ("\\n\\nHuman: ...\\n\\nAssistant:"), or
    messages ending with a user turn."""
    if not isinstance(value, (list, tuple)):
        turns = _hh_turns(_text(value, loc, field))
        if turns is None:
            return (Message("user", value),)
        if turns[-1] == Message("assistant", ""):  # the open assistant cue ends an HH prompt
            turns = turns[:-1]
        return _prompt_end(turns, loc, field)
    return _prompt_end(_messages(value, loc, field), loc, field)


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def _hh_turns(text: str) -> tuple[Message, ...] | None:
    """The turns of an Anthropic HH-RLHF transcript, or None if `text` is not one. Such a string wrapped as
    one user message would reach the model in two chat formats at once."""
    if not text.startswith("\n\nHuman:") or "\n\nAssistant:" not in text:
        return None
    parts = _HH_TURN.split(text)[1:]  # [role, content, role, content, ...]
    return tuple(Message("user" if role == "Human" else "assistant", content.strip())
                 for role, content in zip(parts[::2], parts[1::2]))


def _prompt_end(messages: tuple[Message, ...], loc: str, field: str) -> tuple[Message, ...]:
    """Check that a prompt conversation is non-empty and ends with the user's turn."""
    if not messages:
        raise _field_error(loc, field, "expected a user message before the assistant's reply")
    if messages[-1].role != "user":
        raise _field_error(loc, f"{field}[{len(messages) - 1}].role",
                           f"a prompt must end with a user message, got {messages[-1].role!r}")
    return messages


def _reply(value: Any, loc: str, field: str) -> str:
    """A response given as a string or as a one-message assistant list."""
    if not isinstance(value, (list, tuple)):
        return _text(value, loc, field)
    return _one_reply(_messages(value, loc, field), loc, field, 0)


def _one_reply(messages: tuple[Message, ...], loc: str, field: str, offset: int) -> str:
    """The single assistant message left after the prompt; `offset` is its index in the original list."""
    if len(messages) != 1:
        raise _field_error(loc, field, f"expected one assistant reply after the prompt, got {len(messages)} messages")
    if messages[0].role != "assistant":
        raise _field_error(loc, f"{field}[{offset}].role", f"expected 'assistant', got {messages[0].role!r}")
    return messages[0].content


def _split_conversations(row: dict, chosen: list, rejected: list, loc: str) -> tuple[Prompt, str, str]:
    """Conversational pairs -> (prompt, chosen reply, rejected reply).

    With `prompt`, a chosen/rejected list that repeats it (hub datasets such as
    UltraFeedback-binarized) has it removed; without, the prompt is the longest
    prefix the two conversations share (TRL's implicit-prompt form).
    """
    c, r = _messages(chosen, loc, "chosen"), _messages(rejected, loc, "rejected")
    if _has(row, "prompt"):
        prompt = _prompt(row["prompt"], loc, "prompt")
        n_c = len(prompt) if c[: len(prompt)] == prompt else 0
        n_r = len(prompt) if r[: len(prompt)] == prompt else 0
    else:
        if c == r:
            raise _field_error(loc, "rejected", "the same conversation as 'chosen'")
        n_c = n_r = next((i for i, (a, b) in enumerate(zip(c, r)) if a != b), min(len(c), len(r)))
        if n_c == 0:
            raise _field_error(loc, "chosen", "no prompt: give 'prompt', or chosen and rejected conversations that start alike")
        prompt = _prompt_end(c[:n_c], loc, "chosen")
    return as_prompt(prompt), _one_reply(c[n_c:], loc, "chosen", n_c), _one_reply(r[n_r:], loc, "rejected", n_r)


def _optional_str(row: dict, name: str, loc: str) -> str | None:
    value = row.get(name)
    if value is not None and not isinstance(value, str):
        raise _field_error(loc, name, f"expected a string, got {_kind(value)}")
    return value


def _meta(row: dict, used: tuple[str, ...], loc: str) -> dict[str, Any]:
    """`meta` of the row, plus every non-null column the schema did not use."""
    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise _field_error(loc, "meta", f"expected a mapping, got {_kind(meta)}")
    extra = {k: v for k, v in row.items() if k not in used and k != "meta" and v is not None}
    return {**extra, **(meta or {})}


def _plain(row: Any) -> Any:
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return dataclasses.asdict(row)
    return row
