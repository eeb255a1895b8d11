"""SQL of the labelling queue, as functions of an open connection (the store owns the transactions).

An item is a prompt and K response ids, to be judged by `overlap` different annotators.
A slot is taken while its lease is live or once judged; an annotator never gets one item twice.
"""

from __future__ import annotations

import json

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.engine import Connection

from rlhfkit.feedback.schema import Item, Response, _sha, assignments, prompt_of, prompts, queue_items, responses


def enqueue_item(c: Connection, prompt_id: int, response_ids: list[int], overlap: int, now: float) -> int:
    """Id of the item for this prompt and response set: created if new, its overlap raised to `overlap` if lower."""
    key = _sha(json.dumps([prompt_id, sorted(response_ids)]))
    row = c.execute(select(queue_items.c.id, queue_items.c.overlap).where(queue_items.c.key == key)).first()
    if row is None:
        values = dict(prompt_id=prompt_id, response_ids=list(response_ids), key=key, overlap=overlap, created_at=now)
        return c.execute(insert(queue_items).values(**values)).inserted_primary_key[0]
    if overlap > row.overlap:
        c.execute(update(queue_items).where(queue_items.c.id == row.id).values(overlap=overlap))
    return row.id


def taken_slots(now: float):
    """Per item: slots in use (judged, or leased and not yet expired), as a subquery (item_id, n)."""
    live = or_(assignments.c.status == "done",
               (assignments.c.status == "leased") & (assignments.c.expires_at > now))
    return (select(assignments.c.item_id, func.count().label("n")).where(live)
            .group_by(assignments.c.item_id).subquery())


def open_items(annotator_id: int, now: float):
    """SELECT of the ids of items with a free slot that were never handed to this annotator."""
    taken = taken_slots(now)
    seen = select(assignments.c.id).where(assignments.c.item_id == queue_items.c.id,
                                          assignments.c.annotator_id == annotator_id).exists()
    return (select(queue_items.c.id).outerjoin(taken, taken.c.item_id == queue_items.c.id)
            .where(~seen, func.coalesce(taken.c.n, 0) < queue_items.c.overlap))


def load_item(c: Connection, item_id: int) -> Item | None:
    """The item with its prompt and responses (in the item's order), or None if there is no such item."""
    row = c.execute(select(queue_items, prompts.c.text, prompts.c.messages, prompts.c.family)
                    .join(prompts, prompts.c.id == queue_items.c.prompt_id)
                    .where(queue_items.c.id == item_id)).first()
    if row is None:
        return None
    found = {r.id: Response(r.id, r.text, r.policy)
             for r in c.execute(select(responses).where(responses.c.id.in_(row.response_ids)))}
    return Item(row.id, row.prompt_id, prompt_of(row), row.family, tuple(found[i] for i in row.response_ids), row.overlap)
