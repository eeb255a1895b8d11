"""`rlhfkit eval`: a set of policies on held-out prompts, each against a baseline.

For every policy (e.g. the SFT model and the RLHF policies trained from it):
  1. greedy answers to `prompts`, scored by the reward model (`reward_model`) and by
     the evaluator callable (`evaluator`, rlhfkit.evaluation.hooks), when given: the
     mean of every key the evaluator returns, and the answer length;
  2. win-rates against the baseline on the same prompts (per prompt: win 1, tie 0.5,
     loss 0) by RM score (`rm_winrate`) and by the evaluator's `score_key`
     (`<score_key>_winrate`), with bootstrap 95% CIs over prompts;
  3. `num_samples` temperature-1 samples per prompt: KL to the reference (k1, summed
     over response tokens, as PPO's `objective/kl`), distinct-1/2 and the mean pairwise
     word-set Jaccard of one prompt's samples (mode collapse shows as similarity near 1);
  4. with `eval_corpus`, per-token perplexity on that held-out text (the alignment tax
     on language modelling);
  5. with `judge` (a local causal LM, rlhfkit.feedback.judge), the AI judge's win-rate
     against the baseline: per prompt the judge's swap-debiased P(policy's answer better)
     under the constitution's `overall` question, a win above 1/2 (identical answers tie),
     with its bootstrap CI (`judge_winrate`) and the share of position-consistent verdicts.

Writes to `out_dir`: `metrics.json` (one object per policy), `metrics.md` and
`samples.jsonl` (every greedy answer with its scores). Nothing is assumed about the
prompts: with neither a reward model nor an evaluator, it reports length, KL and
diversity only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

import torch

from rlhfkit.data.loaders import prompt_list
from rlhfkit.data.records import Prompt, prompt_json
from rlhfkit.data.packing import read_corpus
from rlhfkit.evaluation.hooks import averages, make_evaluator
from rlhfkit.evaluation.metrics import bootstrap_ci, distinct_n, is_refusal, self_similarity, words
from rlhfkit.evaluation.policy import (check_policies, corpus_perplexity, finite, load_reward_fn, policy_name,
                                       same_vocab, sample_with_kl, win_rates)
from rlhfkit.files import write_atomic
from rlhfkit.models.load import load_causal_lm
from rlhfkit.rollout import answer
from rlhfkit.tracking import Run, seed_everything


@dataclass
class Config:
    out_dir: str = "runs/eval"  # where metrics.json / metrics.md / samples.jsonl go
    policies: list[str] = field(default_factory=list)  # local HF model dirs to evaluate
    names: list[str] = field(default_factory=list)  # display names, one per policy (default: dir names)
    baseline: str = ""  # name of the policy win-rates are measured against ("": the first)
    prompts: str | None = None  # held-out prompts file/dir (`prompt` or `messages`); required
    reward_model: str | None = None  # RM dir: RM score of the answers and win-rate by RM
    evaluator: str | None = None  # package.module:function scoring answers (rlhfkit.evaluation.hooks)
    evaluator_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the evaluator
    score_key: str = "score"  # the evaluator key win-rates are measured on
    tie_tol: float = 0.0  # score differences up to this count as ties
    judge: str | None = None  # AI judge model dir: win-rate against the baseline by the judge (judge_winrate)
    judge_constitution: str | None = None  # constitution YAML whose `overall` question the judge answers (None: the packaged default)
    reference: str | None = None  # model the KL is measured to (default: the baseline's path)
    eval_corpus: str | None = None  # held-out text for perplexity (None: skipped)
    max_new_tokens: int = 48  # answer length limit
    num_samples: int = 4  # temperature-1 samples per prompt, for KL and diversity (0: skip)
    bootstrap: int = 1000  # bootstrap resamples for the 95% CIs
    ppl_seq_len: int = 128  # tokens per packed row for the perplexity
    batch_size: int = 64  # prompts per generation batch
    seed: int = 0  # sampling and bootstrap seed
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0: torch default)

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if not self.prompts:
            raise ConfigError("'prompts': give the held-out prompts, e.g. prompts=eval_prompts.jsonl")
        check_policies(self)


def main(cfg: Config) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    run = Run(cfg.out_dir, cfg, cfg.seed, "eval")
    prompts = prompt_list(cfg.prompts)
    corpus = read_corpus(cfg.eval_corpus) if cfg.eval_corpus else None
    evaluator = make_evaluator(cfg.evaluator, cfg.evaluator_args)
    names = cfg.names or [policy_name(p) for p in cfg.policies]
    baseline = cfg.baseline or names[0]
    ref_path = cfg.reference or cfg.policies[names.index(baseline)]
    ref, ref_tok = load_causal_lm(ref_path, device=cfg.device)
    reward_fn = load_reward_fn(cfg.reward_model, cfg.device)

    summaries, rows_of = {}, {}
    for name, path in zip(names, cfg.policies):
        model, tok = load_causal_lm(path, device=cfg.device)
        rows, summary = evaluate_policy(cfg, prompts, model, tok, ref if same_vocab(tok, ref_tok) else None,
                                        reward_fn, evaluator, corpus)
        summaries[name], rows_of[name] = {"path": path, "baseline": baseline, "reference": ref_path, **summary}, rows
        print(f"[eval] {name}: " + "  ".join(f"{k} {v:.3f}" for k, v in summary.items() if isinstance(v, float)), flush=True)
        del model
    for name in names:
        summaries[name].update(win_rates(rows_of[name], rows_of[baseline], cfg.bootstrap, cfg.seed, cfg.tie_tol, cfg.score_key))
    if cfg.judge:
        judge = load_judge(cfg.judge, cfg.judge_constitution, cfg.device)
        for name in names:
            summaries[name].update(judge_win_rate(judge, prompts, rows_of[name], rows_of[baseline], cfg.bootstrap, cfg.seed))

    write_atomic(os.path.join(cfg.out_dir, "metrics.json"), json.dumps(summaries, indent=2))
    write_atomic(os.path.join(cfg.out_dir, "samples.jsonl"),
                 "".join(json.dumps({"policy": n, **r}) + "\n" for n in names for r in rows_of[n]))
    table = markdown(summaries)
    write_atomic(os.path.join(cfg.out_dir, "metrics.md"),
                 f"# Evaluation on {len(prompts)} held-out prompts (baseline: {baseline})\n\n{table}")
    print(table, flush=True)
    run.close()
    return summaries


def evaluate_policy(cfg: Config, prompts: list[Prompt], model, tok, ref, reward_fn, evaluator, corpus):
    """Per-prompt rows of the greedy answers and the policy's summary (everything but win-rates)."""
    answers = answer(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed)
    responses = [a["response"] for a in answers]
    rows = [{"id": i, "prompt": prompt_json(p), **a} for i, (p, a) in enumerate(zip(prompts, answers))]
    summary: dict[str, Any] = {"n": len(rows), "response_tokens": mean(a["n_tokens"] for a in answers),
                               "response_words": mean(len(words(r)) for r in responses),
                               "terminated_rate": mean(float(a["terminated"]) for a in answers),
                               "refusal_phrase_rate": mean(float(is_refusal(r)) for r in responses)}
    if evaluator is not None:
        judged = evaluator(prompts, responses, [a["terminated"] for a in answers])
        for row, j in zip(rows, judged):
            row.update(j)
        summary.update(averages(judged))
    if reward_fn is not None:
        rm = reward_fn(prompts, responses).tolist()
        for row, s in zip(rows, rm):
            row["rm_score"] = s
        summary["rm_score_ci"] = bootstrap_ci(rm, cfg.bootstrap, cfg.seed)
        summary["rm_score"] = summary["rm_score_ci"]["mean"]
    if cfg.num_samples:
        s = sample_with_kl(model, ref, tok, prompts, num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens,
                           batch_size=cfg.batch_size, seed=cfg.seed)
        flat = [t for g in s["responses"] for t in g]
        summary["kl_ci"] = bootstrap_ci([mean(k) for k in s["kl"]], cfg.bootstrap, cfg.seed) if ref is not None else None
        summary["kl"] = summary["kl_ci"]["mean"] if summary["kl_ci"] else None
        summary.update({"sample_words": mean(len(words(t)) for t in flat), "distinct_1": distinct_n(flat, 1),
                        "distinct_2": distinct_n(flat, 2), "self_similarity": finite(self_similarity(s["responses"]))})
    if corpus:
        summary["perplexity"] = corpus_perplexity(model, tok, corpus, cfg.ppl_seq_len, cfg.batch_size)
    return rows, summary


