"""The labelling web app through FastAPI's TestClient: auth, admin token, CSRF, escaping, input errors, submit/undo."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from rlhfkit.feedback.store import FeedbackStore
from rlhfkit.feedback.webapp import COOKIE, create_app

ADMIN = "admin-token-for-tests"
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 1">'


@pytest.fixture()
def env(tmp_path):
    """(app, url): an app over a fresh SQLite file with a queue of two pairwise items and one ranking item."""
    url = f"sqlite:///{tmp_path / 'web.db'}"
    app = create_app(url, ADMIN)
    rows = [{"prompt": "Pick one <b>bold</b>", "responses": [XSS, "plain answer"], "policy": "sft"},
            {"prompt": "Second", "responses": ["yes", "no"], "policy": "sft"},
            {"prompt": "Rank these", "responses": ["one", "two", "three"], "policy": "sft"}]
    queue = tmp_path / "queue.jsonl"
    queue.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    FeedbackStore(url).load_queue_jsonl(str(queue), overlap=1)
    return app, url


def new_annotator(client: TestClient, name: str) -> str:
    r = client.post("/admin/annotators", json={"name": name}, headers={"X-Admin-Token": ADMIN})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def login(client: TestClient, token: str) -> str:
    """Log in through the form; returns the session's CSRF token."""
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"csrf": csrf, "token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/label", r.text
    return client.get("/api/me").json()["csrf"]


@pytest.fixture()
def annotator(env):
    """(client logged in as 'ann', csrf, store)."""
    app, url = env
    client = TestClient(app)
    csrf = login(client, new_annotator(client, "ann"))
    return client, csrf, FeedbackStore(url)


def api_judge(client, csrf, **fields):
    return client.post("/api/judgements", json=fields, headers={"X-CSRF-Token": csrf})


def pairwise_fields(item, choice, key):
    a, b = item["responses"]
    return dict(item_id=item["id"], a_id=a["id"], b_id=b["id"], choice=choice, key=key)


# ---------------------------------------------------------------- authentication


