"""Answer world prompts with a policy and score the answers with the world's gold function.

The gold function is the measurement every stage is judged by and is never a
training signal. `answer` is the one place policies are asked to respond for
evaluation: greedy by default so two policies are compared on their modal answer.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean
from typing import Any, Sequence

import torch

from rlhfkit.data.chat import render_prompt
from rlhfkit.rollout import generate_batched


@torch.no_grad()
def answer(model, tok, prompts: Sequence[str], *, max_new_tokens: int = 48, temperature: float = 0.0,
           top_p: float = 1.0, batch_size: int = 64, seed: int = 0, prefix: str = "") -> list[dict[str, Any]]:
    """Generate one response per prompt; returns dicts with `response`, `terminated`, `n_tokens`.
    A `prefix` is forced as the start of every response (the model continues it); it is part of
    `response` and not of `n_tokens`."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    forced = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    outs = generate_batched(model, [render_prompt(tok, p) + forced for p in prompts], batch_size=batch_size,
                            eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, generator=gen)
    model.train(was_training)
    return [{"response": tok.decode(forced + ids, skip_special_tokens=True), "terminated": term, "n_tokens": len(ids)}
            for ids, term, _ in outs]


def score(world, prompts, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per prompt: the answer plus its gold score, criteria and flags."""
    rows = []
    for p, a in zip(prompts, answers):
        g = world.gold(p, a["response"], a["terminated"])
        rows.append({"id": p.id, "family": p.family, "prompt": p.text, **a, "gold": g.score,
                     "criteria": g.criteria, "flags": g.flags})
    return rows


def by_family(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by their `family`, families in sorted order."""
    groups = defaultdict(list)
    for r in rows:
        groups[r["family"]].append(r)
    return dict(sorted(groups.items()))


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean gold overall and per family, length, and the behaviour rates RLHF is meant to move."""
    return {
        "gold": mean(r["gold"] for r in rows),
        "gold_by_family": {f: mean(r["gold"] for r in rs) for f, rs in by_family(rows).items()},
        "response_tokens": mean(r["n_tokens"] for r in rows),
        "response_words": mean(len(r["response"].split()) for r in rows),
        "terminated_rate": mean(float(r["terminated"]) for r in rows),
        **behaviour_rates(rows),
        "n": len(rows),
    }


def behaviour_rates(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Refusal of harmful and of benign look-alike prompts, agreement with and correction of false
    premises, from rows with `family`, `flags` and `criteria` (None where a family has no rows)."""
    groups = by_family(rows)

    def rate(family: str, flag: str) -> float | None:
        rs = groups.get(family)
        return mean(float(r["flags"].get(flag, False)) for r in rs) if rs else None

    false_premise = groups.get("false_premise", [])
    return {
        "refusal_rate_harmful": rate("harmful", "refused"),
        "over_refusal_benign": rate("benign", "refused"),
        "sycophancy_rate": rate("false_premise", "agrees_with_user"),
        "correction_rate": mean(r["criteria"].get("corrects_premise", 0.0) for r in false_premise) if false_premise else None,
    }


def markdown_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Policies as columns, mean gold per family and behaviour rates as rows."""
    names = list(summaries)
    families = sorted({f for s in summaries.values() for f in s["gold_by_family"]})
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label, get):
        cells = []
        for n in names:
            v = get(summaries[n])
            cells.append("–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("**gold (mean)**", lambda s: s["gold"])
    for f in families:
        row(f"gold: {f}", lambda s, f=f: s["gold_by_family"].get(f))
    for key in ("response_words", "terminated_rate", "refusal_rate_harmful", "over_refusal_benign",
                "sycophancy_rate", "correction_rate"):
        row(key, lambda s, key=key: s.get(key))
    return "\n".join(lines) + "\n"


def log_samples(run, model, tok, world, step: int, n: int = 3) -> None:
    """Print and store greedy answers to a few held-out world prompts, with their gold score."""
    prompts = world.prompts("eval")
    prompts = prompts[:: max(1, len(prompts) // n)][:n]
    rows = score(world, prompts, answer(model, tok, [p.text for p in prompts], max_new_tokens=32))
    run.log_samples(step, [{"prompt": r["prompt"], "response": r["response"], "gold": float(r["gold"])} for r in rows])


@torch.no_grad()
def training_eval(policy, tok, world, reward_fn=None) -> dict[str, float]:
    """Periodic eval inside RL/DPO training: greedy answers to held-out prompts,
    mean gold (true quality) and, given a reward model, mean RM score (the proxy).
    Logged side by side they show over-optimisation as it happens."""
    prompts = world.prompts("eval")
    answers = answer(policy, tok, [p.text for p in prompts])
    s = summarize(score(world, prompts, answers))
    out = {"eval/gold": s["gold"], "eval/response_words": s["response_words"],
           "eval/refusal_rate_harmful": s["refusal_rate_harmful"] or 0.0, "eval/sycophancy_rate": s["sycophancy_rate"] or 0.0}
    if reward_fn is not None:
        out["eval/rm_score"] = reward_fn([p.text for p in prompts], [a["response"] for a in answers]).mean().item()
    return out
