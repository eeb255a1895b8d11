"""The feedback store: prompts, responses, a labelling queue and judgements in one SQL database.

People in the web app, the simulated panel and an AI judge all write the same
`judgements` rows (`source` = human | simulated | ai); `preference_pairs` turns
them into the `Comparison` records the reward model and DPO read:

    ranking [r1, r2, ..., rK] (best first)  ->  K(K-1)/2 pairs (ri, rj) for i < j
    pairwise a | b                          ->  one pair
    pairwise tie | both_bad                 ->  no pair (kept for agreement statistics)

Any SQLAlchemy URL works; SQLite is the default. On SQLite every connection runs
in WAL mode with a busy timeout, and every write is one `BEGIN IMMEDIATE`
transaction: writers queue on the database lock instead of failing with
"database is locked" when a read transaction tries to upgrade (WAL never lets a
stale reader write). An idempotency key (UNIQUE) makes a re-submitted judgement
a no-op that returns the first one, so a client may retry after a lost reply.

Queue semantics: an item (a prompt and K response ids) should be judged by
`overlap` different annotators. `next_item` leases an item for `lease_minutes`;
a slot counts as taken while its lease is live or once judged, never goes twice
to one annotator, and frees again when the lease expires or the annotator skips.
A judgement that arrives after its lease expired is still kept (labels are
never dropped), so an item can end up with one judgement more than its overlap.
The queue's SQL (enqueue, open slots, loading an item) is in `rlhfkit.feedback.queue`.
"""

from __future__ import annotations

import os
import secrets
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from sqlalchemy import delete, func, insert, inspect, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from rlhfkit.data.loaders import DataError, read_records, write_jsonl
from rlhfkit.data.records import SOURCES, Comparison, Prompt
from rlhfkit.feedback.agreement import ai_audit, judgement_stats
from rlhfkit.feedback.queue import enqueue_item, load_item, open_items
from rlhfkit.feedback.schema import (ADDED_COLUMNS, Annotator, Item, _sha, annotators, assignments, group_queue,
                                     judgement_comparisons, judgements, make_engine, metadata, parse_import_record,
                                     parse_queue_row, prompt_key, prompt_of, prompts, queue_items, responses, settings)

KINDS = ("human", "simulated", "ai")  # annotator kinds
CHOICES = ("a", "b", "tie", "both_bad")  # pairwise verdicts
MAX_NOTE = 2000  # characters kept of a free-text note


class Conflict(ValueError):
    """A write that contradicts what is stored (a second judgement of one item, a key reused by someone else)."""


# ---------------------------------------------------------------- the store