def test_every_route_rejects_requests_without_a_session(env):
    app, _ = env
    client = TestClient(app)
    routes = [(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods]
    public = {("GET", "/login"), ("POST", "/login")}
    checked = 0
    for method, path in routes:
        if (method, path) in public:
            continue
        r = client.request(method, path, follow_redirects=False)
        if path.startswith("/admin/"):
            assert r.status_code == 401, (method, path)
        else:
            assert r.status_code == 401 and r.json() == {"detail": "login required"}, (method, path, r.text)
        checked += 1
    assert checked >= 12
    # a browser asking for a page is sent to the login form instead
    r = client.get("/label", headers={"accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    # a forged or tampered cookie is no session
    client.cookies.set(COOKIE, "eyJhaWQiOjF9.AAAA")
    assert client.get("/api/next").status_code == 401


def test_login_rejects_unknown_tokens_and_a_new_token_ends_old_sessions(env):
    app, _ = env
    client = TestClient(app)
    token = new_annotator(client, "ann")
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"csrf": csrf, "token": "wrong"}, follow_redirects=False)
    assert r.status_code == 401 and "Unknown token" in r.text
    login(client, token)
    assert client.get("/api/next").status_code == 200
    new_annotator(client, "ann")  # re-issued token: the old session no longer counts
    assert client.get("/api/next").status_code == 401


def test_admin_routes_need_the_admin_token(annotator):
    client, _, _ = annotator  # an annotator session is not enough
    assert client.get("/admin/stats").status_code == 401
    assert client.get("/admin/stats", headers={"X-Admin-Token": "wrong-token"}).status_code == 401
    assert client.get("/admin/export", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert client.post("/admin/annotators", json={"name": "eve"}).status_code == 401
    assert client.post("/admin/queue", content=b"{}").status_code == 401
    assert client.get("/admin/stats", headers={"X-Admin-Token": ADMIN}).status_code == 200
    assert client.get("/admin/stats", headers={"Authorization": f"Bearer {ADMIN}"}).json()["judgements"] == 0


def test_admin_load_export_and_stats(annotator):
    client, csrf, store = annotator
    h = {"Authorization": f"Bearer {ADMIN}"}
    body = json.dumps({"prompt": "Uploaded", "responses": ["u1", "u2"], "policy": "p"}) + "\n"
    assert client.post("/admin/queue?overlap=2", content=body, headers=h).json() == {
        "items": 1, "responses": 2, "skipped": 0}
    item = client.get("/api/next").json()["item"]
    assert api_judge(client, csrf, **pairwise_fields(item, "b", "k1")).status_code == 200
    lines = client.get("/admin/export", headers=h).text.splitlines()
    a, b = item["responses"]
    assert [json.loads(x)["chosen"] for x in lines] == [b["text"]]
    assert json.loads(lines[0])["rejected"] == a["text"] and json.loads(lines[0])["source"] == "human"
    assert client.get("/admin/stats", headers=h).json()["annotators"]["ann"]["judgements"] == 1


# ---------------------------------------------------------------- CSRF, escaping, bad input


def test_posts_without_the_csrf_token_are_403(annotator):
    client, csrf, store = annotator
    item = client.get("/api/next").json()["item"]
    fields = pairwise_fields(item, "a", "k")
    assert client.post("/api/judgements", json=fields).status_code == 403
    assert client.post("/api/judgements", json=fields, headers={"X-CSRF-Token": "forged"}).status_code == 403
    form = {k: str(v) for k, v in fields.items()}
    r = client.post("/label/submit", data=form, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    assert client.post("/label/submit", data={**form, "csrf": "forged"}).status_code == 403
    assert client.post("/label/submit", data={**form, "csrf": "non-ascii é"}).status_code == 403
    for path in ("/label/skip", "/label/undo", "/logout", "/api/skip", "/api/undo"):
        assert client.post(path, data={"item_id": str(item["id"])}).status_code == 403, path
    assert store.judgement_count() == 0
    fresh = TestClient(client.app)  # a login post without the form's token is refused as well
    assert fresh.post("/login", data={"token": "whatever"}).status_code == 403
    assert client.post("/label/submit", data={**form, "csrf": csrf}, follow_redirects=False).status_code == 303
    assert store.judgement_count() == 1


def test_untrusted_text_is_rendered_escaped(annotator):
    client, _, _ = annotator
    r = client.get("/label")
    assert r.status_code == 200
    assert "<script>window.__pwned" not in r.text and "<img src=x" not in r.text and "<b>bold</b>" not in r.text
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in r.text and "Pick one &lt;b&gt;bold&lt;/b&gt;" in r.text
    assert r.text.count("<script") == 1 and '<script src="/static/label.js">' in r.text  # only our own script
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_invalid_input_gives_clear_4xx(annotator, env):
    client, csrf, store = annotator
    item = client.get("/api/next").json()["item"]
    good = pairwise_fields(item, "a", "k")
    cases = [
        ({**good, "item_id": "abc"}, 400, "item_id"),
        ({**good, "choice": "maybe"}, 400, "choice must be one of"),
        ({**good, "b_id": good["a_id"]}, 400, "two different responses"),
        ({**good, "note": "x" * 3000}, 400, "note"),
        ({**good, "item_id": 999}, 404, "no queue item"),
        ({k: v for k, v in good.items() if k != "choice"}, 400, "give 'choice'"),
        ({"item_id": item["id"], "ranking": [good["a_id"]], "key": "r"}, 400, "at least 2"),
    ]
    for fields, status, words in cases:
        r = api_judge(client, csrf, **fields)
        assert r.status_code == status and words in r.json()["detail"], (fields, r.status_code, r.text)
    r = client.post("/api/judgements", content=b"{not json", headers={"X-CSRF-Token": csrf,
                                                                       "content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    # an item that exists but was never handed to this annotator
    other = [i for i in (1, 2, 3) if i != item["id"]][0]
    assert api_judge(client, csrf, **{**good, "item_id": other}).status_code == 403
    # admin input
    h = {"X-Admin-Token": ADMIN}
    r = client.post("/admin/queue", content=b'{"prompt": "P", "responses": ["a", 7]}\n', headers=h)
    assert r.status_code == 400
    assert r.json()["detail"] == "upload:1: field 'responses[1]': expected a string, got int"
    r = client.post("/admin/queue?overlap=0", content=b'{"prompt": "P", "response": "a"}\n', headers=h)
    assert r.status_code == 400 and "overlap" in r.json()["detail"]
    assert client.post("/admin/annotators", json={"nom": "x"}, headers=h).status_code == 400
    assert store.judgement_count() == 0
    # a browser gets the message as an (escaped) HTML page
    r = client.post("/label/submit", data={**{k: str(v) for k, v in good.items()}, "choice": "<i>x</i>", "csrf": csrf},
                    headers={"accept": "text/html"})
    assert r.status_code == 400 and "&lt;i&gt;x&lt;/i&gt;" in r.text and "<i>x</i>" not in r.text


# ---------------------------------------------------------------- labelling


def test_submit_idempotent_undo_skip_and_ranking(annotator):
    client, csrf, store = annotator
    item = client.get("/api/next").json()["item"]
    assert item["mode"] == "pairwise"
    form = {k: str(v) for k, v in pairwise_fields(item, "b", "key-1").items()}
    for _ in range(2):  # the same page posted twice (double click, retry): stored once
        r = client.post("/label/submit", data={**form, "csrf": csrf, "note": "fine", "flag_harmful": "1"},
                        follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/label?m=saved"
    assert store.judgement_count() == 1
    [pair] = store.preference_pairs()
    assert (pair.chosen, pair.rejected) == (item["responses"][1]["text"], item["responses"][0]["text"])
    assert pair.meta["flag_harmful"] is True and pair.meta["note"] == "fine"
    assert client.get("/api/progress").json() == {"done": 1, "total": 3}

    # undo: the judgement is gone and the same item is shown again
    r = client.post("/label/undo", data={"csrf": csrf}, follow_redirects=False)
    assert r.headers["location"] == "/label?m=undone" and store.judgement_count() == 0
    page = client.get("/label?m=undone")
    assert "was undone" in page.text and f'name="item_id" value="{item["id"]}"' in page.text
    assert api_judge(client, csrf, **pairwise_fields(item, "tie", "key-2")).status_code == 200
    assert store.preference_pairs() == [] and store.judgement_count() == 1  # a tie: no pair

    # skip the second item, rank the third
    second = client.get("/api/next").json()["item"]
    assert client.post("/api/skip", json={"item_id": second["id"]}, headers={"X-CSRF-Token": csrf}).json() == {
        "skipped": True}
    third = client.get("/api/next").json()["item"]
    assert third["mode"] == "ranking" and third["id"] != second["id"]
    ids = [r["id"] for r in third["responses"]][::-1]
    r = client.post("/label/submit", data={"csrf": csrf, "item_id": str(third["id"]), "key": "key-3",
                                           "ranking": ",".join(map(str, ids))}, follow_redirects=False)
    assert r.status_code == 303
    texts = {r["id"]: r["text"] for r in third["responses"]}
    assert [(c.chosen, c.rejected) for c in store.preference_pairs()] == [
        (texts[ids[0]], texts[ids[1]]), (texts[ids[0]], texts[ids[2]]), (texts[ids[1]], texts[ids[2]])]
    assert client.get("/api/next").json()["item"] is None
    assert "Nothing left to label" in client.get("/label").text
    # a skipped item cannot be judged afterwards
    assert api_judge(client, csrf, **pairwise_fields(second, "a", "key-4")).status_code == 409


def test_acceptability_marks_from_json_and_form(annotator):
    client, csrf, store = annotator
    first = client.get("/api/next").json()["item"]
    fields = pairwise_fields(first, "a", "key-m1")
    bad = api_judge(client, csrf, **fields, marks=True, acceptable=[10**6])
    assert bad.status_code == 400 and "acceptable" in bad.text and store.judgement_count() == 0
    assert api_judge(client, csrf, **fields, marks=True, acceptable=[]).status_code == 200  # none acceptable
    [pair] = store.preference_pairs()
    assert (pair.meta["chosen_acceptable"], pair.meta["rejected_acceptable"]) == (False, False)

    second = client.get("/api/next").json()["item"]
    a, b = second["responses"][:2] if second["mode"] == "pairwise" else (None, None)
    if a is None:  # a ranking item: tick the one ranked best
        ids = [r["id"] for r in second["responses"]]
        data = {"ranking": ",".join(map(str, ids)), "acceptable": str(ids[0]), "marks": "1"}
    else:
        data = {"a_id": str(a["id"]), "b_id": str(b["id"]), "choice": "a", "acceptable": str(a["id"]), "marks": "1"}
    r = client.post("/label/submit", data={"csrf": csrf, "item_id": str(second["id"]), "key": "key-m2", **data},
                    follow_redirects=False)
    assert r.status_code == 303
    marked = [(p.meta["chosen_acceptable"], p.meta["rejected_acceptable"]) for p in store.preference_pairs()[1:]]
    assert marked and marked[0] == (True, False) and all(not rej for _, rej in marked)


# ---------------------------------------------------------------- limits: each once a 500, a silent drop or unbounded


def test_hostile_requests_get_4xx_and_the_server_stays_up(annotator):
    client, csrf, store = annotator
    item = client.get("/api/next").json()["item"]
    good = pairwise_fields(item, "a", "k-limits")
    h = {"X-CSRF-Token": csrf, "content-type": "application/json"}
    r = api_judge(client, csrf, **{**good, "item_id": 2**63})  # was an SQL overflow: 500
    assert r.status_code == 422 and "out of range" in r.json()["detail"]
    r = client.post("/api/judgements", content=b"[" * 5_000 + b"]" * 5_000, headers=h)  # was a RecursionError: 500
    assert r.status_code == 400
    r = client.post("/login", content=b"x" * (2 * 1024 * 1024), headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413  # an unauthenticated 2 MB post is refused, not read whole
    chunks = (b"a" * 65536 for _ in range(8))  # no Content-Length: counted as it streams in
    r = client.post("/login", content=chunks, headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    # an idempotency key reused with other content: 409, and the first judgement stands (was 200, new label dropped)
    assert api_judge(client, csrf, **good).status_code == 200
    r = api_judge(client, csrf, **{**good, "choice": "b"})
    assert r.status_code == 409 and "different judgement" in r.json()["detail"]
    assert api_judge(client, csrf, **good).status_code == 200  # the same content again: still idempotent
    assert store.judgement_count() == 1 and store.preference_pairs()[0].chosen == item["responses"][0]["text"]
    assert client.get("/api/me").status_code == 200  # still serving


def test_failed_logins_are_rate_limited(env):
    from rlhfkit.feedback.webapp import LOGIN_FAILURES

    app, _ = env
    client = TestClient(app)
    token = new_annotator(client, "rl")
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    codes = [client.post("/login", data={"csrf": csrf, "token": f"wrong-{i}"}).status_code for i in range(LOGIN_FAILURES + 2)]
    assert codes[:LOGIN_FAILURES] == [401] * LOGIN_FAILURES and codes[LOGIN_FAILURES:] == [429, 429]
    r = client.post("/login", data={"csrf": csrf, "token": token}, follow_redirects=False)
    assert r.status_code == 429  # even the right token waits: guessing gains nothing by succeeding late


def test_logout_revokes_a_copied_cookie_and_the_database_is_private(annotator, env):
    import os
    import stat

    client, csrf, _ = annotator
    copied = TestClient(client.app, cookies={"rlhfkit_session": client.cookies.get("rlhfkit_session")})
    assert copied.get("/api/me").status_code == 200
    assert client.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert copied.get("/api/me").status_code == 401  # the copy was good for 7 days after logout before
    _, url = env
    path = url.removeprefix("sqlite:///")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # tokens' hashes: owner only


def test_the_session_key_lives_in_a_private_file_not_the_database(env, tmp_path):
    """Whoever can read the labels database must not be able to forge a login: the signing key is in its own
    0600 file, the same across restarts (sessions survive), and a key file others can read is refused."""
    import os
    import stat

    from rlhfkit.feedback.keys import default_key_file, load_session_key

    _, url = env
    key_file = default_key_file(url)
    assert key_file == url.removeprefix("sqlite:///") + ".session-key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    key = load_session_key(key_file)
    assert len(key) == 64 and FeedbackStore(url).setting("session_key") is None
    create_app(url, ADMIN)  # a restart reads the same key
    assert load_session_key(key_file) == key
    other = tmp_path / "other.key"
    assert load_session_key(str(other)) != key  # a new file gets a new random key
    os.chmod(other, 0o644)
    with pytest.raises(ValueError, match="readable by others"):
        load_session_key(str(other))
    store = FeedbackStore(url)  # a key left in the database by an earlier version is removed
    store.set_setting("session_key", "old")
    create_app(url, ADMIN)
    assert store.setting("session_key") is None


def test_a_short_admin_token_is_refused(tmp_path):
    from rlhfkit.feedback.webapp import MIN_ADMIN_TOKEN

    with pytest.raises(ValueError, match=f"at least {MIN_ADMIN_TOKEN}"):
        create_app(f"sqlite:///{tmp_path / 'x.db'}", "8charsOK")


def test_the_audit_page_shows_ai_labels_next_to_peoples(annotator):
    """/admin/audit: each pair an AI judge labelled, with its verdict, P and principle beside the people's; the
    agreement per pair and overall; untrusted text escaped; the admin token required."""
    client, csrf, store = annotator
    first = client.get("/api/next", headers={"X-CSRF-Token": csrf}).json()["item"]
    assert api_judge(client, csrf, **pairwise_fields(first, "a", "k1")).status_code == 200
    second = client.get("/api/next", headers={"X-CSRF-Token": csrf}).json()["item"]
    assert api_judge(client, csrf, **pairwise_fields(second, "b", "k2")).status_code == 200
    judge, _ = store.add_annotator("ai-judge:m", "ai")
    for item, choice, prob, principle in ((first, "a", 0.8, "honesty"), (second, "a", 0.7, "harmlessness")):
        a, b = item["responses"]  # the judge saw them in the same order; it agrees on the first, not the second
        store.add_pairwise(store.item(item["id"]).prompt_id, a["id"], b["id"], choice, judge, source="ai", judge="m",
                           principle=principle, prob=prob)
    assert client.get("/admin/audit").status_code == 401
    rows = client.get("/admin/audit?format=json", headers={"X-Admin-Token": ADMIN}).json()
    assert sorted(r["agree"] for r in rows) == [0.0, 1.0] and len(rows) == 2
    by_principle = {r["ai"][0]["principle"]: r for r in rows}
    assert by_principle["honesty"]["others"] == [{"annotator": "ann", "source": "human",
                                                  "prefers": first["responses"][0]["id"]}]
    x, _ = by_principle["honesty"]["pair"]
    assert by_principle["honesty"]["ai"][0]["prob"] == pytest.approx(0.8 if x == first["responses"][0]["id"] else 0.2)
    html = client.get("/admin/audit", headers={"X-Admin-Token": ADMIN}).text
    assert 'id="agreement">0.50<' in html and "harmlessness" in html and "ai-judge:m" in html
    assert "<script>window.__pwned" not in html and "&lt;script&gt;" in html  # the XSS answer is shown as text
