"""Measuring policies against each other: the mechanics every evaluation shares.

Win-rates with bootstrap CIs (per prompt: win 1, tie 0.5, loss 0), temperature-1
samples with their KL to a reference, held-out perplexity. `rlhfkit eval` and the
demo's gold evaluation are both built from these.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from rlhfkit.data.chat import render_prompt, stop_ids
from rlhfkit.data.packing import pack_documents
from rlhfkit.evaluation.metrics import bootstrap_ci, kl_from_logprobs, outcomes, perplexity
from rlhfkit.models.load import pick_device
from rlhfkit.models.logprobs import response_logprobs
from rlhfkit.models.packed import packs
from rlhfkit.ops import logprobs_from_logits, shift_for_causal_lm
from rlhfkit.rollout import generate

RM_TIE_TOL = 1e-5  # RM scores closer than this are a tie (batching changes the last float bits)


@torch.no_grad()
def sample_with_kl(policy, ref, tok, prompts: Sequence[str], *, num_samples: int, max_new_tokens: int,
                   batch_size: int = 64, seed: int = 0) -> dict[str, list[list]]:
    """`num_samples` temperature-1 responses per prompt, and each one's k1 KL to `ref` (nats).

    Returns lists of N prompts x num_samples: `responses` (decoded, no EOS),
    `n_tokens` (text tokens, EOS excluded, as in the greedy `response_tokens`), `terminated`
    (ended by EOS) and `kl` (empty lists when `ref` is None). Policy logprobs are recomputed by the same full forward as the
    reference's rather than taken from sampling (KV cache), so a policy equal to
    the reference gives exactly 0; both run on the samples' real tokens packed end to end when both models keep
    packed sequences apart (`rlhfkit.models.packed`).
    """
    device = next(policy.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    rendered = [render_prompt(tok, p) for p in prompts for _ in range(num_samples)]
    responses, n_tokens, terminated, kls = [], [], [], []
    stops = stop_ids(tok, policy)
    packed = ref is not None and packs(policy) and packs(ref)
    for start in range(0, len(rendered), batch_size):
        g = generate(policy, rendered[start : start + batch_size], eos_id=stops, pad_id=tok.pad_token_id,
                     max_new_tokens=max_new_tokens, temperature=1.0, generator=gen)
        keep = g.response_mask & ~torch.isin(g.response_ids, torch.tensor(stops, device=g.response_ids.device))  # (B, R) text tokens
        responses += [tok.decode(r[m].tolist(), skip_special_tokens=True) for r, m in zip(g.response_ids, keep)]
        n_tokens += keep.sum(1).tolist()
        terminated += g.terminated.tolist()
        if ref is not None:
            ids, attn = g.sequences()
            P = g.prompt_ids.shape[1]
            logprobs, _ = response_logprobs(policy, ids, attn, P, packed=packed)  # (B, R)
            ref_logprobs, _ = response_logprobs(ref, ids, attn, P, packed=packed)  # (B, R)
            kls += kl_from_logprobs(logprobs, ref_logprobs, g.response_mask).tolist()

    def per_prompt(xs: list) -> list[list]:
        return [xs[i : i + num_samples] for i in range(0, len(xs), num_samples)]

    return {"responses": per_prompt(responses), "n_tokens": per_prompt(n_tokens), "terminated": per_prompt(terminated),
            "kl": per_prompt(kls)}


@torch.no_grad()
def corpus_perplexity(model, tok, docs: list[str], seq_len: int, batch_size: int = 64) -> float:
    """Per-token perplexity on `docs` packed into rows of `seq_len` (EOS between documents),
    every token after the first of a row predicted: the pretraining objective, held out."""
    rows = pack_documents(tok, docs, seq_len)  # (N, seq_len)
    device = next(model.parameters()).device
    logprobs = []
    for batch in rows.split(batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch).logits  # (b, seq_len, V)
        logprobs.append(logprobs_from_logits(*shift_for_causal_lm(batch, logits)).cpu())  # (b, seq_len - 1)
    lp = torch.cat(logprobs)
    return perplexity(lp, torch.ones_like(lp, dtype=torch.bool))


def win_rates(rows: list[dict], baseline_rows: list[dict], n_boot: int, seed: int, gold_tol: float = 0.0,
              key: str = "gold") -> dict[str, Any]:
    """Win-rate of `rows` against `baseline_rows` (the same prompts) by their `key` score (differences
    up to `gold_tol` are ties), as `<key>_winrate`, and, if scored, by RM (`rm_winrate`)."""
    if [r["id"] for r in rows] != [r["id"] for r in baseline_rows]:
        raise ValueError("win-rates need both policies' answers to the same prompts in the same order")
    out: dict[str, Any] = {"rm_winrate": None}
    if rows and key in rows[0]:
        wins = outcomes([r[key] for r in rows], [r[key] for r in baseline_rows], gold_tol)
        out = {f"{key}_winrate": bootstrap_ci(wins, n_boot, seed), **out}
    if rows and "rm_score" in rows[0]:
        rm = outcomes([r["rm_score"] for r in rows], [r["rm_score"] for r in baseline_rows], RM_TIE_TOL)
        out["rm_winrate"] = bootstrap_ci(rm, n_boot, seed)
    return out


def check_policies(cfg) -> None:
    """The checks every evaluation config shares: policies given, names distinct and one per policy,
    the baseline among them, sample and bootstrap counts valid. Raises ConfigError."""
    from rlhfkit.config import ConfigError

    if not cfg.policies:
        raise ConfigError("'policies': give at least one model directory, e.g. policies=[runs/sft/model]")
    if cfg.names and len(cfg.names) != len(cfg.policies):
        raise ConfigError(f"'names': {len(cfg.names)} names for {len(cfg.policies)} policies")
    names = cfg.names or [policy_name(p) for p in cfg.policies]
    if len(set(names)) != len(names):
        raise ConfigError(f"'names': policy names must be distinct, got {names} (set names=[...])")
    if cfg.baseline and cfg.baseline not in names:
        raise ConfigError(f"'baseline': {cfg.baseline!r} is not one of the policies {names}")
    if cfg.num_samples < 0 or cfg.bootstrap < 1:
        raise ConfigError("'num_samples' must be >= 0 and 'bootstrap' >= 1")


def load_reward_fn(path: str | None, device: str):
    if path is None:
        return None
    from rlhfkit.models.reward import load_scalar_model, reward_fn_from_model

    rm, rm_tok = load_scalar_model(path, device=pick_device(device))
    rm.requires_grad_(False)
    return reward_fn_from_model(rm, rm_tok)


def same_vocab(tok, ref_tok) -> bool:
    """KL needs the reference to score the policy's own tokens."""
    same = tok.get_vocab() == ref_tok.get_vocab()
    if not same:
        print("[eval] the reference has a different vocabulary: KL not measured for this policy", flush=True)
    return same


def finite(x: float) -> float | None:
    """NaN -> None, so metrics.json stays strict JSON."""
    return None if x != x else x


def policy_name(path: str) -> str:
    """runs/demo/sft/model -> sft"""
    parts = [p for p in os.path.normpath(path).split(os.sep) if p not in ("model", ".")]
    return parts[-1] if parts else path
