"""The demo's gold evaluation: a set of policies on the world's held-out prompts, against a baseline.

`rlhfkit pipeline` runs it as its `eval` stage (`rlhfkit world eval` runs it alone);
`rlhfkit eval` is the same measurement on any prompts with any evaluator.

For every policy (the base model, SFT, PPO, DPO, ...):
  1. greedy answers to the held-out eval prompts, scored by gold (and by the
     reward model when one is given): mean gold, per family, behaviour rates;
  2. win-rate against the baseline policy on the same prompts, by gold and by
     RM score (per prompt: win 1, tie 0.5, loss 0), with a bootstrap 95% CI
     over prompts;
  3. `num_samples` temperature-1 samples per prompt: KL to the reference
     (k1, Σ over response tokens, EOS included, as PPO's `objective/kl`),
     distinct-1/2 and the mean pairwise word-set Jaccard among one prompt's
     samples (mode collapse shows as similarity near 1);
  4. the alignment tax: perplexity on held-out pretraining-style text and the
     fraction of the world's fact questions answered correctly (greedy).

Writes to `out_dir`: `metrics.json` (one object per policy), `metrics.md` (the
table with CIs) and `samples.jsonl` (every greedy answer with its gold breakdown
and RM score).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

import torch

from rlhfkit.demo.gold import behaviour_rates, score, summarize
from rlhfkit.demo.report.data import markdown_metrics
from rlhfkit.evaluation.metrics import bootstrap_ci, distinct_n, outcomes, self_similarity, words
from rlhfkit.evaluation.policy import (check_policies, corpus_perplexity, finite, load_reward_fn, policy_name,
                                       same_vocab, sample_with_kl, win_rates)
from rlhfkit.files import write_atomic
from rlhfkit.models.load import load_causal_lm
from rlhfkit.rollout import answer
from rlhfkit.tracking import Run, seed_everything
from rlhfkit.world import WorldConfig, build_world


@dataclass
class Config:
    out_dir: str = "runs/eval"  # where metrics.json / metrics.md / samples.jsonl go
    policies: list[str] = field(default_factory=list)  # local HF model dirs to evaluate
    names: list[str] = field(default_factory=list)  # display names, one per policy (default: dir names)
    baseline: str = ""  # name of the policy win-rates are measured against ("": sft if present, else the first)
    reward_model: str | None = None  # RM dir: RM score of the greedy answers and win-rate by RM
    reference: str | None = None  # model the KL is measured to (default: the baseline's path)
    world: WorldConfig = field(default_factory=WorldConfig)  # the world whose eval prompts are used
    max_new_tokens: int = 48  # answer length limit
    temperature: float = 0.0  # for the scored answers; 0: greedy
    num_samples: int = 4  # temperature-1 samples per prompt, for KL and diversity (0: skip)
    bootstrap: int = 1000  # bootstrap resamples for the 95% CIs
    gold_tie_tol: float = 0.0  # gold differences up to this count as ties (0: exact)
    headroom_samples: int = 16  # baseline T=1 samples per prompt for the best-of-K headroom (0: skip)
    ppl_seq_len: int = 128  # tokens per packed row for the held-out corpus perplexity
    batch_size: int = 64  # prompts per generation batch
    seed: int = 0  # sampling and bootstrap seed
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0: torch default)

    def resolve(self) -> None:
        check_policies(self)


def main(cfg: Config) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    run = Run(cfg.out_dir, cfg, cfg.seed, "eval")
    world = build_world(cfg.world)
    prompts = world.prompts("eval")
    names = cfg.names or [policy_name(p) for p in cfg.policies]
    baseline = cfg.baseline or ("sft" if "sft" in names else names[0])
    ref_path = cfg.reference or cfg.policies[names.index(baseline)]
    ref, ref_tok = load_causal_lm(ref_path, device=cfg.device)
    reward_fn = load_reward_fn(cfg.reward_model, cfg.device)

    summaries, rows_of = {}, {}
    for name, path in zip(names, cfg.policies):
        model, tok = load_causal_lm(path, device=cfg.device)
        kl_ref = ref if same_vocab(tok, ref_tok) else None
        rows, summary = evaluate_policy(cfg, world, prompts, model, tok, kl_ref, reward_fn)
        summaries[name] = {"path": path, "baseline": baseline, "reference": ref_path, **summary}
        rows_of[name] = rows
        print(f"[eval] {name}: gold {summary['gold']:.3f}  kl {_fmt(summary['kl'])}  "
              f"ppl {summary['perplexity']:.2f}  fact recall {summary['fact_recall']:.3f}", flush=True)
        del model
    if cfg.headroom_samples:
        model, tok = load_causal_lm(cfg.policies[names.index(baseline)], device=cfg.device)
        summaries[baseline]["headroom"] = headroom(cfg, world, prompts, model, tok, rows_of[baseline])
        del model
    for name in names:
        summaries[name].update(win_rates(rows_of[name], rows_of[baseline], cfg.bootstrap, cfg.seed, cfg.gold_tie_tol))
        summaries[name].update(content_wins(rows_of[name], rows_of[baseline], cfg.bootstrap, cfg.seed))
        if "headroom" in summaries[baseline]:
            summaries[name]["headroom_captured"] = captured(summaries[baseline]["headroom"], rows_of[name])

    write_atomic(os.path.join(cfg.out_dir, "metrics.json"), json.dumps(summaries, indent=2))
    write_atomic(os.path.join(cfg.out_dir, "samples.jsonl"),
                 "".join(json.dumps({"policy": n, **r}) + "\n" for n in names for r in rows_of[n]))
    table = markdown_metrics(summaries)
    write_atomic(os.path.join(cfg.out_dir, "metrics.md"),
                 f"# Evaluation on {len(prompts)} held-out world prompts (baseline: {baseline})\n\n{table}")
    print(table, flush=True)
    run.close()
    return summaries


def evaluate_policy(cfg: Config, world, prompts, model, tok, ref, reward_fn) -> tuple[list[dict], dict[str, Any]]:
    """Per-prompt rows of the greedy answers and the policy's summary (everything but win-rates).

    `ref` None (the reference has another vocabulary) leaves `kl` None.
    """
    texts = [p.text for p in prompts]
    answers = answer(model, tok, texts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                     batch_size=cfg.batch_size, seed=cfg.seed)
    rows = score(world, prompts, answers)
    summary = summarize(rows)
    summary["gold_ci"] = bootstrap_ci([r["gold"] for r in rows], cfg.bootstrap, cfg.seed)
    summary["rm_score"] = summary["rm_score_ci"] = None
    if reward_fn is not None:
        rm = reward_fn(texts, [a["response"] for a in answers]).tolist()
        for r, s in zip(rows, rm):
            r["rm_score"] = s
        summary["rm_score_ci"] = bootstrap_ci(rm, cfg.bootstrap, cfg.seed)
        summary["rm_score"] = summary["rm_score_ci"]["mean"]

    summary.update(sample_metrics(cfg, world, prompts, model, tok, ref, reward_fn))
    summary["perplexity"] = corpus_perplexity(model, tok, world.eval_corpus(), cfg.ppl_seq_len, cfg.batch_size)
    summary["fact_recall"] = fact_recall(world, model, tok, cfg.max_new_tokens, cfg.batch_size)
    return rows, summary


# Behaviour rates over the T=1 samples: num_samples x the greedy probes per family, so a shift in what the
# policy samples shows before (and with less noise than) a flip of its greedy answer.
SAMPLE_RATES = ("sample_refusal_rate_harmful", "sample_over_refusal_benign", "sample_sycophancy_rate",
                "sample_correction_rate", "sample_hallucination_rate")


def headroom(cfg: Config, world, prompts, model, tok, greedy_rows: list[dict]) -> dict[str, dict[str, float]]:
    """What re-weighting the baseline's own samples could reach: per family (and `all`), the mean gold of its
    greedy answer and of the best of its first K temperature-1 samples, K = 4 and `headroom_samples` (as
    judged by gold, i.e. a perfect reward model), and the content win-rate over the greedy answer of the best
    sample by content. RLHF can only move probability among answers the policy already samples; this is how
    much better those answers are, and the content win-rate a method could reach by choosing among them."""
    K = cfg.headroom_samples
    answers = answer(model, tok, [p.text for p in prompts for _ in range(K)], max_new_tokens=cfg.max_new_tokens,
                     temperature=1.0, batch_size=cfg.batch_size, seed=cfg.seed + 1)
    judged = [world.gold(p, a["response"], a["terminated"]) for p, a in zip([p for p in prompts for _ in range(K)], answers)]
    return headroom_table([p.family for p in prompts], greedy_rows, [j.score for j in judged], [j.content for j in judged], K)


def headroom_table(families: list[str], greedy_rows: list[dict], gold: list[float], content: list[float],
                   K: int) -> dict[str, dict[str, float]]:
    """`headroom`'s table from the greedy rows (`gold`, `content`) and the K samples' scores per prompt, flat and
    in prompt order: per family and `all`, greedy gold, best-of-k gold (k = 4 and K), and
    `content_winrate_best_of_K` (the best of K samples by content against the greedy answer: win 1, tie 1/2)."""
    n = len(families)
    per_gold = [gold[i * K : (i + 1) * K] for i in range(n)]
    wins = outcomes([max(content[i * K : (i + 1) * K]) for i in range(n)], [r["content"] for r in greedy_rows])
    groups = {"all": range(n)} | {f: [i for i, x in enumerate(families) if x == f] for f in sorted(set(families))}
    return {f: {"greedy": mean(greedy_rows[i]["gold"] for i in idx),
                **{f"best_of_{k}": mean(max(per_gold[i][:k]) for i in idx) for k in sorted({min(4, K), K})},
                f"content_winrate_best_of_{K}": float(mean(wins[i] for i in idx))}
            for f, idx in groups.items()}


def captured(room: dict[str, dict[str, float]], rows: list[dict]) -> dict[str, float | None]:
    """Per family: (policy gold - baseline greedy gold) / (best-of-K gold - baseline greedy gold), the share of
    the best-of-K headroom a policy realised with its greedy answer (None where there is no headroom)."""
    out = {}
    for f, h in room.items():
        best = h[max(h, key=lambda k: int(k.split("_")[-1]) if k.startswith("best_of_") else -1)]
        gold = mean(r["gold"] for r in rows if f == "all" or r["family"] == f)
        out[f] = (gold - h["greedy"]) / (best - h["greedy"]) if best - h["greedy"] > 1e-9 else None
    return out


def content_wins(rows: list[dict], baseline_rows: list[dict], n_boot: int, seed: int) -> dict[str, Any]:
    """Win-rate by gold's content score (`content_winrate`: answers that differ only in form, e.g. a
    sign-off sentence, tie) and the share of gold wins whose content is better too (`content_win_share`):
    how much of a method's gold win-rate is about what it says rather than how."""
    out = win_rates(rows, baseline_rows, n_boot, seed, key="content")
    wins = [(r, b) for r, b in zip(rows, baseline_rows) if r["gold"] > b["gold"]]
    share = sum(r["content"] > b["content"] for r, b in wins) / len(wins) if wins else None
    return {"content_winrate": out.get("content_winrate"), "content_win_share": share}


