"""The report's AI-feedback section (the demo's `--config=demo_ai` path): the AI judge beside the simulated panel,
RLAIF's PPO beside the panel's, and Constitutional AI's supervised stage. Written like the sections of
`sections.py`, whose helpers it uses; absent inputs leave the section out."""

from __future__ import annotations

import json
import os

from rlhfkit.demo.report.data import fmt, get_path, is_number, md_table
from rlhfkit.demo.report.sections import Report, _kv, html_table, row_head, td

AI_STAGES = ("judge", "ai_label", "rm_ai", "ppo_ai", "sft_helpful", "cai_critic", "cai", "sft_cai", "cai_label", "rm_cai", "ppo_cai")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}  # the AI-feedback path's stages (pipeline ai_feedback=true)


def ai_section(r: Report) -> None:
    """The AI judge beside the simulated panel: accuracy against gold on held-out pairs per family and per
    principle, position consistency, agreement with the panel's majority, labelling speed; then PPO on the AI's
    preferences (RLAIF) beside PPO on the panel's, by gold win-rate against the baseline."""
    a, m, d = r.data.ai, r.data.metrics, r.data
    if not a:
        return
    f = "ai_label/ai_metrics.json"
    r.section("ai", "AI feedback (RLAIF) beside the simulated panel",
              "A judge model, trained on the world's reviews of training prompts (pairs of the kinds of answers the world "
              "writes and, where configured, of the SFT model's own samples; never on gold at labelling time), "
              "labelled the same queue the panel ranked. Accuracy: the share of pairs whose gold differs by more than "
              f"{fmt(a.get('min_gold_gap'), 2)} ordered as gold orders them (a tie counts half). \"one order\": each "
              "order's own verdict, before swap-debiasing; \"debiased\": the mean of both orders' probabilities.")
    h = a.get("heldout") or {}
    items = (("heldout.pairs", "held-out pairs (SFT samples to eval prompts)"), ("heldout.judge_accuracy", "judge accuracy, debiased"),
             ("heldout.judge_accuracy_one_order", "judge accuracy, one order"), ("heldout.panel_accuracy", "panel accuracy (one annotator)"),
             ("heldout.position_consistency", "position consistency before debiasing"),
             ("heldout.position_consistency_debiased", "position consistency after debiasing"),
             ("heldout.first_position_rate", "share of one-order verdicts for the first answer"),
             ("queue.judge_accuracy", "queue: judge accuracy"), ("queue.panel_accuracy", "queue: panel accuracy (each ranking's pairs)"),
             ("queue.agreement_with_panel_majority", "queue: agreement with the panel's majority"),
             ("queue.pairs_with_panel_majority", "queue: pairs with a panel majority"),
             ("queue.judge_labels_per_second", "judge: labels per second"), ("queue.panel_labels_per_second", "panel: labels per second"))
    r.html.append('<div class="row">')
    _kv(r, a, f, "ai-summary", "Judge and panel", items)
    secs = {}
    for s in AI_STAGES:  # d.stages holds only stages with a metrics.jsonl; ai_label has none
        marker = os.path.join(d.run_dir, s, "stage.json")
        if s in d.stages or os.path.exists(marker):
            secs[s] = get_path(d.stages.get(s) or _read_json(marker), "seconds")
    if secs:
        rows = [[row_head(s), td(fmt(v, 1), ("data-src", f"{s}/stage.json:seconds"))] for s, v in secs.items()]
        total = sum(v for v in secs.values() if is_number(v))
        rows.append([row_head("AI path"), td(fmt(total, 1))])
        r.html.append(f"<div><h3>Wall time (s)</h3>{html_table('ai-time', ['stage', 'seconds'], rows, 'kv')}</div>")
        r.md.append("\n### Wall time (s)\n\n" + md_table(["stage", "seconds"], [[s, fmt(v, 1)] for s, v in secs.items()]
                                                           + [["AI path", fmt(total, 1)]]))
    r.html.append("</div>")
    for key, title in (("by_family", "family"), ("by_principle", "principle")):
        groups = h.get(key) or {}
        if not groups:
            continue
        header = [title, "pairs", "judge, debiased", "judge, one order", "panel", "position consistency"]
        rows, md_rows = [], []
        for g, v in groups.items():
            vals = [(v.get("pairs"), "pairs", 0), (v.get("judge"), "judge", 3), (v.get("judge_one_order"), "judge_one_order", 3),
                    (v.get("panel"), "panel", 3), (v.get("consistency"), "consistency", 3)]
            rows.append([row_head(g)] + [td(fmt(x, n), ("data-src", f"{f}:heldout.{key}.{g}.{k}")) for x, k, n in vals])
            md_rows.append([g] + [fmt(x, n) for x, _, n in vals])
        r.html.append(f"<h3>Held-out accuracy by {title}</h3>" + html_table(f"ai-{key}", header, rows, "grid"))
        r.md.append(f"\n### Held-out accuracy by {title}\n\n" + md_table(header, md_rows))
    policies = [p for p in ("ppo", "ppo_ai") if p in m]
    if policies:
        header = ["policy", "gold win-rate vs baseline", "95% CI", "gold (mean)"]
        rows, md_rows = [], []
        for p in policies:
            w = m[p].get("gold_winrate") or {}
            rows.append([row_head(p), td(fmt(w.get("mean")), ("data-metric", f"{p}.gold_winrate.mean")),
                         td(f"[{fmt(w.get('lo'))}, {fmt(w.get('hi'))}]"), td(fmt(get_path(m[p], "gold_ci.mean")), ("data-metric", f"{p}.gold_ci.mean"))])
            md_rows.append([p, fmt(w.get("mean")), f"[{fmt(w.get('lo'))}, {fmt(w.get('hi'))}]", fmt(get_path(m[p], "gold_ci.mean"))])
        r.html.append("<h3>RLAIF: PPO on the judge's preferences (ppo_ai) beside PPO on the panel's (ppo)</h3>"
                      + html_table("ai-rlaif", header, rows, "grid"))
        r.md.append("\n### RLAIF: PPO on the judge's preferences (ppo_ai) beside PPO on the panel's (ppo)\n\n" + md_table(header, md_rows))
    _cai_table(r)
    r.end()


