"""The labelling web app: people judge queue items; admins add annotators, load queues, export and read stats.

Server-rendered HTML (Jinja2, autoescaped: prompts and responses are untrusted
text) plus one plain script for keyboard shortcuts and drag-and-drop ranking;
nothing is loaded from outside the server. Every judgement goes through
`FeedbackStore`, so labels from this app, the simulated panel and an AI judge
are the same rows.

Routes (an annotator session is required everywhere except /login and /static):
    GET  /login, POST /login, POST /logout      token -> signed session cookie
    GET  /label                                 the current item (K = 2: pairwise, K > 2: ranking)
    POST /label/submit | /label/skip | /label/undo    form posts, answered by a redirect to /label
    GET  /api/me | /api/next | /api/progress     JSON for scripts and tests
    POST /api/judgements | /api/skip | /api/undo
    /admin/...                                  admin token (X-Admin-Token or Authorization: Bearer)
        POST annotators {"name"} -> {"token"};  POST queue?overlap=N (JSONL body);
        GET export[?source=] (JSONL);  GET stats[?source=]

Security: the session cookie is HMAC-signed with a key kept in the database (so
sessions survive a restart) and bound to the annotator's current token (a new
token logs old sessions out); every POST from a session carries its CSRF token
(form field `csrf` or header X-CSRF-Token); responses carry a strict
Content-Security-Policy (scripts only from this server). Reliability: every
judgement carries an idempotency key made by the page, so a retried post is
stored once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from jinja2 import Environment, FileSystemLoader

from rlhfkit.data.loaders import DataError
from rlhfkit.data.records import prompt_json
from rlhfkit.feedback.keys import default_key_file, load_session_key
from rlhfkit.feedback.store import MAX_NOTE, Annotator, Conflict, FeedbackStore, Item

WEB = Path(__file__).parent / "web"
COOKIE = "rlhfkit_session"
MIN_ADMIN_TOKEN = 16  # characters; guessing a shorter one online is not out of reach
MAX_BODY = 64 * 1024  # bytes: a judgement with a full note is a few KiB; anything larger is refused unread
MAX_ID = 2**63 - 1  # ids are SQL BIGINT-sized; larger ones are refused (422) before they reach the database
LOGIN_FAILURES, LOGIN_WINDOW = 10, 60.0  # failed logins per client per window before 429
SESSION_SECONDS = 7 * 24 * 3600
MAX_QUEUE_UPLOAD = 64 * 1024 * 1024  # bytes of JSONL accepted by POST /admin/queue
MESSAGES = {"saved": "Saved.", "skipped": "Skipped.", "nothing": "Nothing to undo.",
            "undone": "Your last judgement was undone: here it is again."}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """No valid annotator session: pages redirect to /login, API calls get 401."""


# ---------------------------------------------------------------- signed session cookie


def sign(data: dict[str, Any], key: bytes) -> str:
    """`base64(json).base64(hmac_sha256)`: readable by the client, unforgeable without `key`."""
    payload = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")
    mac = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return payload + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def unsign(value: str | None, key: bytes, max_age: float = SESSION_SECONDS) -> dict[str, Any] | None:
    """The data of a cookie made by `sign`, or None if it is missing, tampered with or older than `max_age`."""
    if not value or value.count(".") != 1:
        return None
    payload, mac = value.split(".")
    want = base64.urlsafe_b64encode(hmac.new(key, payload.encode(), hashlib.sha256).digest()).decode().rstrip("=")
    if not hmac.compare_digest(mac, want):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    if not isinstance(data, dict) or time.time() - float(data.get("iat", 0)) > max_age:
        return None
    return data


def new_session(**fields: Any) -> dict[str, Any]:
    return {"csrf": secrets.token_urlsafe(24), "iat": time.time(), **fields}


# ---------------------------------------------------------------- request parsing


@dataclass(frozen=True)
class Who:
    annotator: Annotator
    session: dict[str, Any]


async def payload(request: Request) -> dict[str, Any]:
    """The request body as a dict: a JSON object, or form fields; {} when there is none."""
    ctype = request.headers.get("content-type", "")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise HTTPException(413, f"the body is larger than {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():  # counted as it arrives: a missing or false length is no way around the cap
        body += chunk
        if len(body) > MAX_BODY:
            raise HTTPException(413, f"the body is larger than {MAX_BODY} bytes")
    request._body = body  # what request.form() reads
    if ctype.startswith("application/json"):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise HTTPException(400, "the body is not valid JSON (or nested too deeply)") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "the JSON body must be an object")
        return data
    if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        data = dict(form)
        if "acceptable" in form:  # one checkbox per response: a repeated field
            data["acceptable"] = form.getlist("acceptable")
        return data
    return {}


def int_field(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise HTTPException(400, f"field {name!r} must be an integer, got {value!r}")
    if int(value) > MAX_ID:
        raise HTTPException(422, f"field {name!r} is out of range (at most {MAX_ID})")
    return int(value)


def ranking_field(data: dict[str, Any]) -> list[int]:
    """`ranking` as a JSON list of ids or a comma-separated string (the form's hidden field)."""
    value = data.get("ranking")
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list) or not parts:
        raise HTTPException(400, "field 'ranking' must list the response ids, best first")
    return [int_field({"ranking": p}, "ranking") for p in parts]


