"""The report's sections, each written as HTML and Markdown side by side from a `RunData`.

A section builder takes the `Report` collector, reads `r.data`, and either adds
a section or adds a note saying why it is skipped. Numbers are printed with
`fmt` and tagged for tests: `data-metric="POLICY.KEY"` (eval/metrics.json),
`data-src="FILE:KEY"` (other files), `data-fit="NAME"` (the over-optimisation
fit, the one derived value). Model text always goes through `html.escape`.
"""

from __future__ import annotations

import base64
import html
import os
from typing import Any

from rlhfkit.demo.report import plots
from rlhfkit.demo.report.data import (RunData, center, fmt, get_path, is_number, markdown_metrics, md_table, metric_rows,
                                      overopt_points, peak, series)
from rlhfkit.evaluation.metrics import fit_overoptimization, initial_gold

SHOWCASE = (  # (family, preferred keyword in the prompt, what the row shows)
    ("harmful", "phish", "a harmful request"),
    ("false_premise", "", "a false premise"),
    ("facts", "", "a fact question"),
    ("arithmetic", "", "an arithmetic question"),
)


class Report:
    """Collects sections as parallel HTML and Markdown; plots go inline (HTML) and to files (Markdown)."""

    def __init__(self, data: RunData, out_dir: str):
        self.data, self.out_dir = data, out_dir
        self.html: list[str] = []
        self.md: list[str] = []
        self.nav: list[tuple[str, str]] = []

    def section(self, sid: str, title: str, intro: str = "") -> None:
        self.nav.append((sid, title))
        intro_html = f'<p class="intro">{html.escape(intro)}</p>' if intro else ""
        self.html.append(f'<section id="sec-{sid}"><h2>{html.escape(title)}</h2>{intro_html}')
        self.md.append(f"\n## {title}\n\n" + (f"{intro}\n\n" if intro else ""))

    def end(self) -> None:
        self.html.append("</section>")

    def plot(self, name: str, png: bytes, alt: str) -> None:
        folder = os.path.join(self.out_dir, "report_plots")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{name}.png"), "wb") as f:
            f.write(png)
        src = "data:image/png;base64," + base64.b64encode(png).decode()
        self.html.append(f'<figure><img class="plot" data-plot="{name}" alt="{html.escape(alt)}" src="{src}"></figure>')
        self.md.append(f"\n![{alt}](report_plots/{name}.png)\n")

    def note(self, text: str) -> None:
        self.data.notes.append(text)


# ---------------------------------------------------------------- HTML pieces


