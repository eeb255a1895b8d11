"""The report in a real headless Chromium (Debian's package, driven by Playwright).

Every plot decodes and renders, the tables a reader needs are on screen, and the
page loads nothing from outside the file. Install the browser with
scripts/install_browser.sh.
"""

from __future__ import annotations

import pytest

from rlhfkit.demo.report import write_report
from tests.test_report import make_run

PLOTS = {"winrate", "hacking", "overopt", "rl-curves", "dpo-curves", "lm-loss", "rm-curves", "rm-calibration"}


@pytest.fixture()
def page(chromium):
    return chromium.new_page(viewport={"width": 1280, "height": 900})


def test_report_renders_in_chromium(page, tmp_path):
    make_run(tmp_path / "run")
    html_path, _ = write_report(str(tmp_path / "run"))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"file://{html_path}")
    page.wait_for_load_state("load")

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000  # a full page of tables and plots, not a blank canvas

    sizes = page.eval_on_selector_all(
        "img.plot", "els => els.map(e => [e.dataset.plot, e.complete, e.naturalWidth, e.naturalHeight, e.clientWidth])")
    assert {s[0] for s in sizes} == PLOTS
    for name, complete, nat_w, nat_h, shown_w in sizes:
        assert complete and nat_w > 200 and nat_h > 100, f"plot {name} did not decode: {nat_w}x{nat_h}"
        assert shown_w > 200, f"plot {name} is not laid out ({shown_w}px wide)"

    for sel in ("#metrics", "#before-after", "#reward-hacking", "#overopt-fit", "#notes"):
        assert page.locator(sel).is_visible(), f"{sel} is not visible"
    assert page.locator("#metrics tbody tr").count() >= 15
    assert page.locator("#before-after tbody tr").count() == 4
    # the metrics table fits the page width (it scrolls inside its own box if it ever does not)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    # the escaped model text is shown as text, and its markup did not run
    assert "<script>window.__pwned" in page.locator("#before-after").inner_text()
    assert page.evaluate("window.__pwned") is None
    assert all(u.startswith(("file://", "data:")) for u in requests), [u for u in requests if not u.startswith(("file://", "data:"))]
