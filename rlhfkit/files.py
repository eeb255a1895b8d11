"""Atomic file writes, and the digests that key caches and run identities.

Atomic writes: readers see the old file or the whole new one, never half of either. One implementation
for every writer in the package (checkpoint pointers, logs, JSONL exports, pipeline markers): write a
temp file in the same directory, fsync it, rename it over the target.

Digests: `sha256_file` reads every byte (checkpoints verify themselves with it); `file_digest` remembers
a big file's digest until the file is written again; `content_hash` keys a cache by files and objects.
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


MEMO_MIN = 8 << 20  # files of at least this many bytes (model weights, big datasets) have their digest remembered
MEMO_ENTRIES = 4096  # the most files remembered; the oldest entries go first


def memo_path() -> str:
    """Where `file_digest` remembers digests: $RLHFKIT_CACHE/sha256.json, by default ~/.cache/rlhfkit/sha256.json."""
    root = os.environ.get("RLHFKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rlhfkit")
    return os.path.join(root, "sha256.json")


def _stamp(path: str) -> list[int]:
    """What the file system says of a file's identity and last change: device, inode, size, modification and change
    times (ns). Writing the file moves its change time, which no user call can set back (the index git keeps of a
    work tree relies on the same)."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_memo() -> dict:
    import json

    try:
        with open(memo_path()) as f:
            memo = json.load(f)
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def file_digest(path: str) -> str:
    """`sha256_file(path)`, remembered across runs for files of MEMO_MIN bytes or more: a stage that starts again on
    the same multi-GB model (every stage names one; a resumed run checks its inputs) reads its weights once for
    the digest, not at every start. The memory is keyed by the file's `_stamp`, so a file written since is read
    again; a file damaged without any write (the disk's own decay) is not noticed here, which is why checkpoints
    verify themselves with `sha256_file`. A memory that cannot be read or written is only a slower start."""
    import json

    stamp = _stamp(path)
    if stamp[2] < MEMO_MIN:
        return sha256_file(path)
    key = os.path.realpath(path)
    hit = _read_memo().get(key)
    if isinstance(hit, list) and len(hit) == 2 and hit[0] == stamp:
        return hit[1]
    digest = sha256_file(path)
    if _stamp(path) == stamp:  # unchanged while it was read
        memo = _read_memo()  # as it is now: another process may have added to it meanwhile
        memo.pop(key, None)
        memo[key] = [stamp, digest]
        memo = dict(list(memo.items())[-MEMO_ENTRIES:])
        try:
            os.makedirs(os.path.dirname(memo_path()), exist_ok=True)
            write_atomic(memo_path(), json.dumps(memo))
        except OSError:
            pass
    return digest


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
        h.update(name.encode() + b"\0" + file_digest(path).encode())
    h.update(json.dumps(objects, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_open(path) as f:
        f.write(text)