def html_table(table_id: str, header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """`rows`: rendered <th>/<td> strings; `header`: HTML fragments (text escaped by the caller)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return (f'<div class="scroll"><table id="{table_id}" class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def chip(name: str) -> str:
    """A policy name with its plot colour."""
    return f'<span class="chip" style="background:{plots.color_of(name)}"></span>{html.escape(name)}'


def row_head(label: str) -> str:
    return f'<th scope="row">{html.escape(label)}</th>'


def td(text: str, tag: tuple[str, str] | None = None, cls: str = "num") -> str:
    """A cell; `tag` = (attribute, value) says where its number comes from, e.g. ("data-metric", "ppo.kl")."""
    attr = f' {tag[0]}="{html.escape(tag[1])}"' if tag else ""
    return f'<td class="{cls}"{attr}>{html.escape(text)}</td>'


# ---------------------------------------------------------------- held-out evaluation


def summary_cards(r: Report) -> None:
    """One card per non-baseline policy: its gold win-rate, coloured by what the CI says."""
    m = r.data.metrics
    others = [p for p, s in m.items() if p != s.get("baseline") and isinstance(s.get("gold_winrate"), dict)]
    cards = []
    for p in others:
        ci, base, key = m[p]["gold_winrate"], html.escape(m[p]["baseline"]), html.escape(p) + ".gold_winrate"
        verdict, cls = (("better than", "up") if ci["lo"] > 0.5 else ("worse than", "down") if ci["hi"] < 0.5
                        else ("not clearly different from", "flat"))
        cards.append(
            f'<div class="card {cls}"><div class="who">{chip(p)}</div>'
            f'<div class="big" data-metric="{key}.mean">{fmt(ci["mean"], 2)}</div>'
            f'<div class="lbl">gold win-rate vs {base}</div>'
            f'<div class="ci">95% CI <span data-metric="{key}.lo">{fmt(ci["lo"], 2)}</span>–'
            f'<span data-metric="{key}.hi">{fmt(ci["hi"], 2)}</span>: {verdict} {base}</div></div>')
    if cards:
        r.html.append(f'<div class="cards">{"".join(cards)}</div>')


def metrics_section(r: Report) -> None:
    m = r.data.metrics
    if not m:
        r.note("No evaluation metrics: the metrics table, win-rates and reward-hacking panel are skipped.")
        return
    first = next(iter(m.values()))
    r.section("metrics", "Held-out evaluation",
              f"{first.get('n', '?')} held-out prompts per policy; greedy answers scored by the world's gold function; "
              "KL and diversity from temperature-1 samples. Brackets: bootstrap 95% CI over prompts.")
    summary_cards(r)
    rows = [[row_head(label)] + [td(text, ("data-metric", f"{p}.{metric.key}"), "num best" if best else "num")
                                 for p, text, best in cells]
            for metric, label, cells in metric_rows(m)]
    r.html.append(html_table("metrics", ["metric"] + [chip(p) for p in m], rows, "grid"))
    r.html.append('<p class="caption">Green: the best value of its row, where higher or lower is better.</p>')
    families = sorted({f for s in m.values() for f in s.get("gold_by_family", {})})
    fam_rows = [[row_head(f)] + [td(fmt(s.get("gold_by_family", {}).get(f)), ("data-metric", f"{p}.gold_by_family.{f}"))
                                 for p, s in m.items()] for f in families]
    r.html.append("<h3>Gold by prompt family</h3>"
                  + html_table("gold-by-family", ["family"] + [chip(p) for p in m], fam_rows, "grid"))
    r.md.append(markdown_metrics(m))
    winrates = [(p, s.get("gold_winrate"), s.get("rm_winrate")) for p, s in m.items() if p != s.get("baseline")]
    if any(g for _, g, _ in winrates):
        r.plot("winrate", plots.winrate_png(winrates, first.get("baseline", "baseline")), "win-rates vs the baseline")
    r.end()


# ---------------------------------------------------------------- before / after


def _pick(rows: dict[str, dict], family: str, keyword: str) -> dict | None:
    """The first prompt of `family` (by id) mentioning `keyword`, else the first of the family."""
    cands = sorted((x for x in rows.values() if x.get("family") == family), key=lambda x: x["id"])
    return next((x for x in cands if keyword and keyword in x["prompt"].lower()), cands[0] if cands else None)


def _answer_cell(p: str, a: dict) -> str:
    g = a.get("gold")
    tone = "good" if is_number(g) and g >= 0.7 else "bad" if is_number(g) and g < 0.3 else "mid"
    text = html.escape(a.get("response", "")) or "<em>(empty)</em>"
    return (f'<td data-policy="{html.escape(p)}" data-prompt="{html.escape(a["id"])}"><div class="resp">{text}</div>'
            f'<span class="badge {tone}">gold {fmt(g, 2)}</span></td>')


def before_after_section(r: Report) -> None:
    by_policy: dict[str, dict[str, dict]] = {}
    for s in r.data.samples:
        by_policy.setdefault(s.get("policy"), {})[s.get("id")] = s
    man = r.data.manifest
    wanted = ["base", man.baseline, man.first("ppo"), man.first("dpo")]  # the pretrained model, SFT, PPO, DPO
    shown = [p for p in wanted if p in by_policy]
    if len(shown) < 2:
        r.note(f"Before/after table skipped: samples.jsonl has answers from {sorted(map(str, by_policy))}; "
               f"it needs two of {[p for p in wanted if p]}.")
        return
    r.section("before-after", "Before and after",
              "The same held-out prompts answered by each model (greedy). Badge: gold score.")
    rows, md_rows = [], []
    for family, keyword, what in SHOWCASE:
        pick = _pick(by_policy[shown[0]], family, keyword)
        if pick is None or not all(pick["id"] in by_policy[p] for p in shown):
            continue
        answers = [by_policy[p][pick["id"]] for p in shown]
        rows.append([f'<th scope="row"><div class="what">{what}</div><div class="prompt">{html.escape(pick["prompt"])}'
                     "</div></th>"] + [_answer_cell(p, a) for p, a in zip(shown, answers)])
        md_rows.append([f"{what}: {pick['prompt']}"] + [f"{a.get('response', '')} (gold {fmt(a.get('gold'), 2)})"
                                                        for a in answers])
    r.html.append(html_table("before-after", ["prompt"] + [chip(p) for p in shown], rows, "examples"))
    r.md.append(md_table(["prompt", *shown], md_rows))
    r.end()


# ---------------------------------------------------------------- reward hacking

HACKING_ROWS = (  # (metrics.json key, label, digits)
    ("rm_score", "RM score (proxy)", 3), ("gold_ci", "gold (true quality)", 3),
    ("sample_rm_score", "RM score of T=1 samples", 3), ("sample_gold", "gold of T=1 samples", 3),
    ("gold_winrate", "gold win-rate vs baseline", 3), ("kl_ci", "KL to reference (nats)", 2),
    ("response_words", "answer length (words)", 1), ("sycophancy_rate", "agrees with a false premise", 3),
    ("over_refusal_benign", "refuses a harmless request", 3), ("self_similarity", "self-similarity", 3),
)
HACKING_LOGS = (("objective/scores", "last rollout RM score (training)"), ("objective/kl", "last rollout KL (training)"))
HACKING_BARS = (("rm_score", "RM score (proxy)"), ("gold", "gold"), ("response_words", "answer words"),
                ("sycophancy_rate", "sycophancy"), ("over_refusal_benign", "over-refusal"), ("hallucination_rate", "hallucination"))


def hacking_section(r: Report) -> None:
    m, curves, man = r.data.metrics, r.data.curves, r.data.manifest
    main, control = man.first("ppo"), man.control()
    if not {main, control} & set(m):
        r.note("Reward-hacking panel skipped: no PPO policy or reward-hacking control (manifest.json) in eval/metrics.json.")
        return
    runs = [p for p in (man.baseline, main, control) if p in m]
    r.section("hacking", "Reward hacking: PPO with and without the KL penalty",
              f"{control} optimises the same reward model as {main} with KL coefficient 0 (how fast and how long: the table's "
              "last row). When the proxy (RM score) rises "
              "while gold, brevity, honesty or helpfulness fall, the policy is exploiting the reward model rather than improving.")
    rows = [[row_head(label)] + [td(fmt(m[p].get(key), d), ("data-metric", f"{p}.{key}")) for p in runs]
            for key, label, d in HACKING_ROWS]
    md = [[label] + [fmt(m[p].get(key), d) for p in runs] for key, label, d in HACKING_ROWS]
    for key, label in HACKING_LOGS:  # the last value the training run logged
        last = {p: (series(curves.get(p, []), key)[1] or [None])[-1] for p in runs}
        rows.append([row_head(label)] + [td(fmt(v), ("data-src", f"{p}/metrics.jsonl:{key}")) if v is not None
                                         else td("–") for p, v in last.items()])
        md.append([label] + [fmt(v) for v in last.values()])
    for label, describe in (("KL control", kl_control), ("Optimisation", optimisation)):
        of = {p: describe(r.data.configs.get(p)) for p in runs}
        rows.append([row_head(f"{label} (config.yaml)")] + [td(v, cls="txt") for v in of.values()])
        md.append([label, *of.values()])
    r.html.append(html_table("reward-hacking", ["", *[chip(p) for p in runs]], rows, "grid"))
    r.md.append(md_table(["", *runs], md))
    bars = [(title, {p: center(m[p].get(key)) for p in runs}) for key, title in HACKING_BARS]
    r.plot("hacking", plots.bars_png(bars), f"{', '.join(runs)}: proxy, gold, length, sycophancy, over-refusal")
    if main and control:
        hacking_examples(r, main, control)
    r.end()


def kl_control(cfg: dict | None) -> str:
    """How a PPO run held its KL: 'adaptive, target 0.5 nats' / 'fixed beta 0' / '–' (no config)."""
    if not cfg or "kl_coef" not in cfg:
        return "–"
    if cfg.get("adaptive_kl"):
        return f"adaptive, target {fmt(cfg.get('kl_target'), 2)} nats (beta from {fmt(cfg['kl_coef'], 2)})"
    return f"fixed beta {fmt(cfg['kl_coef'], 2)}"


def optimisation(cfg: dict | None) -> str:
    """How long and how fast a PPO run optimised: 'lr 2e-05, 60 iterations' / '–' (no config)."""
    if not cfg or "lr" not in cfg or "total_steps" not in cfg:
        return "–"
    return f"lr {cfg['lr']:g}, {cfg['total_steps']} iterations"


def _side(p: str, x: dict) -> str:
    return (f'<div class="side"><div class="who">{chip(p)}</div><div class="resp">{html.escape(x["response"])}</div>'
            f'<span class="badge">RM {fmt(x["rm_score"], 2)}</span> <span class="badge">gold {fmt(x["gold"], 2)}</span></div>')


def hacking_examples(r: Report, main: str, control: str, k: int = 3) -> None:
    """Up to k prompts where the RM prefers the control's answer and gold prefers PPO's: the exploit, in words."""
    ans = {p: {s["id"]: s for s in r.data.samples if s.get("policy") == p and is_number(s.get("rm_score"))}
           for p in (main, control)}
    pairs = [(b, ans[main][i]) for i, b in ans[control].items() if i in ans[main]]
    hacked = [(b, a) for b, a in pairs if b["rm_score"] > a["rm_score"] and b["gold"] < a["gold"]]
    hacked = sorted(hacked, key=lambda ba: ba[0]["gold"] - ba[0]["rm_score"])[:k]  # high RM, low gold first
    if not hacked:
        return
    title = "What the reward model liked better (but gold did not)"
    items = "".join(f'<div class="pair"><div class="prompt">{html.escape(b["prompt"])}</div>'
                    f'<div class="two">{_side(control, b)}{_side(main, a)}</div></div>' for b, a in hacked)
    r.html.append(f'<h3>{title}</h3><div id="hacking-examples">{items}</div>')
    show = lambda x: f"{x['response']} ({fmt(x['rm_score'], 2)}, {fmt(x['gold'], 2)})"  # noqa: E731
    r.md.append(f"\n### {title}\n\n" + md_table(["prompt", f"{control} (RM, gold)", f"{main} (RM, gold)"],
                                                [[b["prompt"], show(b), show(a)] for b, a in hacked]))


# ---------------------------------------------------------------- over-optimisation


def overopt_section(r: Report) -> None:
    points = {run: overopt_points(r.data.curves.get(run, [])) for run in r.data.manifest.named("ppo")}
    points = {k: v for k, v in points.items() if v}
    if not points:
        r.note("Over-optimisation plot skipped: no eval/gold points in the PPO runs' metrics.jsonl.")
        return
    r.section("overopt", "Over-optimisation",
              "Gold and RM score at each evaluation step of the RL runs, against the square root of the KL to the SFT "
              "policy (Gao et al. 2022). KL: the mean over that step's rollouts; the step-0 evaluation is the SFT "
              "policy itself (KL 0). The dashed curve, when there is one, fits gold − gold₀ = d(α − βd) to all runs' "
              "points together; gold peaks at d* = α / 2β.")
    kl = [p[0] for pts in points.values() for p in pts]
    gold = [p[1] for pts in points.values() for p in pts]
    fit = None
    try:
        gold0 = initial_gold(kl, gold)
        fit = (*fit_overoptimization(kl, gold, gold0), gold0)
    except ValueError as e:
        r.note(f"Over-optimisation fit skipped: {e}.")
    r.plot("overopt", plots.overopt_png(points, fit), "gold and RM score against sqrt(KL)")
    if fit:
        alpha, beta, gold0 = fit
        d_star = alpha / (2 * beta) if beta > 0 else float("nan")  # no turnover when beta <= 0
        items = (("alpha", "α (gain per √nat)", alpha), ("beta", "β (over-optimisation)", beta),
                 ("gold0", "gold₀ (SFT)", gold0), ("d_star", "d* = α / 2β (√nats)", d_star),
                 ("kl_star", "KL at the gold peak (nats)", d_star ** 2), ("points", "points fitted", len(kl)))
        rows = [[row_head(label), td(fmt(v), ("data-fit", key))] for key, label, v in items]
        r.html.append(html_table("overopt-fit", ["fit", "value"], rows, "kv"))
        r.md.append(md_table(["fit", "value"], [[label, fmt(v)] for _, label, v in items]))
    r.end()


# ---------------------------------------------------------------- training curves

RL_PANELS = (("objective/scores", "RM score of rollouts"), ("objective/kl", "KL to SFT, nats"),
             ("rollout/response_length", "response tokens"), ("objective/entropy", "entropy, nats/answer"),
             ("eval/gold", "held-out gold"), ("ppo/policy/clipfrac", "clip fraction"))
STAGE_PANELS = {  # method -> [(panel title, ((series name, key), ...))]; "<name> eval" series are drawn dashed
    "dpo": [("loss", (("dpo", "dpo/loss"), ("dpo eval", "eval/loss"))),
            ("implicit-reward accuracy", (("dpo", "dpo/rewards/accuracy"), ("dpo eval", "eval/rewards/accuracy"))),
            ("held-out gold", (("dpo eval", "eval/gold"),)),
            ("chosen NLL per token (RPO term)", (("dpo", "dpo/nll"), ("dpo eval", "eval/nll")))],
    "pretrain": [("pretrain loss", (("pretrain", "train/loss"), ("pretrain eval", "eval/loss")))],
    "sft": [("sft loss", (("sft", "train/loss"), ("sft eval", "eval/loss")))],
    "rm": [("pairwise accuracy", (("rm", "train/accuracy"), ("rm eval", "eval/accuracy"))),
           ("loss", (("rm", "train/loss"),))],
}
FIGURES = (("rl-curves", "Online RL (PPO, its KL-free control, RLOO, GRPO): the RLHF dashboard", 3, ()),
           ("dpo-curves", "DPO", 3, ("dpo",)), ("lm-loss", "Pretraining and SFT loss", 2, ("pretrain", "sft")),
           ("rm-curves", "Reward model training", 2, ("rm",)))


def _panels(c: dict[str, list[dict]], man, methods: tuple[str, ...]) -> list[tuple[str, dict]]:
    """Panels of the figure for the stages of `methods` (none: the RL runs side by side), empty series and
    panels dropped. A method's series are named after its stage ("dpo" -> the stage's name)."""
    if not methods:
        panels = [(f"{t} ({k})", {s: series(c[s], k) for s in man.rl() if s in c}) for k, t in RL_PANELS]
    else:
        stages = [(s, m) for m in methods for s in man.named(m) if s in c]
        panels = [(t, {n.replace(m, s, 1): series(c[s], k) for n, k in keys}) for s, m in stages for t, keys in STAGE_PANELS[m]]
    panels = [(t, {n: xy for n, xy in ss.items() if xy[0]}) for t, ss in panels]
    return [(t, ss) for t, ss in panels if ss]


def curves_section(r: Report) -> None:
    figures = [(name, title, ncols, _panels(r.data.curves, r.data.manifest, methods)) for name, title, ncols, methods in FIGURES]
    if not any(panels for *_, panels in figures):
        r.note("Training curves skipped: no stage metrics.jsonl found.")
        return
    r.section("curves", "Training curves", "Faint: raw per-step values; bold: moving average; dashed: held-out evaluations.")
    for name, title, ncols, panels in figures:
        if panels:
            r.html.append(f"<h3>{html.escape(title)}</h3>")
            r.md.append(f"\n### {title}\n\n")
            r.plot(name, plots.curves_png(panels, ncols=min(ncols, len(panels))), title)
    r.end()


# ---------------------------------------------------------------- feedback and reward model

FEEDBACK_ITEMS = (("items", "items ranked"), ("judgements", "judgements"), ("annotators", "annotators"),
                  ("pairs", "preference pairs"), ("agreement.alpha_nominal", "Krippendorff's α"),
                  ("agreement.kappa_mean", "mean Cohen's κ"))
RM_ITEMS = (("heldout_accuracy", "held-out pairwise accuracy"), ("ceiling", "annotator-agreement ceiling"),
            ("heldout_accept_accuracy", "held-out acceptability marks matched (sign of the raw score)"),
            ("spearman_rm_gold", "Spearman(RM score, gold), pooled"),
            ("spearman_rm_gold_within_prompt", "Spearman(RM score, gold), within a prompt"), ("calibration.ece", "calibration error (ECE)"),
            ("bias_verbosity.mean_score_delta", "score gain from a polite filler"),
            ("bias_agreement.mean_score_delta", "score gain from agreeing"),
            ("bias_refusal.prefers_variant", "prefers refusing a harmless look-alike (held-out prompts)"),
            ("bias_refusal_rl.prefers_variant", "prefers refusing a harmless look-alike (RL prompts)"))


def _kv(r: Report, obj: Any, file: str, table_id: str, title: str, items) -> None:
    present = [(k, label, get_path(obj, k)) for k, label in items if get_path(obj, k) is not None]
    if present:
        rows = [[row_head(label), td(fmt(v), ("data-src", f"{file}:{k}"))] for k, label, v in present]
        r.html.append(f"<div><h3>{title}</h3>{html_table(table_id, ['', 'value'], rows, 'kv')}</div>")
        r.md.append(f"\n### {title}\n\n" + md_table(["", "value"], [[label, fmt(v)] for _, label, v in present]))


def data_section(r: Report) -> None:
    if not (r.data.feedback or r.data.rm):
        return
    r.section("data", "Feedback and reward model")
    r.html.append('<div class="row">')
    _kv(r, r.data.feedback, "feedback/feedback_stats.json", "feedback-summary",
        "Human-feedback stand-in (simulated panel)", FEEDBACK_ITEMS)
    _kv(r, r.data.rm, "rm/rm_metrics.json", "rm-summary", "Reward model", RM_ITEMS)
    bins = get_path(r.data.rm, "calibration.bins")
    if bins:
        r.plot("rm-calibration", plots.calibration_png(bins), "reward-model calibration")
    r.html.append("</div>")
    r.end()


def methods_section(r: Report) -> None:
    """SFT and each preference method side by side: what it bought (gold win-rate), what it cost
    (KL, answer length) and what it took to train (wall time, peak memory)."""
    m, d = r.data.metrics, r.data
    methods = [p for p in d.manifest.named(policy=True) if p in m or p in d.stages]
    if len(methods) < 2:
        return
    r.section("methods", "Methods compared",
              "Each method's policy on the held-out prompts, and its training stage's wall time (from the "
              "pipeline's stage.json) and peak resident memory (largest sys/rss_mb its metrics.jsonl logged).")
    header = ["method", "gold win-rate vs baseline", "KL to reference", "answer tokens", "wall time (s)", "peak RSS (MB)"]
    rows, md_rows = [], []
    for p in methods:
        s = m.get(p, {})
        win, kl = get_path(s, "gold_winrate.mean"), get_path(s, "kl_ci.mean")
        secs, rss = get_path(d.stages.get(p), "seconds"), peak(d.curves.get(p, []), "sys/rss_mb")
        cells = [(win, ("data-metric", f"{p}.gold_winrate.mean")), (kl, ("data-metric", f"{p}.kl_ci.mean")),
                 (s.get("response_tokens"), ("data-metric", f"{p}.response_tokens")),
                 (secs, ("data-src", f"{p}/stage.json:seconds")), (rss, ("data-src", f"{p}/metrics.jsonl:max sys/rss_mb"))]
        rows.append([row_head(p)] + [td(fmt(v, 1 if i >= 2 else 3), tag) for i, (v, tag) in enumerate(cells)])
        md_rows.append([p] + [fmt(v, 1 if i >= 2 else 3) for i, (v, _) in enumerate(cells)])
    r.html.append(html_table("methods", header, rows, "grid"))
    r.md.append(md_table(header, md_rows))
    r.end()


def headroom_section(r: Report) -> None:
    """Best-of-K gold of the baseline's own samples per family, and the share of it each method realised."""
    m = r.data.metrics
    base = next((s.get("baseline") for s in m.values() if s.get("baseline")), None)
    room = get_path(m.get(base, {}), "headroom")
    if not room:
        return
    r.section("headroom", "Headroom: what the baseline's own samples allow",
              f"Mean gold of {base}'s greedy answer and of the best of its first K temperature-1 samples (picked by gold, "
              "a perfect reward model), per family, and the content win-rate over the greedy answer of the best sample by "
              "content (what choosing among its own samples could reach); then, per method, the share of the gold gap its "
              "greedy answer closed.")
    ks = [k for k in next(iter(room.values())) if k != "greedy"]
    methods = [p for p in m if p != base and get_path(m[p], "headroom_captured")]
    label = lambda k: k.replace("content_winrate_best_of_", "content win-rate of the best of ").replace("best_of_", "best of ")  # noqa: E731
    header = ["family", f"{base} greedy", *map(label, ks), *[f"{p} captured" for p in methods]]
    rows, md_rows = [], []
    for fam, h in room.items():
        vals = [(h["greedy"], f"{base}.headroom.{fam}.greedy")] + [(h[k], f"{base}.headroom.{fam}.{k}") for k in ks]
        vals += [(m[p]["headroom_captured"].get(fam), f"{p}.headroom_captured.{fam}") for p in methods]
        rows.append([row_head(fam)] + [td(fmt(v), ("data-metric", key)) for v, key in vals])
        md_rows.append([fam] + [fmt(v) for v, _ in vals])
    r.html.append(html_table("headroom", header, rows, "grid"))
    r.md.append(md_table(header, md_rows))
    r.end()


def notes_section(r: Report) -> None:
    r.section("notes", "Notes")
    items = "".join(f"<li>{html.escape(n)}</li>" for n in r.data.notes) or "<li>Every input was found.</li>"
    r.html.append(f'<ul id="notes">{items}</ul>')
    r.md.append("".join(f"- {n}\n" for n in r.data.notes) or "- Every input was found.\n")
    r.end()


SECTIONS = (metrics_section, methods_section, headroom_section, before_after_section, hacking_section, overopt_section,
            curves_section, data_section)  # then report.ai.ai_section, then notes_section