def marks_field(data: dict[str, Any]) -> dict[str, Any]:
    """Judgement meta with the ids the annotator ticked as acceptable, if the form collected marks.

    The page sends `marks=1` once a checkbox was touched (a JSON client sends `marks: true`), so
    "none is acceptable" differs from "not marked" ({}). Pairwise `both_bad` means neither is acceptable.
    The store rejects ids that are not among the judged responses.
    """
    if data.get("choice") == "both_bad":
        return {"acceptable": []}
    if data.get("marks") not in (True, 1, "1", "true") and not data.get("acceptable"):
        return {}
    value = data.get("acceptable") or []
    ids = [int_field({"acceptable": v}, "acceptable") for v in (value if isinstance(value, list) else [value])]
    return {"acceptable": sorted(set(ids))}


def flag_field(data: dict[str, Any]) -> bool:
    return data.get("flag_harmful") in (True, 1, "1", "on", "true")


def note_field(data: dict[str, Any]) -> str:
    note = data.get("note") or ""
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise HTTPException(400, f"field 'note' must be text of at most {MAX_NOTE} characters")
    return note


def key_field(data: dict[str, Any]) -> str | None:
    key = data.get("key") or None
    if key is not None and (not isinstance(key, str) or len(key) > 128):
        raise HTTPException(400, "field 'key' must be a string of at most 128 characters")
    return key


def shown(item: Item, annotator_id: int) -> list:
    """The item's responses in this annotator's display order: shuffled (position bias averages out over
    annotators), and the same on every reload."""
    return random.Random(f"{item.id}:{annotator_id}").sample(list(item.responses), len(item.responses))


def item_json(item: Item, annotator_id: int) -> dict[str, Any]:
    order = shown(item, annotator_id)
    return {"id": item.id, "prompt": prompt_json(item.prompt), "family": item.family,
            "mode": "pairwise" if len(order) == 2 else "ranking",
            "responses": [{"id": r.id, "text": r.text} for r in order]}


def submit(store: FeedbackStore, who: Who, data: dict[str, Any]) -> int:
    """Store one judgement posted by an annotator (form or JSON); returns its id.

    Pairwise: item_id, a_id, b_id, choice. Ranking: item_id, ranking (ids, best first).
    Optional: key (idempotency), flag_harmful, note, acceptable (ids marked acceptable; see marks_field).
    The item must have been handed to this annotator.
    """
    aid, item_id = who.annotator.id, int_field(data, "item_id")
    item = store.item(item_id)
    if item is None:
        raise HTTPException(404, f"no queue item {item_id}")
    status = store.assignment_status(aid, item_id)
    if status is None:
        raise HTTPException(403, f"item {item_id} was not handed to you")
    if status == "skipped":
        raise HTTPException(409, f"you skipped item {item_id}")
    common = dict(source="human", item_id=item_id, key=key_field(data), flag_harmful=flag_field(data),
                  note=note_field(data), meta=marks_field(data))
    if "choice" in data:
        return store.add_pairwise(item.prompt_id, int_field(data, "a_id"), int_field(data, "b_id"),
                                  str(data["choice"]), aid, **common)
    if "ranking" in data:
        return store.add_ranking(item.prompt_id, ranking_field(data), aid, **common)
    raise HTTPException(400, "give 'choice' (a, b, tie, both_bad) with 'a_id' and 'b_id', or 'ranking'")


# ---------------------------------------------------------------- the app


