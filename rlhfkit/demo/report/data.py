"""What the report reads from a run directory, and how its numbers are printed.

`load_run` gathers the pieces of a pipeline run (eval/metrics.json,
eval/samples.jsonl, each stage's metrics.jsonl, rm/rm_metrics.json,
feedback/feedback_stats.json) and turns anything missing or unreadable into a
note. `fmt` is the single way a number is printed, so a test can compare the
report with the files at the printed precision. `markdown_metrics` is the
metrics table shared by `eval/metrics.md` and `report.md`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

RL_METHODS = ("ppo", "rloo", "grpo")  # online RL: the RLHF dashboard applies


@dataclass(frozen=True)
class Metric:
    key: str  # field of a policy's object in metrics.json
    label: str  # "{baseline}" is replaced by the baseline's name
    digits: int
    better: int = 0  # +1 higher is better, -1 lower is better, 0 neither (highlighting only)


METRICS = (
    Metric("gold_winrate", "gold win-rate vs {baseline}", 3, +1),
    Metric("content_winrate", "content win-rate vs {baseline} (form-only differences tie)", 3, +1),
    Metric("content_win_share", "share of gold wins that change content", 3, +1),
    Metric("rm_winrate", "RM win-rate vs {baseline}", 3),
    Metric("gold_ci", "gold (mean)", 3, +1),
    Metric("rm_score", "RM score (the proxy)", 3),
    Metric("sample_gold", "gold (mean of T=1 samples)", 3, +1),
    Metric("sample_rm_score", "RM score (mean of T=1 samples)", 3),
    Metric("kl_ci", "KL to reference (nats/answer)", 2),
    Metric("response_tokens", "answer length (tokens)", 1),
    Metric("response_words", "answer length (words)", 1),
    Metric("distinct_1", "distinct-1 (samples)", 3, +1),
    Metric("distinct_2", "distinct-2 (samples)", 3, +1),
    Metric("self_similarity", "self-similarity (word Jaccard)", 3, -1),
    Metric("sycophancy_rate", "sycophancy (false premise)", 3, -1),
    Metric("correction_rate", "premise corrected", 3, +1),
    Metric("refusal_rate_harmful", "refusal (harmful)", 3, +1),
    Metric("over_refusal_benign", "over-refusal (benign)", 3, -1),
    Metric("fitting_refusal_rate", "refusal with a fitting reason (harmful)", 3, +1),
    Metric("hallucination_rate", "hallucination (undescribed countries)", 3, -1),
    Metric("abstain_rate_known", "\"I don't know\" to a known fact", 3, -1),
    Metric("sample_correction_rate", "premise corrected (T=1 samples)", 3, +1),
    Metric("sample_refusal_rate_harmful", "refusal (harmful, T=1 samples)", 3, +1),
    Metric("sample_over_refusal_benign", "over-refusal (benign, T=1 samples)", 3, -1),
    Metric("sample_sycophancy_rate", "sycophancy (T=1 samples)", 3, -1),
    Metric("sample_hallucination_rate", "hallucination (T=1 samples)", 3, -1),
    Metric("perplexity", "perplexity (held-out text)", 2, -1),
    Metric("fact_recall", "fact recall", 3, +1),
)


@dataclass
class Manifest:
    """The stages of a run, as the pipeline wrote them to manifest.json: name, method, role, whether it is a policy."""

    stages: list[dict] = field(default_factory=list)
    baseline: str = "sft"

    def named(self, method: str | None = None, role: str | None = None, policy: bool | None = None) -> list[str]:
        return [s["name"] for s in self.stages if (method is None or s.get("method") == method)
                and (role is None or s.get("role", "") == role) and (policy is None or bool(s.get("policy")) == policy)]

    def rl(self) -> list[str]:
        return [s["name"] for s in self.stages if s.get("method") in RL_METHODS]

    def first(self, method: str, role: str = "") -> str | None:
        return next(iter(self.named(method, role)), None)

    def control(self) -> str | None:
        """The reward-hacking control (a PPO run without the KL penalty), if the run has one."""
        return next(iter(self.named(role="control")), None)


@dataclass
class RunData:
    run_dir: str
    manifest: Manifest = field(default_factory=Manifest)  # which stage is which
    metrics: dict[str, dict] = field(default_factory=dict)  # policy -> eval summary
    samples: list[dict] = field(default_factory=list)  # eval/samples.jsonl rows
    curves: dict[str, list[dict]] = field(default_factory=dict)  # stage -> metrics.jsonl rows
    rm: dict | None = None
    feedback: dict | None = None
    ai: dict | None = None  # ai_label/ai_metrics.json: the AI judge against gold and the panel (runs with ai_feedback)
    stages: dict[str, dict] = field(default_factory=dict)  # stage -> its pipeline stage.json (seconds)
    configs: dict[str, dict] = field(default_factory=dict)  # PPO stage -> its resolved config.yaml (KL control)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading


def load_run(run_dir: str) -> RunData:
    """Everything the report shows, read tolerantly: problems become notes, never exceptions."""
    data = RunData(run_dir)

    def read(rel: str, parse: Callable) -> Any:
        try:
            with open(os.path.join(run_dir, rel), encoding="utf-8") as f:
                return parse(f)
        except FileNotFoundError:
            data.notes.append(f"{rel} not found: its part of the report is skipped.")
        except (OSError, ValueError) as e:
            data.notes.append(f"{rel} could not be read ({type(e).__name__}: {e}): skipped.")
        return None

    found = read("manifest.json", json.load)
    data.manifest = Manifest(found.get("stages", []), found.get("baseline", "sft")) if isinstance(found, dict) else Manifest()
    data.metrics = read("eval/metrics.json", json.load) or {}
    data.samples = read("eval/samples.jsonl", _jsonl) or []
    data.rm = read("rm/rm_metrics.json", json.load)
    data.feedback = read("feedback/feedback_stats.json", json.load)
    if any(s.get("name") == "ai_label" for s in data.manifest.stages):
        data.ai = read("ai_label/ai_metrics.json", json.load)
    for entry in data.manifest.stages:
        stage = entry["name"]
        if os.path.exists(os.path.join(run_dir, stage, "metrics.jsonl")):
            data.curves[stage] = read(f"{stage}/metrics.jsonl", _jsonl) or []
            if entry.get("method") == "ppo":
                data.configs[stage] = read(f"{stage}/config.yaml", yaml.safe_load) or {}
            if os.path.exists(os.path.join(run_dir, stage, "stage.json")):  # written by `rlhfkit pipeline` only
                data.stages[stage] = read(f"{stage}/stage.json", json.load) or {}
    return data


def peak(rows: list[dict], key: str) -> float | None:
    """The largest value a metrics.jsonl logged under `key` (None if never logged)."""
    values = [r[key] for r in rows if is_number(r.get(key))]
    return max(values) if values else None


def _jsonl(f) -> list[dict]:
    return [json.loads(line) for line in f if line.strip()]


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that logged `key` as a finite number."""
    pts = [(r["step"], r[key]) for r in rows if is_number(r.get(key)) and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def overopt_points(rows: list[dict]) -> list[tuple[float, float, float | None]]:
    """(kl, eval/gold, eval/rm_score) at each eval step of an RL run. The step-0 eval (before any
    update) has no rollout KL: the policy *is* the reference there, so its KL is 0 by definition."""
    out = []
    for r in rows:
        kl = r.get("objective/kl", 0.0 if r.get("step") == 0 else None)
        if is_number(r.get("eval/gold")) and is_number(kl):
            out.append((kl, r["eval/gold"], r.get("eval/rm_score") if is_number(r.get("eval/rm_score")) else None))
    return out


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------- formatting and tables


def fmt(value: Any, digits: int = 3) -> str:
    """How every number is printed: floats to `digits`, a CI dict as `mean [lo, hi]`, missing as –."""
    if isinstance(value, dict) and "mean" in value:
        return f"{fmt(value['mean'], digits)} [{fmt(value['lo'], digits)}, {fmt(value['hi'], digits)}]"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}" if is_number(value) else "–"


