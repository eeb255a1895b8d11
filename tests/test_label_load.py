"""Load on a real uvicorn server over loopback: concurrent annotators lose and duplicate nothing, even across a
SIGKILL and restart of the server.

Every client retries a request that died on the wire with the same idempotency
key, as the labelling page does; what the server acknowledged (HTTP 200) must be
in the database exactly once.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import pytest

from rlhfkit.feedback.store import FeedbackStore

pytestmark = [pytest.mark.load, pytest.mark.slow]

ADMIN = "admin-token-for-tests"
RETRIED: list[str] = []  # paths of requests that died on the wire and were sent again
SERVE = "import sys; from rlhfkit.feedback.admin import serve; serve(sys.argv[1], '127.0.0.1', int(sys.argv[2]))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelServer:
    """`rlhfkit.feedback.admin.serve` in a subprocess on a free loopback port (shared with the browser test)."""

    def __init__(self, db_url: str, log_path: str):
        self.db_url, self.log_path = db_url, log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> LabelServer:
        env = {**os.environ, "RLHFKIT_ADMIN_TOKEN": ADMIN}  # not on the command line
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", SERVE, self.db_url, str(self.port)], env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"server exited: {open(self.log_path).read()}"
            try:
                if httpx.get(self.url + "/login", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"server did not start in {timeout} s: {open(self.log_path).read()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, in-flight requests die mid-way."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> LabelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def setup_db(tmp_path, n_annotators: int, n_items: int) -> tuple[str, dict[str, str]]:
    """A store with `n_items` pairwise items (overlap 1) and annotators ann-0.. ; returns (url, name -> token)."""
    url = f"sqlite:///{tmp_path / 'load.db'}"
    store = FeedbackStore(url)
    queue = tmp_path / "queue.jsonl"
    rows = ({"prompt": f"prompt {i}", "responses": [f"a{i}", f"b{i}"], "policy": "p"} for i in range(n_items))
    queue.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert store.load_queue_jsonl(str(queue), overlap=1)["items"] == n_items
    return url, {f"ann-{i}": store.add_annotator(f"ann-{i}", "human")[1] for i in range(n_annotators)}


def call(client: httpx.Client, method: str, path: str, deadline: float, **kw) -> httpx.Response:
    """Send until an answer below 500 arrives; a connection error (server down, reply lost) means send again."""
    while True:
        try:
            r = client.request(method, path, **kw)
            if r.status_code < 500:
                return r
        except httpx.TransportError:
            RETRIED.append(path)
        assert time.time() < deadline, f"{method} {path}: no answer before the deadline"
        time.sleep(0.05)


def annotate(base_url: str, name: str, token: str, n: int, acked: list[str], deadline: float) -> None:
    """Log in, then judge n items through the JSON API; appends each acknowledged key to `acked`."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        page = call(client, "GET", "/login", deadline)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = call(client, "POST", "/login", deadline, data={"csrf": csrf, "token": token})
        assert r.status_code == 303, r.text  # to /label, with the session cookie
        csrf = call(client, "GET", "/api/me", deadline).json()["csrf"]
        for i in range(n):
            item = call(client, "GET", "/api/next", deadline).json()["item"]
            assert item is not None, f"{name}: queue empty after {i} judgements"
            a, b = item["responses"]
            body = {"item_id": item["id"], "a_id": a["id"], "b_id": b["id"], "choice": "a", "key": f"{name}:{i}"}
            r = call(client, "POST", "/api/judgements", deadline, json=body, headers={"X-CSRF-Token": csrf})
            assert r.status_code == 200, r.text
            acked.append(body["key"])


def run_annotators(base_url: str, tokens: dict[str, str], n: int, deadline: float) -> list[str]:
    acked: list[str] = []
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            annotate(base_url, name, tokens[name], n, acked, deadline)
        except BaseException as e:  # re-raised below; a thread's exception would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(name,)) for name in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    return acked


def check_db(url: str, acked: list[str], n_annotators: int, n: int) -> None:
    rows = FeedbackStore(url).judgements()
    keys = [r.key for r in rows]
    assert len(rows) == n_annotators * n
    assert len(set(keys)) == len(keys) and set(acked) <= set(keys)  # nothing acknowledged is missing
    assert len({r.item_id for r in rows}) == len(rows)  # overlap 1: no item judged twice
    assert Counter(r.annotator for r in rows) == {f"ann-{i}": n for i in range(n_annotators)}


def test_20_annotators_x_50_submissions(tmp_path):
    url, tokens = setup_db(tmp_path, 20, 1000)
    with LabelServer(url, str(tmp_path / "server.log")) as server:
        acked = run_annotators(server.url, tokens, 50, deadline=time.time() + 120)
    assert len(acked) == len(set(acked)) == 1000
    check_db(url, acked, 20, 50)


def test_server_killed_mid_load_loses_and_duplicates_nothing(tmp_path):
    url, tokens = setup_db(tmp_path, 10, 300)
    RETRIED.clear()
    server = LabelServer(url, str(tmp_path / "server.log")).start()
    done = threading.Event()
    acked_box: list[list[str]] = []

    def clients() -> None:
        acked_box.append(run_annotators(server.url, tokens, 30, deadline=time.time() + 120))
        done.set()

    runner = threading.Thread(target=clients)
    runner.start()
    try:
        while FeedbackStore(url).judgement_count() < 100:  # kill once a third of the work is in
            assert not done.is_set(), "the load finished before the server could be killed"
            time.sleep(0.02)
        server.kill()
        time.sleep(0.5)  # clients now hit a closed port and keep retrying
        server.start()
        runner.join(timeout=150)
    finally:
        server.stop()
    assert done.is_set() and acked_box, "clients did not finish"
    acked = acked_box[0]
    assert "/api/next" in RETRIED or "/api/judgements" in RETRIED  # the kill really hit clients mid-load
    assert len(acked) == len(set(acked)) == 300
    check_db(url, acked, 10, 30)


@pytest.mark.parametrize("args,message", [
    (["stats", "--db", "sqlite:////nonexistent-dir/x.db"], "database 'sqlite:////nonexistent-dir/x.db': unable to open database file"),
    (["stats", "--db", "postgresql://u@localhost:1/x"], "needs the Python package"),
    (["stats", "--db", "mysql+nodriver://x"], "Can't load plugin"),
    (["load", "QUEUE", "--overlap", "0"], "argument --overlap: expected a whole number >= 1, got '0'"),
    (["load", "missing.jsonl"], "missing.jsonl: no such file or directory"),
    (["serve", "--port", "99999"], "argument --port: expected a port number 1-65535, got '99999'"),
    (["serve", "--admin-token-file", "missing-token"], "No such file or directory: 'missing-token'"),
    (["export", "/nonexistent-dir/out.jsonl"], "No such file or directory"),
])
def test_label_misuse_is_one_line_not_a_traceback(tmp_path, args, message):
    queue = tmp_path / "q.jsonl"
    queue.write_text(json.dumps({"prompt": "x", "responses": ["a", "b"]}) + "\n")
    args = [str(queue) if a == "QUEUE" else a for a in args]
    if "--db" not in args:
        args += ["--db", f"sqlite:///{tmp_path}/f.db"]
    proc = subprocess.run([sys.executable, "-m", "rlhfkit", "label", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "missing.jsonl").exists()