def load_judge(path: str, constitution: str | None, device: str):
    from rlhfkit.feedback.constitution import load_constitution
    from rlhfkit.feedback.judge import Judge

    model, tok = load_causal_lm(path, device=device)
    model.requires_grad_(False)
    return Judge(model, tok, load_constitution(constitution))


def judge_win_rate(judge, prompts: list[Prompt], rows: list[dict], baseline_rows: list[dict], n_boot: int, seed: int) -> dict:
    """`judge_winrate` (bootstrap CI over prompts) of `rows` against `baseline_rows` and `judge_consistency`
    (share of the pairs with different answers that both orders agree on); each row gets its `judge_p` (P(its answer beats the baseline's))."""
    answers, base = [r["response"] for r in rows], [r["response"] for r in baseline_rows]
    out = judge.compare(prompts, answers, base, [judge.c.overall] * len(prompts))
    p = out["p"].tolist()
    same = [a == b for a, b in zip(answers, base)]
    for row, pi in zip(rows, p):
        row["judge_p"] = pi
    wins = [0.5 if s else 1.0 if pi > 0.5 else 0.0 if pi < 0.5 else 0.5 for s, pi in zip(same, p)]
    differ = [float(c) for c, s in zip(out["consistent"].tolist(), same) if not s]  # identical answers have no order to agree on
    return {"judge_winrate": bootstrap_ci(wins, n_boot, seed), "judge_consistency": mean(differ) if differ else None}


def markdown(summaries: dict[str, dict]) -> str:
    """Metrics as rows, policies as columns; a CI as `mean [lo, hi]`."""
    names = list(summaries)
    keys = [k for k in dict.fromkeys(k for s in summaries.values() for k in s)
            if k not in ("path", "baseline", "reference") and not k.endswith("_ci")]

    def cell(v) -> str:
        if isinstance(v, dict) and "mean" in v:
            return f"{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"
        return f"{v:.3f}" if isinstance(v, float) else "–" if v is None else str(v)

    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {k} | " + " | ".join(cell(summaries[n].get(k)) for n in names) + " |" for k in keys]
    return "\n".join(lines) + "\n"