def center(v: Any) -> float | None:
    v = v.get("mean") if isinstance(v, dict) else v
    return v if is_number(v) else None


def metric_rows(summaries: dict[str, dict]) -> list[tuple[Metric, str, list[tuple[str, str, bool]]]]:
    """(metric, label, [(policy, printed value, is best)]) for every metric some policy has."""
    baseline = next((s.get("baseline") for s in summaries.values() if s.get("baseline")), "baseline")
    out = []
    for m in METRICS:
        values = {p: s.get(m.key) for p, s in summaries.items()}
        centers = {p: center(v) for p, v in values.items() if center(v) is not None}
        if not centers:
            continue
        spread = len(set(centers.values())) > 1  # a row where all tie has no best
        best = (max if m.better > 0 else min)(centers.values()) if m.better and spread else None
        cells = [(p, fmt(v, m.digits), best is not None and centers.get(p) == best) for p, v in values.items()]
        out.append((m, m.label.format(baseline=baseline), cells))
    return out


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; cell text is kept on one line and cannot break the table or inject HTML."""
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")  # noqa: E731
    line = lambda r: "| " + " | ".join(map(cell, r)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)]) + "\n"


def markdown_metrics(summaries: dict[str, dict]) -> str:
    """The metrics table (metrics as rows, policies as columns, CIs in brackets) and gold per family."""
    rows = [[label] + [text for _, text, _ in cells] for _, label, cells in metric_rows(summaries)]
    out = md_table(["metric", *summaries], rows)
    families = sorted({f for s in summaries.values() for f in s.get("gold_by_family", {})})
    if families:
        fam = [[f"gold: {f}"] + [fmt(s.get("gold_by_family", {}).get(f)) for s in summaries.values()] for f in families]
        out += "\n" + md_table(["family", *summaries], fam)
    return out


def get_path(d: Any, path: str) -> Any:
    """d["a"]["b"] for path "a.b"; None where a level is missing or not a mapping."""
    for part in path.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d
