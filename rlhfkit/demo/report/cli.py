"""`rlhfkit report`: the HTML + Markdown report of a pipeline run directory.

Reads what the stages wrote under `run_dir` (see `rlhfkit.demo.report`)
and writes `report.html`, `report.md` and `report_plots/` into `out_dir`.
Runs nothing on a model: it only reads files, so it is cheap to rerun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rlhfkit.demo.report import write_report


@dataclass
class Config:
    out_dir: str = "runs/demo/report"  # where report.html / report.md / report_plots/ go
    run_dir: str = ""  # the pipeline run to report on ("": the parent of out_dir)
    title: str = "rlhfkit run report"  # page title


def main(cfg: Config) -> tuple[str, str]:
    run_dir = cfg.run_dir or os.path.dirname(os.path.normpath(cfg.out_dir)) or "."
    html_path, md_path = write_report(run_dir, cfg.out_dir, cfg.title)
    print(f"[report] {html_path}\n[report] {md_path}", flush=True)
    return html_path, md_path