def _cai_table(r: Report) -> None:
    """Constitutional AI's supervised stage: the critic's revisions against its original answers by gold, and
    the CAI-SL policy beside the baseline and the helpful-only policy on refusals (cai/cai_metrics.json, eval/metrics.json)."""
    f, m = "cai/cai_metrics.json", r.data.metrics
    c = _read_json(os.path.join(r.data.run_dir, f))
    if not c:
        return
    header = ["red-team prompts", "prompts", "revision wins", "ties", "losses"]
    groups = c.get("revision_vs_original") or {}
    rows = [[row_head(g)] + [td(fmt(v.get(k), 0 if k == "prompts" else 3), ("data-src", f"{f}:revision_vs_original.{g}.{k}"))
                             for k in ("prompts", "win", "tie", "loss")] for g, v in groups.items()]
    r.html.append("<h3>Constitutional AI (supervised): final revision vs original answer, by gold</h3>"
                  + html_table("ai-cai", header, rows, "grid"))
    r.md.append("\n### Constitutional AI (supervised): final revision vs original answer, by gold\n\n"
                + md_table(header, [[g] + [fmt(v.get(k), 0 if k == "prompts" else 3) for k in ("prompts", "win", "tie", "loss")]
                                    for g, v in groups.items()]))
    policies = [p for p in (r.data.manifest.baseline, "sft_helpful", "sft_cai", "ppo_cai") if p in m]
    keys = (("refusal_rate_harmful", "refusal (harmful)"), ("fitting_refusal_rate", "refusal with a fitting reason"),
            ("over_refusal_benign", "over-refusal (benign)"), ("gold_winrate.mean", "gold win-rate vs baseline"))
    if r.data.manifest.baseline in policies and "sft_cai" in policies:
        rows = [[row_head(label)] + [td(fmt(get_path(m[p], k)), ("data-metric", f"{p}.{k}")) for p in policies] for k, label in keys]
        r.html.append("<h3>CAI-SL policy (sft_cai) and RL-CAI (ppo_cai) beside the baseline</h3>"
                      + html_table("ai-cai-policy", ["", *policies], rows, "grid"))
        r.md.append("\n### CAI-SL policy (sft_cai) and RL-CAI (ppo_cai) beside the baseline\n\n"
                    + md_table(["", *policies], [[label] + [fmt(get_path(m[p], k)) for p in policies] for k, label in keys]))
