"""Admin operations on the feedback store: what `rlhfkit label ...` runs.

Operations: `serve`, `add_annotator`, `load`, `export`, `stats`; `db` is an
SQLAlchemy URL or a file path (SQLite). The web app (FastAPI, uvicorn) is imported
only by `serve`, so the other commands start fast. Agreement statistics live in
rlhfkit.feedback.agreement.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from rlhfkit.feedback.store import FeedbackStore


def serve(db: str, host: str = "127.0.0.1", port: int = 8000, admin_token: str | None = None,
          key_file: str | None = None) -> None:
    """Run the labelling app. The admin token comes from the argument, else $RLHFKIT_ADMIN_TOKEN, else a
    fresh random one printed once. Binds loopback unless `host` says otherwise."""
    import uvicorn

    from rlhfkit.feedback.webapp import create_app

    token = admin_token or os.environ.get("RLHFKIT_ADMIN_TOKEN")
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"[label] admin token for this run: {token}", flush=True)
    print(f"[label] serving {db} on http://{host}:{port}/", flush=True)
    uvicorn.run(create_app(db, token, key_file=key_file), host=host, port=port, log_level="warning")


def add_annotator(db: str, name: str) -> str:
    """Create a person who labels in the web app (or issue them a new token); returns their login token."""
    _, token = FeedbackStore(db).add_annotator(name, "human")
    return token


def load(db: str, path: str, overlap: int = 1) -> dict[str, int]:
    """Enqueue a queue file (`rlhfkit sample` output); returns counts (items, responses, skipped)."""
    return FeedbackStore(db).load_queue_jsonl(path, overlap)


def export(db: str, out: str, source: str | None = None) -> int:
    """Write preference pairs as JSONL; returns the number of pairs."""
    return FeedbackStore(db).export_jsonl(out, source)


def stats(db: str, source: str | None = None) -> dict[str, Any]:
    """Counts per annotator and source, mean seconds per item, agreement (see FeedbackStore.stats)."""
    return FeedbackStore(db).stats(source)