def sample_metrics(cfg: Config, world, prompts, model, tok, ref, reward_fn) -> dict[str, Any]:
    """From `num_samples` temperature-1 samples per prompt: KL (with CI over prompts), length,
    diversity, and the mean gold and RM score of the samples (what RL optimises is the expected
    reward of sampled answers; a hack can show there before it reaches the greedy answer)."""
    keys = ("kl", "kl_ci", "sample_tokens", "sample_words", "distinct_1", "distinct_2", "self_similarity",
            "sample_gold", "sample_rm_score", *SAMPLE_RATES)
    if cfg.num_samples == 0:
        return dict.fromkeys(keys)
    texts = [p.text for p in prompts]
    s = sample_with_kl(model, ref, tok, texts, num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens,
                       batch_size=cfg.batch_size, seed=cfg.seed)
    flat = [t for g in s["responses"] for t in g]
    kl_ci = bootstrap_ci([mean(k) for k in s["kl"]], cfg.bootstrap, cfg.seed) if ref is not None else None
    judged = [(p, world.gold(p, t, done)) for p, g, d in zip(prompts, s["responses"], s["terminated"]) for t, done in zip(g, d)]
    gold = [j.score for _, j in judged]
    rates = behaviour_rates([{"family": p.family, "criteria": j.criteria, "flags": j.flags} for p, j in judged])
    sample_prompts = [t for t in texts for _ in range(cfg.num_samples)]
    rm = mean(reward_fn(sample_prompts, flat).tolist()) if reward_fn is not None else None
    return {
        "sample_gold": mean(gold),
        "sample_rm_score": rm,
        "kl": kl_ci["mean"] if kl_ci else None,
        "kl_ci": kl_ci,
        "sample_tokens": mean(n for g in s["n_tokens"] for n in g),
        "sample_words": mean(len(words(t)) for t in flat),
        "distinct_1": distinct_n(flat, 1),
        "distinct_2": distinct_n(flat, 2),
        "self_similarity": finite(self_similarity(s["responses"])),  # NaN with one sample per prompt
        **{key: rates[key.removeprefix("sample_")] for key in SAMPLE_RATES},
    }


def fact_recall(world, model, tok, max_new_tokens: int, batch_size: int) -> float:
    """Fraction of the world's fact questions (one per country and attribute) answered
    correctly by the greedy answer (gold's `correct` flag: right value, no hedge)."""
    questions = world.fact_questions()
    answers = answer(model, tok, [q.text for q in questions], max_new_tokens=max_new_tokens, batch_size=batch_size)
    return mean(float(world.gold(q, a["response"], a["terminated"]).flags["correct"]) for q, a in zip(questions, answers))


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"
