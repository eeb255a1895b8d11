"""The feedback store's schema, the records it returns, its engine setup and its pure helpers.

`rlhfkit.feedback.store.FeedbackStore` is the API; this module is what it is
built from: the SQLAlchemy tables, the SQLite engine settings (WAL, busy
timeout, BEGIN IMMEDIATE for writes), and the functions that need no database
(ranking -> pairs, judgement -> comparisons, queue-row and import-record parsing).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from sqlalchemy import (JSON, Boolean, Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text,
                        UniqueConstraint, create_engine, event)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from rlhfkit.data.loaders import ACCEPTABLE_FIELDS, DataError, parse_comparison, parse_prompt
from rlhfkit.data.records import Comparison, Message, Prompt, as_prompt, prompt_json, prompt_line

# ---------------------------------------------------------------- schema

metadata = MetaData()

prompts = Table(
    "prompts", metadata,
    Column("id", Integer, primary_key=True),
    Column("text", Text, nullable=False),  # the user string; for a conversation, its last user message
    Column("text_sha", String(64), nullable=False, unique=True),  # unique by prompt; a hash indexes on any backend
    Column("family", String(64)),
    Column("messages", JSON),  # a conversation (system turn, history) as [{role, content}]; null for a user string
    Column("meta", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)
responses = Table(
    "responses", metadata,
    Column("id", Integer, primary_key=True),
    Column("prompt_id", Integer, ForeignKey("prompts.id"), nullable=False),
    Column("text", Text, nullable=False),
    Column("text_sha", String(64), nullable=False),
    Column("policy", String(512), nullable=False),
    Column("meta", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("prompt_id", "text_sha", "policy"),
)
annotators = Table(
    "annotators", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("token_sha", String(64), unique=True),  # SHA-256 of a person's login token; the token is never stored
    Column("meta", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)
queue_items = Table(
    "queue_items", metadata,
    Column("id", Integer, primary_key=True),
    Column("prompt_id", Integer, ForeignKey("prompts.id"), nullable=False),
    Column("response_ids", JSON, nullable=False),  # list[int], the order they were enqueued in
    Column("key", String(64), nullable=False, unique=True),  # hash of (prompt, response set): enqueue is idempotent
    Column("overlap", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)
assignments = Table(
    "assignments", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("queue_items.id"), nullable=False),
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
    Column("status", String(8), nullable=False),  # leased | done | skipped
    Column("leased_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    UniqueConstraint("item_id", "annotator_id"),  # an item never goes to one annotator twice
    Index("ix_assignments_item_status", "item_id", "status"),
)
judgements = Table(
    "judgements", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("queue_items.id")),  # null for judgements written outside the queue
    Column("prompt_id", Integer, ForeignKey("prompts.id"), nullable=False),
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
    Column("source", String(16), nullable=False),  # human | simulated | ai
    Column("kind", String(16), nullable=False),  # ranking | pairwise
    Column("ranking", JSON),  # ranking: response ids, best first
    Column("a_id", Integer, ForeignKey("responses.id")),  # pairwise: the two responses as shown ...
    Column("b_id", Integer, ForeignKey("responses.id")),
    Column("choice", String(16)),  # ... and the verdict a | b | tie | both_bad
    Column("flag_harmful", Boolean, nullable=False),
    Column("note", Text, nullable=False),
    Column("key", String(128), unique=True),  # idempotency key
    Column("group_key", String(256)),  # `group` of imported pairs; native judgements use their id
    Column("meta", JSON, nullable=False),
    Column("seconds", Float),  # from lease to judgement, when it came through the queue
    Column("judge", String(512)),  # an AI judgement: the judge model (a path or name) ...
    Column("principle", String(128)),  # ... the constitution principle it judged under ...
    Column("prob", Float),  # ... and its P(a better than b), swap-debiased (rlhfkit.feedback.judge)
    Column("created_at", Float, nullable=False),
    UniqueConstraint("item_id", "annotator_id"),  # one judgement per annotator and item (NULL items never clash)
    Index("ix_judgements_annotator", "annotator_id", "id"),
)
settings = Table(
    "settings", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


# Columns added after a table's first release: FeedbackStore adds them to an older database on open.
ADDED_COLUMNS = {
    "prompts": {"messages": "JSON"},
    "judgements": {"judge": "VARCHAR(512)", "principle": "VARCHAR(128)", "prob": "FLOAT"},
}


# ---------------------------------------------------------------- records returned


@dataclass(frozen=True)
class Response:
    id: int
    text: str
    policy: str


@dataclass(frozen=True)
class Item:
    """A queue item: a prompt and the K >= 2 responses to judge (enqueue order)."""

    id: int
    prompt_id: int
    prompt: Prompt  # the user string, or the conversation
    family: str | None
    responses: tuple[Response, ...]
    overlap: int


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    kind: str  # human | simulated | ai
    token_sha: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- engine


def db_url(db: str) -> str:
    """An SQLAlchemy URL from a URL or a plain file path (-> SQLite)."""
    return db if "://" in db else f"sqlite:///{os.path.abspath(db)}"


def make_engine(url: str) -> Engine:
    """An engine whose SQLite connections use WAL, a 30 s busy timeout and explicit BEGIN [IMMEDIATE]."""
    url = db_url(url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    memory = url in ("sqlite://", "sqlite:///:memory:")
    # One shared connection for an in-memory database (each connection would otherwise get its own, empty one).
    engine = create_engine(url, poolclass=StaticPool if memory else None,
                           connect_args={"check_same_thread": False, "timeout": 30})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_conn, _record) -> None:
    # The sqlite3 module's own implicit BEGIN is off: SQLAlchemy's "begin" event emits ours (the SQLAlchemy
    # docs' recipe), so a write transaction can start with BEGIN IMMEDIATE.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout = 30000")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = FULL")  # an acknowledged label survives a power cut, not just a crash
    cur.execute("PRAGMA foreign_keys = ON")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("immediate") else "BEGIN")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- pure helpers


def ranking_pairs(ranking: list[int]) -> list[tuple[int, int]]:
    """All (better, worse) pairs of a best-first ranking: K(K-1)/2 of them, in ranking order."""
    return [(ranking[i], ranking[j]) for i in range(len(ranking)) for j in range(i + 1, len(ranking))]


def judgement_pairs(row: Any) -> list[tuple[int, int]]:
    """(better, worse) response ids of one judgement row; ties and both_bad give none."""
    if row.kind == "ranking":
        return ranking_pairs(row.ranking)
    return {"a": [(row.a_id, row.b_id)], "b": [(row.b_id, row.a_id)]}.get(row.choice, [])


def prompt_key(prompt: Prompt) -> tuple[str, str, list | None]:
    """`(text, text_sha, messages)` of a prompt's row: a user string keyed by its text (as always), a
    conversation by its messages, so two conversations ending with the same question stay two prompts."""
    if isinstance(prompt, str):
        return prompt, _sha(prompt), None
    messages = prompt_json(prompt)
    return prompt_line(prompt), _sha("conversation:" + json.dumps(messages, ensure_ascii=False)), messages


def prompt_of(row: Any) -> Prompt:
    """The prompt a prompts row (with `text` and `messages`) holds."""
    if row.messages:
        return as_prompt(tuple(Message(m["role"], m["content"]) for m in row.messages))
    return row.text


def judgement_comparisons(row: Any, prompt: Any, texts: dict[int, Any]) -> list[Comparison]:
    """One judgement row (joined with its annotator's name) as `Comparison`s; `prompt` is its prompts row,
    `texts` maps response id -> responses row. `group` = the judgement id (or an imported group).

    A judgement whose meta lists the responses its annotator marked `acceptable` gives each pair
    `meta.chosen_acceptable` / `meta.rejected_acceptable` (what `rm` fits the absolute term on).
    An AI judgement's pairs carry `meta.judge`, `meta.principle` and `meta.prob`: the judge's
    probability that the chosen response is the better one (a soft label).
    """
    extra = dict(row.meta)
    ok = extra.pop("acceptable", None)  # ids the annotator marked acceptable -> a mark on each side
    out = []
    for better, worse in judgement_pairs(row):
        meta = {"family": prompt.family, "chosen_policy": texts[better].policy,
                "rejected_policy": texts[worse].policy, "judgement": row.id, "flag_harmful": row.flag_harmful}
        if ok is not None:
            meta.update(zip(ACCEPTABLE_FIELDS, (better in ok, worse in ok)))
        if row.note:
            meta["note"] = row.note
        if getattr(row, "prob", None) is not None:  # an AI judge's soft label, oriented to the chosen side
            meta.update(judge=row.judge, principle=row.principle, prob=row.prob if better == row.a_id else 1.0 - row.prob)
        out.append(Comparison(prompt_of(prompt), texts[better].text, texts[worse].text, source=row.source,
                              annotator=row.annotator, group=row.group_key or str(row.id), meta={**meta, **extra}))
    return out


def parse_import_record(row: dict[str, Any], loc: str, source: str | None) -> tuple[Comparison, str, str]:
    """One preference record to import -> (comparison, source, idempotency key); DataError names `loc`.

    `source` fills a record that carries none; a record naming a different one is an error. The key is
    the hash of the record's content, so importing a file twice writes nothing the second time.
    """
    comp = parse_comparison(row, loc)
    if source is not None and row.get("source") not in (None, source):
        raise DataError(f"{loc}: field 'source': expected {source!r}, got {row['source']!r}")
    key = "import:" + _sha(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str))
    return comp, row.get("source") or source or "human", key


def parse_queue_row(row: dict[str, Any], loc: str) -> tuple[Prompt, list[tuple[str, str, dict]], str | None]:
    """One queue row -> (prompt, [(response, policy, meta)], family).

    Accepts `rlhfkit sample` rows `{"prompt", "responses": [...], "policy"?, "terminated"?: [...], "family"?}`
    and single rows `{"prompt", "response", "policy"?}`. Raises DataError naming `loc` and the field.
    """
    def bad(name: str, problem: str) -> DataError:
        return DataError(f"{loc}: field {name!r}: {problem}")

    def text(value: Any, name: str, empty_ok: bool = True) -> str:
        # A sampled response may be empty (EOS first): still a response to judge. A prompt may not.
        if not isinstance(value, str) or not (empty_ok or value.strip()):
            kind = "null" if value is None else "an empty string" if value == "" else type(value).__name__
            raise bad(name, f"expected a {'' if empty_ok else 'non-empty '}string, got {kind}")
        return value

    if "prompt" not in row:
        raise DataError(f"{loc}: missing field 'prompt'")
    prompt = text(row["prompt"], "prompt", empty_ok=False) if not isinstance(row["prompt"], list) \
        else as_prompt(parse_prompt(row, loc))  # a conversation: `rlhfkit sample` on multi-turn prompts
    policy = row.get("policy") or ""
    if not isinstance(policy, str):
        raise bad("policy", f"expected a string, got {type(policy).__name__}")
    family = row.get("family")
    if family is not None and not isinstance(family, str):
        raise bad("family", f"expected a string, got {type(family).__name__}")
    if ("responses" in row) == ("response" in row):
        raise DataError(f"{loc}: missing field 'responses'" if "response" not in row
                        else f"{loc}: give either 'responses' or 'response', not both")
    if "response" in row:
        return prompt, [(text(row["response"], "response"), policy, {})], family
    texts = row["responses"]
    if not isinstance(texts, list):
        raise bad("responses", f"expected a list of strings, got {type(texts).__name__}")
    terminated = row.get("terminated")
    if terminated is not None and (not isinstance(terminated, list) or len(terminated) != len(texts)):
        raise bad("terminated", "expected a list as long as 'responses'")
    out = [(text(t, f"responses[{i}]"), policy, {} if terminated is None else {"terminated": bool(terminated[i])})
           for i, t in enumerate(texts)]
    return prompt, out, family


def group_queue(parsed: Iterable[tuple[Prompt, list[tuple[str, str, dict]], str | None]]) -> list[dict]:
    """Merge parsed rows by prompt (first-appearance order); identical response texts are kept once."""
    groups: dict[Prompt, dict] = {}
    for prompt, resps, family in parsed:
        g = groups.setdefault(prompt, {"prompt": prompt, "family": family, "responses": {}})
        g["family"] = g["family"] or family
        for text, policy, meta in resps:
            g["responses"].setdefault(text, (policy, meta))  # two identical texts carry no preference
    return list(groups.values())
