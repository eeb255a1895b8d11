"""The labelling app's session-signing key: its own 0600 file, never the database.

Whoever can read the labels database (a backup, a shared Postgres) must not be able to forge a login,
so the key that signs session cookies lives apart from it.
"""

from __future__ import annotations

import os
import secrets
import tempfile


def default_key_file(db_url: str) -> str:
    """Where the session-signing key lives unless told: beside an SQLite file, else in the working directory."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url if "://" in db_url else f"sqlite:///{db_url}")
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return url.database + ".session-key"
    return os.path.abspath("rlhfkit-session.key")


def load_session_key(path: str) -> bytes:
    """The session-signing key in `path`, created (random, mode 0600) on first use. It is kept out of the
    database: whoever can read the labels cannot forge a login. A key file that others can read is refused."""
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".session-key.")  # mode 0600
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # atomic and exclusive: of two servers starting together, one key wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    if os.stat(path).st_mode & 0o077:
        raise ValueError(f"{path}: the session-signing key is readable by others (mode {oct(os.stat(path).st_mode & 0o777)}); "
                         "run chmod 600 on it")
    with open(path, encoding="utf-8") as f:
        key = f.read().strip()
    if len(key) < 32:
        raise ValueError(f"{path}: not a session-signing key (expected 64 hex characters)")
    return key.encode()
