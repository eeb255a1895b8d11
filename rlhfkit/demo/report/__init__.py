"""The run report: one self-contained `report.html` (+ `report.md`) for a pipeline run directory.

Reads, when present: `eval/metrics.json`, `eval/samples.jsonl`, each stage's
`metrics.jsonl`, `rm/rm_metrics.json` and `feedback/feedback_stats.json`; a
missing or unreadable piece is skipped and listed under "Notes". Every number
shown is read from those files and printed with `fmt`; the only derived values
are the over-optimisation fit (α, β) and the plots' moving averages.

HTML hooks for tests and scripts: `<table id="metrics">` with cells
`<td data-metric="POLICY.KEY">` (KEY a field of that policy in metrics.json),
`<img class="plot" data-plot="NAME">`, `#before-after`, `#reward-hacking`,
`#overopt-fit`, `#notes`; numbers from other files carry `data-src="FILE:KEY"`.
All model text is HTML-escaped; plots are base64 PNGs; no external resource.
"""

from __future__ import annotations

import html
import os
import time

from rlhfkit.demo.report.data import load_run, markdown_metrics
from rlhfkit.demo.report.ai import ai_section
from rlhfkit.demo.report.sections import SECTIONS, Report, notes_section

__all__ = ["write_report", "markdown_metrics", "load_run"]


def write_report(run_dir: str, out_dir: str | None = None, title: str = "rlhfkit run report") -> tuple[str, str]:
    """Write `report.html` (self-contained) and `report.md` (+ `report_plots/*.png`) into `out_dir`
    (default: `run_dir`) for the pipeline run in `run_dir`; returns their paths."""
    out_dir = out_dir or run_dir
    os.makedirs(out_dir, exist_ok=True)
    r = Report(load_run(run_dir), out_dir)
    for build in (*SECTIONS, ai_section):
        marks = len(r.html), len(r.md), len(r.nav)
        try:
            build(r)
        except Exception as e:  # a malformed input file must cost one section, not the report
            del r.html[marks[0]:], r.md[marks[1]:], r.nav[marks[2]:]
            r.note(f"{build.__name__} skipped: {type(e).__name__}: {e}")
    notes_section(r)
    where = (f"{os.path.abspath(run_dir)} · stages with logs: {', '.join(r.data.curves) or 'none'} · "
             f"generated {time.strftime('%Y-%m-%d %H:%M')}")
    nav = "".join(f'<a href="#sec-{sid}">{html.escape(t)}</a>' for sid, t in r.nav)
    html_path, md_path = os.path.join(out_dir, "report.html"), os.path.join(out_dir, "report.md")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(PAGE.format(title=html.escape(title), sub=html.escape(where), nav=nav, css=CSS, body="\n".join(r.html)))
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(f"# {title}\n\n{where}\n" + "".join(r.md))
    return html_path, md_path


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body><header><div class="wrap"><h1>{title}</h1><p class="sub">{sub}</p></div></header>
<nav><div class="wrap">{nav}</div></nav>
<main class="wrap">
{body}
</main></body></html>
"""

CSS = """
:root { --ink:#222831; --muted:#5f6670; --line:#e3e6ea; --bg:#f4f5f7; --good:#1e7a46; --goodbg:#e2f3e8;
        --bad:#b4232f; --badbg:#fbe5e7; --mid:#8a5a00; --midbg:#fdf1d8; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink); line-height:1.45;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.wrap { max-width: 1180px; margin: 0 auto; padding: 0 20px; }
header { background: linear-gradient(120deg, #1f2a44, #2f4a7a); color: white; padding: 26px 0 20px; }
header h1 { margin: 0; font-size: 1.7em; letter-spacing: .01em; }
header .sub { margin: 6px 0 0; color: #c9d3e6; font-size: .88em; word-break: break-all; }
nav { position: sticky; top: 0; z-index: 5; background: rgba(255,255,255,.94); border-bottom: 1px solid var(--line); }
nav .wrap { display: flex; flex-wrap: wrap; gap: 4px; padding-top: 8px; padding-bottom: 8px; }
nav a { color: #2f4a7a; text-decoration: none; font-size: .88em; padding: 4px 10px; border-radius: 999px; }
nav a:hover { background: #e8eef8; }
section { background: white; border: 1px solid var(--line); border-radius: 10px; margin: 20px 0;
          padding: 18px 22px 22px; box-shadow: 0 1px 2px rgba(0,0,0,.04); }
h2 { margin: 0 0 6px; font-size: 1.3em; }
h3 { margin: 22px 0 8px; font-size: 1.02em; color: #333a44; }
.intro { color: var(--muted); margin: 0 0 14px; font-size: .93em; max-width: 900px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .9em; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { text-align: left; font-weight: 600; color: #39404a; border-bottom: 2px solid #cfd4da; white-space: nowrap; }
tbody th { text-align: left; font-weight: 500; color: #39404a; white-space: nowrap; }
table.grid tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { background: var(--goodbg); color: var(--good); font-weight: 600; }
.chip { display: inline-block; width: 10px; height: 10px; border-radius: 3px; margin-right: 6px; vertical-align: baseline; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 6px 0 18px; }
.card { flex: 1 1 170px; max-width: 240px; border: 1px solid var(--line); border-left: 5px solid #9aa0a6;
        border-radius: 8px; padding: 10px 14px; }
.card.up { border-left-color: var(--good); } .card.down { border-left-color: var(--bad); }
.card .big { font-size: 2em; font-weight: 700; font-variant-numeric: tabular-nums; }
.card.up .big { color: var(--good); } .card.down .big { color: var(--bad); }
.card .lbl { color: var(--muted); font-size: .82em; } .card .ci { font-size: .8em; color: var(--muted); margin-top: 4px; }
.card .who { font-weight: 600; font-size: .92em; }
table.examples { width: 100%; table-layout: fixed; }
table.examples tbody th { white-space: normal; width: 19%; }
table.examples td { font-size: .92em; }
.what { font-size: .75em; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
.prompt { font-weight: 600; }
.resp { white-space: pre-wrap; word-break: break-word; margin-bottom: 6px; }
.badge { display: inline-block; font-size: .75em; padding: 1px 8px; border-radius: 999px; background: #eceff3; color: #39404a; }
.badge.good { background: var(--goodbg); color: var(--good); } .badge.bad { background: var(--badbg); color: var(--bad); }
.badge.mid { background: var(--midbg); color: var(--mid); }
figure { margin: 14px 0; } img.plot { max-width: 100%; height: auto; display: block; }
.pair { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; margin: 10px 0; }
.two { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; margin-top: 6px; }
table.kv td { min-width: 90px; }
.row { display: flex; flex-wrap: wrap; gap: 8px 40px; align-items: flex-start; }
.row figure { margin-top: 22px; }
#notes { color: var(--muted); font-size: .9em; }
.caption { color: var(--muted); font-size: .8em; margin: 6px 0 0; }
"""
