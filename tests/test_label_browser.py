"""The labelling app in a real headless Chromium (Debian's package, driven by Playwright).

An annotator logs in, labels pairwise and ranking items with the keyboard and
the mouse, undoes one, skips one; the exported pairs must be exactly what was
chosen. A response carrying a script shows as text and never runs.
Install the browser with scripts/install_browser.sh.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

from rlhfkit.feedback.store import FeedbackStore
from tests.test_label_load import ADMIN, LabelServer

XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 1"> click me'

# The queue, handed out in this order (oldest first).
QUEUE = [
    ("P1", ["p1 first", "p1 second"]),
    ("P2", ["p2 first", "p2 second"]),
    ("P3", ["p3 first", "p3 second"]),
    ("R1", ["r1 one", "r1 two", "r1 three"]),
    ("P4", ["p4 first", "p4 second"]),
    ("X <b>bold?</b>", [XSS, "x harmless"]),
    ("R2", ["r2 one", "r2 two", "r2 three", "r2 four"]),
    ("P5", ["p5 first", "p5 second"]),
]


@pytest.fixture()
def server(tmp_path):
    url = f"sqlite:///{tmp_path / 'browser.db'}"
    store = FeedbackStore(url)
    path = tmp_path / "queue.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "responses": r, "policy": "sft"}) + "\n" for p, r in QUEUE))
    store.load_queue_jsonl(str(path), overlap=1)
    _, token = store.add_annotator("ann", "human")
    with LabelServer(url, str(tmp_path / "server.log")) as s:
        yield s, token


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def at(page, prompt: str) -> None:
    assert text(page, "#prompt") == prompt


def pair_texts(page) -> tuple[str, str]:
    return text(page, 'article[data-pos="A"] pre.text'), text(page, 'article[data-pos="B"] pre.text')


def ranked_texts(page) -> dict[int, str]:
    """Display number -> text of a ranking item."""
    n = page.locator("#order li").count()
    return {i: text(page, f'#order li[data-pos="{i}"] pre.text') for i in range(1, n + 1)}


def press(page, key: str) -> None:
    """A key that submits a form: wait for the post -> redirect -> next page."""
    with page.expect_navigation():
        page.keyboard.press(key)


def test_label_in_a_real_browser(chromium, server, tmp_path):
    srv, token = server
    context = chromium.new_context(base_url=srv.url)
    page = context.new_page()
    page_errors: list[str] = []  # script exceptions, CSP violations, failed loads
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and page_errors.append(m.text))
    expected: list[tuple[str, str, str]] = []  # (prompt, chosen, rejected) in judgement order

    # log in
    page.goto("/label")
    assert page.url.endswith("/login")  # no session: sent to the login form
    page.fill("#token", token)
    with page.expect_navigation():
        page.click("#login")
    assert page.url.endswith("/label") and text(page, "#progress") == "0 / 8 done"

    # keyboard: 1 = A better
    at(page, "P1")
    a, b = pair_texts(page)
    press(page, "1")
    expected.append(("P1", a, b))
    # 2 = B better, then u = undo it and call it a tie (no pair) instead
    at(page, "P2")
    press(page, "2")
    press(page, "u")
    at(page, "P2")
    assert "undone" in text(page, "#message")
    press(page, "t")
    # b = both bad: no pair
    at(page, "P3")
    press(page, "b")
    # ranking with number keys: 3 then 1 (2 is implied last), Enter
    at(page, "R1")
    r = ranked_texts(page)
    page.keyboard.press("3")
    page.keyboard.press("1")
    assert [text(page, f"#order li:nth-child({i}) pre.text") for i in (1, 2, 3)] == [r[3], r[1], r[2]]
    press(page, "Enter")
    expected += [("R1", r[3], r[1]), ("R1", r[3], r[2]), ("R1", r[1], r[2])]
    # flag as harmful (h), a note, then B better
    at(page, "P4")
    a, b = pair_texts(page)
    page.keyboard.press("h")
    page.keyboard.press("n")
    page.keyboard.type("b is rude; 1 2 t u s")  # shortcuts are off while typing the note
    page.keyboard.press("Escape")
    press(page, "2")
    expected.append(("P4", b, a))
    assert text(page, "#progress") == "5 / 8 done"

    # the XSS item: shown as text, never run; labelled with the mouse
    at(page, "X <b>bold?</b>")
    assert page.evaluate("window.__pwned") is None
    a, b = pair_texts(page)
    assert XSS in (a, b)
    assert page.locator("article pre.text img").count() == 0
    page.screenshot(path=str(tmp_path / "label.png"), full_page=True)
    with page.expect_navigation():
        page.click("#choose-b")
    expected.append(("X <b>bold?</b>", b, a))
    assert page.evaluate("window.__pwned") is None

    # ranking with the mouse: drag response 4 to the top, then move response 3 up one place
    at(page, "R2")
    r = ranked_texts(page)
    page.drag_and_drop('#order li[data-pos="4"]', '#order li[data-pos="1"]', target_position={"x": 20, "y": 3})
    page.click('#order li[data-pos="3"] button.up')
    page.check('#order li[data-pos="4"] input[name="acceptable"]')  # only the best one is acceptable
    order = [r[4], r[1], r[3], r[2]]
    assert [text(page, f"#order li:nth-child({i}) pre.text") for i in (1, 2, 3, 4)] == order
    with page.expect_navigation():
        page.click("#submit-ranking")
    expected += [("R2", order[i], order[j]) for i in range(4) for j in range(i + 1, 4)]

    # skip the last one
    at(page, "P5")
    press(page, "s")
    assert page.locator("#empty").is_visible() and text(page, "#progress") == "7 / 7 done"
    page.screenshot(path=str(tmp_path / "done.png"), full_page=True)
    assert page_errors == []

    # export: exactly the pairs chosen above
    r = httpx.get(srv.url + "/admin/export", headers={"Authorization": f"Bearer {ADMIN}"})
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert [(x["prompt"], x["chosen"], x["rejected"]) for x in rows] == expected
    flagged = [x for x in rows if x["meta"]["flag_harmful"]]
    assert [(x["prompt"], x["meta"]["note"]) for x in flagged] == [("P4", "b is rude; 1 2 t u s")]
    assert {x["annotator"] for x in rows} == {"ann"} and {x["source"] for x in rows} == {"human"}
    marks = {(x["prompt"], x["chosen"], x["rejected"]): (x["meta"].get("chosen_acceptable"), x["meta"].get("rejected_acceptable"))
             for x in rows}
    assert {marks[("R2", order[i], order[j])] for i in range(4) for j in range(i + 1, 4)} == {(True, False), (False, False)}
    assert marks[("R2", order[0], order[1])] == (True, False)
    assert marks[("P1",) + expected[0][1:]] == (None, None)  # no box touched: no marks
    assert os.path.getsize(tmp_path / "label.png") > 1000

    # another browser without a session is turned away
    stranger = chromium.new_context(base_url=srv.url)
    assert stranger.request.get("/api/next").status == 401
    assert stranger.request.post("/label/undo", form={"csrf": "x"}).status == 401
    other = stranger.new_page()
    other.goto("/label")
    assert other.url.endswith("/login")
    stranger.close()
    context.close()