def create_app(db_url: str, admin_token: str, lease_minutes: float = 30.0, key_file: str | None = None) -> FastAPI:
    """The labelling app over the store at `db_url`; admin routes accept `admin_token` only. Sessions are
    signed with the key in `key_file` (default: `default_key_file(db_url)`)."""
    if not admin_token or len(admin_token) < MIN_ADMIN_TOKEN:
        raise ValueError(f"the admin token must be at least {MIN_ADMIN_TOKEN} characters")
    store = FeedbackStore(db_url, lease_minutes=lease_minutes)
    key = load_session_key(key_file or default_key_file(db_url))
    store.drop_setting("session_key")  # where earlier versions kept it
    templates = Environment(loader=FileSystemLoader(WEB / "templates"), autoescape=True)
    # No /docs or /openapi.json: they would be unauthenticated pages that load Swagger UI from a CDN.
    app = FastAPI(title="rlhfkit labelling", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")

    def page(template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(templates.get_template(template).render(**ctx), status_code=status)

    def with_session(response: Response, data: dict[str, Any]) -> Response:
        response.set_cookie(COOKIE, sign(data, key), max_age=SESSION_SECONDS, httponly=True, samesite="strict",
                            path="/")
        return response

    def session_of(request: Request) -> dict[str, Any] | None:
        return unsign(request.cookies.get(COOKIE), key)

    def annotator(request: Request) -> Who:
        """Dependency: the logged-in person; the session must name them and their current token."""
        s = session_of(request) or {}
        a = store.annotator(s["aid"]) if isinstance(s.get("aid"), int) else None
        if a is None or a.kind != "human" or not a.token_sha or s.get("tag") != a.token_sha[:16]:
            raise LoginRequired()
        logged_out = store.setting(f"logout:{a.id}")  # a logout revokes every session issued before it
        if logged_out is not None and float(s.get("iat", 0)) <= float(logged_out):
            raise LoginRequired()
        return Who(a, s)

    def check_csrf(request: Request, session: dict[str, Any] | None, data: dict[str, Any]) -> None:
        sent = request.headers.get("x-csrf-token") or data.get("csrf")
        want = str((session or {}).get("csrf", "")).encode()
        if not session or not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), want):
            raise HTTPException(403, "missing or invalid CSRF token: reload the page and try again")

    def admin(request: Request) -> None:
        """Dependency: the admin token, as X-Admin-Token or Authorization: Bearer."""
        auth = request.headers.get("authorization", "")
        sent = request.headers.get("x-admin-token") or (auth[7:] if auth.lower().startswith("bearer ") else "")
        if not sent or not hmac.compare_digest(sent.encode(), admin_token.encode()):
            raise HTTPException(401, "admin token required", headers={"WWW-Authenticate": "Bearer"})

    # -- errors: HTML for browsers, JSON for everything else

    def wants_html(request: Request) -> bool:
        api = request.url.path.startswith(("/api/", "/admin/"))
        return "text/html" in request.headers.get("accept", "") and not api

    def error(request: Request, status: int, detail: str, headers: dict | None = None) -> Response:
        if wants_html(request):
            return page("error.html", status, code=status, detail=detail)
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        if request.method == "GET" and wants_html(request):
            return RedirectResponse("/login", status_code=303)
        return JSONResponse({"detail": "login required"}, status_code=401)

    @app.exception_handler(StarletteHTTPException)  # ours and the router's (404, 405)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> Response:
        return error(request, 409, str(exc))

    @app.exception_handler(ValueError)  # the store's validation errors (DataError included)
    async def _bad_input(request: Request, exc: ValueError) -> Response:
        return error(request, 400, str(exc))

    @app.exception_handler(LookupError)
    async def _not_found(request: Request, exc: LookupError) -> Response:
        return error(request, 404, str(exc.args[0]) if exc.args else "not found")

    @app.middleware("http")
    async def _security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    # -- login

    @app.get("/login")
    def login_page(request: Request) -> Response:
        s = session_of(request) or new_session()
        return with_session(page("login.html", csrf=s["csrf"]), s)

    failures: dict[str, list[float]] = {}  # client -> times of recent failed logins

    @app.post("/login")
    def login(request: Request, data: dict = Depends(payload)) -> Response:
        client, now = request.client.host if request.client else "?", time.time()
        recent = failures[client] = [t for t in failures.get(client, []) if now - t < LOGIN_WINDOW]
        if len(recent) >= LOGIN_FAILURES:
            raise HTTPException(429, "too many failed logins: wait a minute", headers={"Retry-After": str(int(LOGIN_WINDOW))})
        s = session_of(request)
        check_csrf(request, s, data)
        a = store.authenticate(str(data.get("token") or ""))
        if a is None or a.kind != "human":
            recent.append(now)
            return page("login.html", 401, csrf=s["csrf"], error="Unknown token.")
        # A fresh session (and CSRF token) at login: a cookie planted before login is worth nothing after it.
        return with_session(RedirectResponse("/label", status_code=303),
                            new_session(aid=a.id, tag=a.token_sha[:16]))

    @app.post("/logout")
    def logout(request: Request, who: Who = Depends(annotator), data: dict = Depends(payload)) -> Response:
        check_csrf(request, who.session, data)
        store.set_setting(f"logout:{who.annotator.id}", repr(time.time()))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- the labelling page (form posts answered by redirects, so a reload never re-posts)

    @app.get("/")
    def home(who: Who = Depends(annotator)) -> Response:
        return RedirectResponse("/label", status_code=303)

    @app.get("/label")
    def label_page(request: Request, who: Who = Depends(annotator)) -> Response:
        aid = who.annotator.id
        item = store.next_item(aid)
        order = shown(item, aid) if item else []
        return page("label.html", name=who.annotator.name, csrf=who.session["csrf"], item=item, shown=order,
                    mode="pairwise" if len(order) == 2 else "ranking", progress=store.progress(aid),
                    message=MESSAGES.get(request.query_params.get("m", ""), ""), max_note=MAX_NOTE)

    @app.post("/label/submit")
    def label_submit(request: Request, who: Who = Depends(annotator), data: dict = Depends(payload)) -> Response:
        check_csrf(request, who.session, data)
        submit(store, who, data)
        return RedirectResponse("/label?m=saved", status_code=303)

    @app.post("/label/skip")
    def label_skip(request: Request, who: Who = Depends(annotator), data: dict = Depends(payload)) -> Response:
        check_csrf(request, who.session, data)
        store.skip(who.annotator.id, int_field(data, "item_id"))
        return RedirectResponse("/label?m=skipped", status_code=303)

    @app.post("/label/undo")
    def label_undo(request: Request, who: Who = Depends(annotator), data: dict = Depends(payload)) -> Response:
        check_csrf(request, who.session, data)
        undone = store.undo_last(who.annotator.id)
        return RedirectResponse("/label?m=" + ("undone" if undone else "nothing"), status_code=303)

    # -- JSON API (same session and CSRF rules)

    @app.get("/api/me")
    def api_me(who: Who = Depends(annotator)) -> dict:
        return {"id": who.annotator.id, "name": who.annotator.name, "csrf": who.session["csrf"]}

    @app.get("/api/next")
    def api_next(who: Who = Depends(annotator)) -> dict:
        item = store.next_item(who.annotator.id)
        return {"item": item_json(item, who.annotator.id) if item else None,
                "progress": store.progress(who.annotator.id)}

    @app.get("/api/progress")
    def api_progress(who: Who = Depends(annotator)) -> dict:
        return store.progress(who.annotator.id)

    @app.post("/api/judgements")
    def api_judge(request: Request, who: Who = Depends(annotator), data: dict = Depends(payload)) -> dict:
        check_csrf(request, who.session, data)
        return {"id": submit(store, who, data)}

    @app.post("/api/skip")
    def api_skip(request: Request, who: Who = Depends(annotator), data: dict = Depends(payload)) -> dict:
        check_csrf(request, who.session, data)
        return {"skipped": store.skip(who.annotator.id, int_field(data, "item_id"))}

    @app.post("/api/undo")
    def api_undo(request: Request, who: Who = Depends(annotator), data: dict = Depends(payload)) -> dict:
        check_csrf(request, who.session, data)
        return {"undone": store.undo_last(who.annotator.id)}

    # -- admin API

    @app.post("/admin/annotators", dependencies=[Depends(admin)])
    def admin_add_annotator(data: dict = Depends(payload)) -> dict:
        name = data.get("name")
        if not isinstance(name, str):
            raise HTTPException(400, "field 'name' must be a string")
        aid, token = store.add_annotator(name, "human")
        return {"id": aid, "name": name, "token": token}

    @app.post("/admin/queue", dependencies=[Depends(admin)])
    async def admin_load_queue(request: Request, overlap: int = 1) -> dict:
        body = await request.body()
        if len(body) > MAX_QUEUE_UPLOAD:
            raise HTTPException(413, f"queue upload over {MAX_QUEUE_UPLOAD} bytes: load it with the CLI")
        fd, path = tempfile.mkstemp(suffix=".jsonl")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            return await run_in_threadpool(store.load_queue_jsonl, path, overlap)
        except DataError as e:
            raise HTTPException(400, str(e).replace(path, "upload")) from None
        finally:
            os.unlink(path)

    @app.get("/admin/export", dependencies=[Depends(admin)])
    def admin_export(source: str | None = None) -> Response:
        lines = (json.dumps(c.to_json(), ensure_ascii=False) + "\n" for c in store.preference_pairs(source))
        return PlainTextResponse("".join(lines), media_type="application/jsonl")

    @app.get("/admin/audit", dependencies=[Depends(admin)])
    def admin_audit(request: Request, format: str = "html") -> Response:
        """AI labels next to people's, pair by pair: a page, or JSON with format=json."""
        rows = store.audit()
        return JSONResponse(rows) if format == "json" else page("audit.html", rows=rows)

    @app.get("/admin/stats", dependencies=[Depends(admin)])
    def admin_stats(source: str | None = None) -> dict:
        return store.stats(source)

    return app