class FeedbackStore:
    """Thin methods over the tables above; every write is one transaction.

    `clock` (seconds, like time.time) is injectable so lease expiry can be tested without sleeping.
    """

    def __init__(self, url: str = "sqlite:///feedback.db", lease_minutes: float = 30.0,
                 clock: Callable[[], float] = time.time):
        self.engine = make_engine(url)
        self.lease_seconds = lease_minutes * 60.0
        self.clock = clock
        with self._write() as c:  # serialised, so processes opening a new database together do not race
            metadata.create_all(c)
            for table, columns in ADDED_COLUMNS.items():  # a store made before conversations / AI judgements
                have = {col["name"] for col in inspect(c).get_columns(table)}
                for name, kind in columns.items():
                    if name not in have:
                        c.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))
        path = self.engine.url.database if self.engine.url.get_backend_name() == "sqlite" else None
        for f in ([path, path + "-wal", path + "-shm"] if path and path != ":memory:" else []):
            if os.path.exists(f):  # labels, tokens' hashes and the session-signing key: owner only
                os.chmod(f, 0o600)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(immediate=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _retrying(self, fn: Callable[[Connection], Any]) -> Any:
        """Run `fn` in a write transaction, once more if a concurrent insert won a UNIQUE race.

        On SQLite BEGIN IMMEDIATE already serialises writers; on server databases two get-or-creates can both
        miss and both insert, and the loser's retry then finds the winner's row.
        """
        try:
            with self._write() as c:
                return fn(c)
        except IntegrityError:
            with self._write() as c:
                return fn(c)

    # -- prompts, responses, annotators

    def add_prompt(self, prompt: Prompt, family: str | None = None, meta: dict | None = None) -> int:
        """The id of this prompt (a user string or a conversation), created if new."""
        return self._retrying(lambda c: self._prompt_id(c, prompt, family, meta))

    def _prompt_id(self, c: Connection, prompt: Prompt, family: str | None = None, meta: dict | None = None) -> int:
        text, sha, messages = prompt_key(prompt)
        pid = c.scalar(select(prompts.c.id).where(prompts.c.text_sha == sha))
        if pid is None:
            pid = c.execute(insert(prompts).values(text=text, text_sha=sha, family=family, messages=messages,
                                                   meta=meta or {}, created_at=self.clock())).inserted_primary_key[0]
        return pid

    def add_responses(self, prompt_id: int, texts: list[str], policy: str = "", meta: dict | list[dict] | None = None
                      ) -> list[int]:
        """Ids of these responses to `prompt_id` (get-or-create by prompt, text and policy), in input order.

        `meta` is one dict for all responses or one per response.
        """
        metas = meta if isinstance(meta, list) else [meta or {}] * len(texts)
        return self._retrying(lambda c: [self._response_id(c, prompt_id, t, policy, m) for t, m in zip(texts, metas)])

    def _response_id(self, c: Connection, prompt_id: int, text: str, policy: str, meta: dict | None = None) -> int:
        sha = _sha(text)
        rid = c.scalar(select(responses.c.id).where(responses.c.prompt_id == prompt_id, responses.c.text_sha == sha,
                                                    responses.c.policy == policy))
        if rid is None:
            if c.scalar(select(prompts.c.id).where(prompts.c.id == prompt_id)) is None:
                raise LookupError(f"no prompt with id {prompt_id}")
            rid = c.execute(insert(responses).values(prompt_id=prompt_id, text=text, text_sha=sha, policy=policy,
                                                     meta=meta or {}, created_at=self.clock())).inserted_primary_key[0]
        return rid

    def add_annotator(self, name: str, kind: str = "human", meta: dict | None = None) -> tuple[int, str | None]:
        """(id, login token) of annotator `name`, created if new.

        Only people (kind "human") get a token; calling this again for an existing person issues a new token
        and the old one stops working (a lost token is replaced this way). Other kinds get None.
        """
        if kind not in KINDS:
            raise ValueError(f"annotator kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not isinstance(name, str) or not name.strip() or len(name) > 128:
            raise ValueError("annotator name must be a non-empty string of at most 128 characters")
        token = secrets.token_urlsafe(24) if kind == "human" else None
        sha = _sha(token) if token else None

        def write(c: Connection) -> int:
            row = c.execute(select(annotators).where(annotators.c.name == name)).first()
            if row is None:
                return c.execute(insert(annotators).values(name=name, kind=kind, token_sha=sha, meta=meta or {},
                                                           created_at=self.clock())).inserted_primary_key[0]
            if row.kind != kind:
                raise Conflict(f"annotator {name!r} exists with kind {row.kind!r}, not {kind!r}")
            if sha:
                c.execute(update(annotators).where(annotators.c.id == row.id).values(token_sha=sha))
            return row.id

        return self._retrying(write), token

    def authenticate(self, token: str) -> Annotator | None:
        """The person whose login token this is, or None."""
        if not token:
            return None
        with self._read() as c:
            row = c.execute(select(annotators).where(annotators.c.token_sha == _sha(token))).first()
        return Annotator(row.id, row.name, row.kind, row.token_sha, row.meta) if row else None

    def annotator(self, annotator_id: int) -> Annotator | None:
        with self._read() as c:
            row = c.execute(select(annotators).where(annotators.c.id == annotator_id)).first()
        return Annotator(row.id, row.name, row.kind, row.token_sha, row.meta) if row else None

    def setting(self, name: str) -> str | None:
        with self._read() as c:
            return c.scalar(select(settings.c.value).where(settings.c.name == name))

    def set_setting(self, name: str, value: str) -> None:
        def write(c: Connection) -> None:
            if c.execute(update(settings).where(settings.c.name == name).values(value=value)).rowcount == 0:
                c.execute(insert(settings).values(name=name, value=value))

        self._retrying(write)

    def drop_setting(self, name: str) -> None:
        self._retrying(lambda c: c.execute(delete(settings).where(settings.c.name == name)))

    # -- the queue

    def enqueue(self, prompt_id: int, response_ids: list[int], overlap: int = 1) -> int:
        """Id of the queue item for these responses; enqueueing the same set again keeps one item, max overlap."""
        if len(set(response_ids)) != len(response_ids) or len(response_ids) < 2:
            raise ValueError("an item needs at least 2 distinct responses")
        if overlap < 1:
            raise ValueError(f"overlap must be >= 1, got {overlap}")

        def write(c: Connection) -> int:
            self._check_responses(c, prompt_id, response_ids)
            return enqueue_item(c, prompt_id, response_ids, overlap, self.clock())

        return self._retrying(write)

    def load_queue_jsonl(self, path: str, overlap: int = 1) -> dict[str, int]:
        """Enqueue every prompt of a queue file (see `parse_queue_row`) with `overlap` annotators each.

        Rows of one prompt are merged into one item; prompts with fewer than 2 distinct responses are skipped.
        The whole file is validated before anything is written, and written in one transaction.
        Returns counts: items, responses, skipped.
        """
        groups = group_queue(parse_queue_row(row, loc) for loc, row in read_records(path))
        if overlap < 1:
            raise ValueError(f"overlap must be >= 1, got {overlap}")

        def write(c: Connection) -> dict[str, int]:
            counts = {"items": 0, "responses": 0, "skipped": 0}
            for g in groups:
                if len(g["responses"]) < 2:
                    counts["skipped"] += 1
                    continue
                pid = self._prompt_id(c, g["prompt"], g["family"])
                rids = [self._response_id(c, pid, t, pol, m) for t, (pol, m) in g["responses"].items()]
                enqueue_item(c, pid, rids, overlap, self.clock())
                counts["items"] += 1
                counts["responses"] += len(rids)
            return counts

        return self._retrying(write)

    def next_item(self, annotator_id: int) -> Item | None:
        """The item this annotator should judge now, leased to them, or None when nothing is left.

        Their own live lease comes first (a page reload shows the same item, with the lease renewed);
        otherwise the oldest open item. One BEGIN IMMEDIATE transaction on SQLite; on server databases
        the chosen item's row is locked and its free slots counted again before the lease is written.
        """
        now = self.clock()
        with self._write() as c:
            own = c.execute(select(assignments.c.id, assignments.c.item_id).where(
                assignments.c.annotator_id == annotator_id, assignments.c.status == "leased",
                assignments.c.expires_at > now).order_by(assignments.c.id).limit(1)).first()
            if own is not None:
                c.execute(update(assignments).where(assignments.c.id == own.id)
                          .values(expires_at=now + self.lease_seconds))
                return load_item(c, own.item_id)
            candidates = open_items(annotator_id, now)
            for item_id in list(c.scalars(candidates.order_by(queue_items.c.id).limit(8))):
                c.execute(select(queue_items.c.id).where(queue_items.c.id == item_id).with_for_update())
                if c.scalar(candidates.where(queue_items.c.id == item_id)) is None:
                    continue  # another annotator took the last slot meanwhile
                c.execute(insert(assignments).values(item_id=item_id, annotator_id=annotator_id, status="leased",
                                                     leased_at=now, expires_at=now + self.lease_seconds))
                return load_item(c, item_id)
        return None

    def item_ids(self) -> list[int]:
        """Every queue item's id, oldest first."""
        with self._read() as c:
            return list(c.scalars(select(queue_items.c.id).order_by(queue_items.c.id)))

    def item(self, item_id: int) -> Item | None:
        with self._read() as c:
            return load_item(c, item_id)

    def skip(self, annotator_id: int, item_id: int) -> bool:
        """Give a leased item back without judging it (the slot frees for others); False if not leased to them."""
        with self._write() as c:
            n = c.execute(update(assignments).where(
                assignments.c.item_id == item_id, assignments.c.annotator_id == annotator_id,
                assignments.c.status == "leased").values(status="skipped")).rowcount
        return n > 0

    def assignment_status(self, annotator_id: int, item_id: int) -> str | None:
        """leased | done | skipped, or None if the item was never handed to this annotator."""
        with self._read() as c:
            return c.scalar(select(assignments.c.status).where(assignments.c.item_id == item_id,
                                                                 assignments.c.annotator_id == annotator_id))

    def progress(self, annotator_id: int) -> dict[str, int]:
        """done: items this annotator judged; total: done + leased to them now + still open to them."""
        now = self.clock()
        with self._read() as c:
            done = c.scalar(select(func.count()).select_from(assignments).where(
                assignments.c.annotator_id == annotator_id, assignments.c.status == "done"))
            leased = c.scalar(select(func.count()).select_from(assignments).where(
                assignments.c.annotator_id == annotator_id, assignments.c.status == "leased",
                assignments.c.expires_at > now))
            available = c.scalar(select(func.count()).select_from(open_items(annotator_id, now).subquery()))
        return {"done": done, "total": done + leased + available}

    # -- judgements

    def add_ranking(self, prompt_id: int, ranking: list[int], annotator_id: int, source: str = "human",
                    item_id: int | None = None, key: str | None = None, flag_harmful: bool = False, note: str = "",
                    meta: dict | None = None) -> int:
        """Store a best-first ranking of response ids; returns the judgement id.

        With `key`, a second call with the same key writes nothing and returns the first judgement's id.
        With `item_id`, the ranking must cover exactly the item's responses.
        """
        if not isinstance(ranking, list) or len(ranking) < 2 or len(set(ranking)) != len(ranking):
            raise ValueError("a ranking needs at least 2 distinct response ids")
        row = dict(kind="ranking", ranking=[int(r) for r in ranking])
        return self._judge(prompt_id, row, list(ranking), annotator_id, source, item_id, key, flag_harmful, note, meta)

    def add_pairwise(self, prompt_id: int, a_id: int, b_id: int, choice: str, annotator_id: int,
                     source: str = "human", item_id: int | None = None, key: str | None = None,
                     flag_harmful: bool = False, note: str = "", meta: dict | None = None, group: str | None = None,
                     judge: str | None = None, principle: str | None = None, prob: float | None = None) -> int:
        """Store a verdict on responses shown as A and B: a | b | tie | both_bad; returns the judgement id.

        `group` keys the pairs of one ranking for the reward model (default: each judgement its own);
        an AI judge also gives its model (`judge`), the `principle` and `prob` = P(a better than b)."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
        if a_id == b_id:
            raise ValueError("a pairwise judgement needs two different responses")
        if prob is not None and not 0.0 <= prob <= 1.0:  # also refuses NaN
            raise ValueError(f"prob must be a probability in [0, 1], got {prob!r}")
        row = dict(kind="pairwise", a_id=a_id, b_id=b_id, choice=choice, group_key=group, judge=judge,
                   principle=principle, prob=None if prob is None else float(prob))
        return self._judge(prompt_id, row, [a_id, b_id], annotator_id, source, item_id, key, flag_harmful, note, meta)

    def _judge(self, prompt_id: int, row: dict, response_ids: list[int], annotator_id: int, source: str,
               item_id: int | None, key: str | None, flag_harmful: bool, note: str, meta: dict | None) -> int:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 128):
            raise ValueError("an idempotency key is a string of 1 to 128 characters")
        ok = (meta or {}).get("acceptable")
        if ok is not None and (not isinstance(ok, list) or not set(ok) <= set(response_ids)):
            raise ValueError("meta 'acceptable' must list ids of the judged responses")
        row.update(prompt_id=prompt_id, annotator_id=annotator_id, source=source, item_id=item_id, key=key,
                   flag_harmful=bool(flag_harmful), note=(note or "")[:MAX_NOTE], meta=meta or {})
        return self._retrying(lambda c: self._insert_judgement(c, row, response_ids))

    def _insert_judgement(self, c: Connection, row: dict, response_ids: list[int]) -> int:
        aid, item_id, now = row["annotator_id"], row["item_id"], self.clock()
        if row["key"] is not None:
            same = ("prompt_id", "item_id", "kind", "ranking", "a_id", "b_id", "choice")
            old = c.execute(select(judgements.c.id, judgements.c.annotator_id, *(judgements.c[k] for k in same))
                            .where(judgements.c.key == row["key"])).first()
            if old is not None:
                if old.annotator_id != aid:
                    raise Conflict("this idempotency key belongs to another annotator's judgement")
                if any(getattr(old, k) != row.get(k) for k in same):
                    raise Conflict("this idempotency key was used for a different judgement; the first one stands")
                return old.id
        if c.scalar(select(annotators.c.id).where(annotators.c.id == aid)) is None:
            raise LookupError(f"no annotator with id {aid}")
        self._check_responses(c, row["prompt_id"], response_ids)
        lease = None
        if item_id is not None:
            item = c.execute(select(queue_items).where(queue_items.c.id == item_id)).first()
            if item is None:
                raise LookupError(f"no queue item with id {item_id}")
            if item.prompt_id != row["prompt_id"] or sorted(item.response_ids) != sorted(response_ids):
                raise ValueError(f"the judgement must cover exactly the responses of item {item_id}")
            if c.scalar(select(judgements.c.id).where(judgements.c.item_id == item_id,
                                                      judgements.c.annotator_id == aid)) is not None:
                raise Conflict(f"item {item_id} was already judged by this annotator")
            lease = c.execute(select(assignments).where(assignments.c.item_id == item_id,
                                                        assignments.c.annotator_id == aid)).first()
            if lease is None:
                c.execute(insert(assignments).values(item_id=item_id, annotator_id=aid, status="done",
                                                     leased_at=now, expires_at=now))
            else:
                c.execute(update(assignments).where(assignments.c.id == lease.id).values(status="done"))
        seconds = now - lease.leased_at if lease is not None else None
        return c.execute(insert(judgements).values(**row, seconds=seconds, created_at=now)).inserted_primary_key[0]

    def _check_responses(self, c: Connection, prompt_id: int, response_ids: list[int]) -> None:
        found = set(c.scalars(select(responses.c.id).where(responses.c.id.in_(response_ids),
                                                           responses.c.prompt_id == prompt_id)))
        missing = [r for r in response_ids if r not in found]
        if missing:
            raise ValueError(f"response ids {missing} are not responses to prompt {prompt_id}")

    def undo_last(self, annotator_id: int) -> int | None:
        """Delete this annotator's latest judgement; its item goes back to them as a fresh lease.

        Returns the deleted judgement's id, or None if they have none.
        """
        now = self.clock()
        with self._write() as c:
            last = c.execute(select(judgements.c.id, judgements.c.item_id)
                             .where(judgements.c.annotator_id == annotator_id)
                             .order_by(judgements.c.id.desc()).limit(1)).first()
            if last is None:
                return None
            c.execute(delete(judgements).where(judgements.c.id == last.id))
            if last.item_id is not None:
                c.execute(update(assignments).where(assignments.c.item_id == last.item_id,
                                                    assignments.c.annotator_id == annotator_id)
                          .values(status="leased", leased_at=now, expires_at=now + self.lease_seconds))
        return last.id

    def judgement_count(self, source: str | None = None) -> int:
        with self._read() as c:
            q = select(func.count()).select_from(judgements)
            return c.scalar(q if source is None else q.where(judgements.c.source == source))

    def judgements(self, source: str | None = None) -> list[Any]:
        """Every judgement row joined with its annotator's name, in id order."""
        q = (select(judgements, annotators.c.name.label("annotator"))
             .join(annotators, annotators.c.id == judgements.c.annotator_id).order_by(judgements.c.id))
        with self._read() as c:
            return list(c.execute(q if source is None else q.where(judgements.c.source == source)))

    # -- export / import

    def preference_pairs(self, source: str | None = None) -> list[Comparison]:
        """Every judgement as (chosen, rejected) pairs (`schema.judgement_comparisons`), in judgement order."""
        rows = self.judgements(source)
        with self._read() as c:
            texts = {r.id: r for r in c.execute(select(responses.c.id, responses.c.text, responses.c.policy))}
            prompt_rows = {r.id: r for r in c.execute(select(prompts.c.id, prompts.c.text, prompts.c.messages, prompts.c.family))}
        return [comp for j in rows for comp in judgement_comparisons(j, prompt_rows[j.prompt_id], texts)]

    def export_jsonl(self, path: str, source: str | None = None) -> int:
        """Write `preference_pairs` as JSONL (prompt / chosen / rejected / source / annotator / group / meta)."""
        return write_jsonl(path, (p.to_json() for p in self.preference_pairs(source)))

    def import_jsonl(self, path: str, source: str | None = None) -> int:
        """Read preference pairs (any format `rlhfkit.data.loaders` reads) into the store; returns pairs read.

        Each pair becomes a pairwise judgement that keeps its `group` and `meta`, so export -> import -> export
        gives the same records. `source` fills records that carry none; a record naming a different source is
        an error. Everything is validated before one transaction writes it all; importing a file twice is a
        no-op (each record's idempotency key is the hash of its content).
        """
        records = [(loc, *parse_import_record(row, loc, source)) for loc, row in read_records(path)]

        def write(c: Connection) -> int:
            for loc, comp, src, key in records:
                if c.scalar(select(judgements.c.id).where(judgements.c.key == key)) is not None:
                    continue
                pid = self._prompt_id(c, comp.prompt, comp.meta.get("family"))
                chosen = self._response_id(c, pid, comp.chosen, str(comp.meta.get("chosen_policy") or ""))
                rejected = self._response_id(c, pid, comp.rejected, str(comp.meta.get("rejected_policy") or ""))
                if chosen == rejected:
                    raise DataError(f"{loc}: field 'rejected': the same response as 'chosen'")
                aid = self._annotator_id(c, comp.annotator, src)
                c.execute(insert(judgements).values(
                    prompt_id=pid, annotator_id=aid, source=src, kind="pairwise", a_id=chosen, b_id=rejected,
                    choice="a", flag_harmful=bool(comp.meta.get("flag_harmful", False)), note="", key=key,
                    group_key=comp.group or None, meta=comp.meta, created_at=self.clock()))
            return len(records)

        return self._retrying(write)

    def _annotator_id(self, c: Connection, name: str, kind: str) -> int:
        """Get-or-create an annotator without a login token (imported labels)."""
        aid = c.scalar(select(annotators.c.id).where(annotators.c.name == name))
        if aid is None:
            aid = c.execute(insert(annotators).values(name=name, kind=kind, token_sha=None, meta={"imported": True},
                                                      created_at=self.clock())).inserted_primary_key[0]
        return aid

    # -- statistics

    def audit(self) -> list[dict[str, Any]]:
        """`agreement.ai_audit`: every response pair an AI judge labelled, next to the other annotators'
        verdicts, with the prompt (`prompt_json`) and the two responses' texts (`texts`)."""
        from rlhfkit.data.records import prompt_json

        audit = ai_audit(self.judgements())
        with self._read() as c:
            texts = dict(c.execute(select(responses.c.id, responses.c.text)).all())
            prompt_rows = {r.id: r for r in c.execute(select(prompts.c.id, prompts.c.text, prompts.c.messages))}
        for entry in audit:
            entry["prompt"] = prompt_json(prompt_of(prompt_rows[entry["prompt_id"]]))
            entry["texts"] = [texts[i] for i in entry["pair"]]
        return audit

    def stats(self, source: str | None = None) -> dict[str, Any]:
        """Counts per source and annotator and inter-annotator agreement (`agreement.judgement_stats`)."""
        rows = self.judgements(source)
        with self._read() as c:
            kinds = dict(c.execute(select(annotators.c.name, annotators.c.kind)).all())
        return judgement_stats(rows, kinds)
