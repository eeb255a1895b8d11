"""Atomic file writes: readers see the old file or the whole new one, never half of either.

One implementation for every writer in the package (checkpoint pointers, logs,
JSONL exports, pipeline markers): write a temp file in the same directory,
fsync it, rename it over the target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a temp file next to `path`; on a clean exit it replaces `path`, on an error it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; data files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(paths: list[str], *objects) -> str:
    """SHA-256 (hex, 16 chars) of the bytes of `paths` (files; a directory: its files, recursively, in sorted
    order, names included) and of `objects` as JSON: the key of a cache that depends on exactly these."""
    import hashlib
    import json

    h = hashlib.sha256()
    files = []  # (name hashed, path)
    for p in paths:
        if os.path.isdir(p):
            files += sorted((os.path.relpath(os.path.join(d, f), p), os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs)
        else:
            files.append((os.path.basename(p), p))
    for name, path in files:
        h.update(name.encode() + b"\0" + sha256_file(path).encode())
    h.update(json.dumps(objects, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_open(path) as f:
        f.write(text)
