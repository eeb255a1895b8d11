"""Batched sampling with a KV cache, EOS truncation, and sampling-time logprobs.

One generation loop serves every stage (eval, `generate`, `sample`, PPO, RLOO,
GRPO); `answer` is its text-in, text-out form. Prompts are left-padded so every row's next token sits in the last
column; position ids are computed from the attention mask so padding does not
shift RoPE positions. Each row stops at its first EOS; later columns are PAD and
masked out.

`logprobs` are log-softmax(logits / temperature) of the sampled tokens under
the FULL tempered distribution (top-p only restricts which tokens may be drawn).
PPO recomputes logprobs with the same temperature and must get the same numbers
(Huang et al. 2024, detail "temperature-scaled logits"), so sample with
top_p=1.0 for on-policy RL.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import torch

from rlhfkit.data.chat import pad_batch, render_prompt, stop_ids
from rlhfkit.models import decode, precision
from rlhfkit.models.lora import hf_model
from rlhfkit.models.logprobs import position_ids_from_mask, response_logprobs


@dataclass
class Generation:
    prompt_ids: torch.Tensor  # (B, P) left-padded with PAD
    prompt_mask: torch.Tensor  # (B, P) bool, True on real prompt tokens
    response_ids: torch.Tensor  # (B, R) PAD after the first EOS
    response_mask: torch.Tensor  # (B, R) bool, True on generated tokens up to and including EOS
    logprobs: torch.Tensor  # (B, R) tempered logprob of each sampled token, 0 where masked
    terminated: torch.Tensor  # (B,) bool, the row produced EOS within max_new_tokens

    def sequences(self):
        """`(input_ids, attention_mask)` of prompt + response, (B, P + R)."""
        return (
            torch.cat([self.prompt_ids, self.response_ids], 1),
            torch.cat([self.prompt_mask, self.response_mask], 1),
        )


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator=None, rows: Sequence[int] | None = None,
                n_rows: int | None = None):
    """Draw one token per row; return `(tokens (B,), tempered logprobs (B,))`.

    temperature == 0 means greedy; the logprob is then that of the untempered distribution.
    `rows`, `n_rows`: these B rows are rows `rows` of a global batch of `n_rows` split across data-parallel
    ranks; the uniforms are drawn for the whole global batch and each rank takes its own, so with the same
    generator every row gets the same draw whichever rank holds it (2 ranks sample what 1 process samples).
    """
    if temperature <= 0:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, None])[:, 0]
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature  # x / 1 is x: skip the op
    logp = torch.log_softmax(logits, -1)  # (B, V)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    # inverse-CDF draw: one uniform per row (torch.multinomial draws an exponential per vocabulary entry)
    cdf = probs.cumsum(-1)  # (B, V)
    if rows is None:
        u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype)
    else:
        u = torch.rand(n_rows, 1, generator=generator, device=cdf.device, dtype=cdf.dtype)[torch.as_tensor(rows, device=cdf.device)]
    u = u * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=cdf.shape[-1] - 1)  # zero-mass tokens never drawn
    return tokens, logp.gather(-1, tokens[:, None])[:, 0]


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    eos_id: int | Sequence[int],
    pad_id: int,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    engine: str = "auto",
    rows: Sequence[int] | None = None,
    n_rows: int | None = None,
) -> Generation:
    """Sample one response per prompt (a list of token-id lists) in a single batch.

    `rows`/`n_rows`: these prompts are rows of a global batch split across ranks (`sample_next`); every
    rank then draws for the global batch at each step until its own rows are done.

    `engine="auto"` decodes Llama-family models with `LlamaDecoder` (same math, a fraction of the
    per-token overhead) and anything else with the model's own forward and cache; `"hf"` forces the latter.
    """
    device = next(model.parameters()).device
    stops = _stops(eos_id, device)
    assert not bool((stops == pad_id).any()), "PAD must differ from EOS, or padding looks like a finished response"
    prompt_ids, prompt_mask = pad_batch(prompts, pad_id, side="left")
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    B = prompt_ids.shape[0]
    logits, step = _decoder(model, prompt_ids, prompt_mask, max_new_tokens, engine)
    response_ids = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)  # (B, R) filled per step
    logprobs = torch.empty(B, max_new_tokens, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    R = max_new_tokens
    # A finished row keeps sampling (its draws are the global batch's anyway) until every row is done; what it
    # samples after its EOS is masked to PAD / 0 below, and no other row attends to it.
    for t in range(max_new_tokens):
        tok, lp = sample_next(logits, temperature, top_p, generator, rows, n_rows)
        response_ids[:, t], logprobs[:, t] = tok, lp
        done |= torch.isin(tok, stops)
        if t + 1 == max_new_tokens:  # no forward for a token nobody samples
            break
        if bool(done.all()):
            R = t + 1
            break
        logits = step(tok)
    response_ids, logprobs = response_ids[:, :R], logprobs[:, :R]
    response_mask = truncate_after_eos(response_ids, stops)
    return Generation(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids.masked_fill(~response_mask, pad_id),
        response_mask=response_mask,
        logprobs=logprobs.masked_fill(~response_mask, 0.0),
        terminated=torch.isin(response_ids, stops).any(-1),
    )


def _decoder(model, prompt_ids, prompt_mask, max_new_tokens: int, engine: str):
    """`(logits of the first response token (B, V), step(tokens (B,)) -> logits of the next)`."""
    if engine not in ("auto", "hf"):
        raise ValueError(f"engine must be 'auto' or 'hf', got {engine!r}")
    if engine == "auto" and decode.supports(hf_model(model)):  # a peft model: the HF model inside, LoRA layers and all
        dec = decode.LlamaDecoder(hf_model(model), prompt_ids.shape[0], prompt_ids.shape[1] + max_new_tokens)
        prefill, step = (precision.autocast_like(model, f) for f in (dec.prefill, dec.step))  # mixed precision: as the forward
        return prefill(prompt_ids, prompt_mask), step
    # transformers 5.25 renamed `past_key_values` to `cache` (the old name warns, and goes in 5.40)
    # (a peft model passes the keyword on to the HF model inside: that model's signature decides)
    name = "cache" if "cache" in inspect.signature(hf_model(model).forward).parameters else "past_key_values"
    attn = prompt_mask.long()
    out = model(input_ids=prompt_ids, attention_mask=attn, position_ids=position_ids_from_mask(prompt_mask), use_cache=True)
    state = {"past": out.get(name, out.get("past_key_values")), "attn": attn, "pos": attn.sum(-1, keepdim=True)}

    def step(tok):
        state["attn"] = torch.cat([state["attn"], torch.ones_like(state["attn"][:, :1])], 1)
        out = model(input_ids=tok[:, None], attention_mask=state["attn"], position_ids=state["pos"],
                    use_cache=True, **{name: state["past"]})
        state["past"], state["pos"] = out.get(name, out.get("past_key_values")), state["pos"] + 1
        return out.logits[:, -1]

    return out.logits[:, -1], step


def _stops(eos_id, device) -> torch.Tensor:
    return torch.as_tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), dtype=torch.long, device=device)


def truncate_after_eos(response_ids: torch.Tensor, eos_id) -> torch.Tensor:
    """Bool mask (B, R): True up to and including the first EOS (any of `eos_id`, an id or several); all True if none."""
    is_eos = torch.isin(response_ids, _stops(eos_id, response_ids.device)).long()
    eos_seen_before = is_eos.cumsum(-1) - is_eos  # EOS strictly before this position
    return eos_seen_before == 0


def generate_batched(model, prompts, *, batch_size: int = 64, **kwargs) -> list[tuple[list[int], bool, list[float]]]:
    """Generate for any number of prompts; returns per prompt `(response ids without EOS/PAD, terminated, logprobs)`.

    Prompts are bucketed by length (less padding, faster) and results returned in input order.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        gen = generate(model, [prompts[i] for i in idx], **kwargs)
        eos = set(_stops(kwargs["eos_id"], "cpu").tolist())
        for row, i in enumerate(idx):
            m = gen.response_mask[row]
            ids = gen.response_ids[row][m].tolist()
            lps = gen.logprobs[row][m].tolist()
            if ids and ids[-1] in eos:
                ids, lps = ids[:-1], lps[:-1]
            results[i] = (ids, bool(gen.terminated[row]), lps)
    return results


@dataclass
class Experience:
    """One batch of on-policy rollouts with everything the RL losses need (no grad)."""

    prompts: list[str]
    responses: list[str]  # decoded, without EOS/PAD
    input_ids: torch.Tensor  # (B, P + R) prompt (left-padded) + response (PAD after EOS)
    attention_mask: torch.Tensor  # (B, P + R) bool
    prompt_len: int  # P
    mask: torch.Tensor  # (B, R) bool, True on response tokens (EOS included)
    terminated: torch.Tensor  # (B,) bool
    scores: torch.Tensor  # (B,) reward (RM or callable), missing-EOS penalty applied
    logprobs: torch.Tensor | None  # (B, R) policy at rollout time: the sampler's in fp32, else a no-grad forward's; None if not asked
    ref_logprobs: torch.Tensor | None  # (B, R) frozen reference; None without one
    packed: bool = False  # forwards over these rollouts run on their real tokens packed end to end (rlhfkit.models.packed)


@torch.no_grad()
def collect_experience(policy, ref, tok, prompts: Sequence, reward_fn, *, max_new_tokens: int,
                       temperature: float, missing_eos_penalty: float | None = None,
                       forward_batch_size: int = 64, stopwatch=None, columns: dict[str, list] | None = None,
                       generator: torch.Generator | None = None, rows: Sequence[int] | None = None,
                       n_rows: int | None = None, policy_logprobs: bool = True, packed: bool = False) -> Experience:
    """Generate, decode, score, and compute policy/reference logprobs for `prompts`.

    `reward_fn(prompts, responses, terminated, **columns) -> (B,) tensor` is a reward model or
    any Python callable; `columns` are the prompts' dataset columns, lists aligned with `prompts`. A response that hit the length limit without EOS gets
    `missing_eos_penalty` added to its score (Huang et al. 2024: without it the
    policy learns to ramble past the limit). `generator`, `rows`, `n_rows`: sampling's random numbers (see
    `generate`): a data-parallel rank passes the global batch rows it holds. The policy's logprobs of its rollouts
    are the sampler's own when the policy decodes in fp32 (`precision.decodes_exactly`: the numbers a no-grad forward
    would give, up to float rounding, with no forward); otherwise a no-grad forward computes them.
    `policy_logprobs=False` skips them (`logprobs` None), for an on-policy update that takes them from its own forward.
    `ref=None`: no reference logprobs (`ref_logprobs` None), for a loss without a KL term. `packed`: the
    forwards over the rollouts run on their real tokens packed end to end (models `rlhfkit.models.packed.packs` accepts).
    """
    import contextlib

    timed = stopwatch or (lambda name: contextlib.nullcontext())
    policy.eval()
    with timed("generate"):
        stops = stop_ids(tok, policy)
        gen = generate(policy, [render_prompt(tok, p) for p in prompts], eos_id=stops,
                       pad_id=tok.pad_token_id, max_new_tokens=max_new_tokens, temperature=temperature,
                       generator=generator, rows=rows, n_rows=n_rows)
    input_ids, attn = gen.sequences()
    P = gen.prompt_ids.shape[1]
    texts = [tok.decode(r[m & ~torch.isin(r, _stops(stops, r.device))].tolist(), skip_special_tokens=True)
             for r, m in zip(gen.response_ids, gen.response_mask)]
    with timed("score"):
        scores = reward_fn(list(prompts), texts, gen.terminated.tolist(), **(columns or {})).float().to(input_ids.device)
    if missing_eos_penalty is not None:
        scores = scores + missing_eos_penalty * (~gen.terminated).float()

    def logprobs_of(model):
        out = [response_logprobs(model, input_ids[i : i + forward_batch_size], attn[i : i + forward_batch_size], P, temperature,
                                 packed=packed)[0]
               for i in range(0, len(prompts), forward_batch_size)]
        return torch.cat(out).masked_fill(~gen.response_mask, 0.0)

    with timed("policy_logprobs"):
        logprobs = None
        if policy_logprobs:  # the sampler's (0 off the mask, as the forward's) when they equal the forward's
            logprobs = gen.logprobs if precision.decodes_exactly(policy) else logprobs_of(policy)
    with timed("reference"):
        ref_logprobs = logprobs_of(ref) if ref is not None else None
    return Experience(list(prompts), texts, input_ids, attn, P, gen.response_mask, gen.terminated, scores,
                      logprobs, ref_logprobs, packed)


@torch.no_grad()
def answer(model, tok, prompts: Sequence, *, max_new_tokens: int = 48, temperature: float = 0.0,
           top_p: float = 1.0, batch_size: int = 64, seed: int = 0, prefix: str = "") -> list[dict]:
    """One decoded response per prompt (a string or a conversation): dicts with `response`,
    `terminated` (ended by EOS) and `n_tokens`. Greedy by default, so two policies are compared on
    their modal answer. A `prefix` is forced as the start of every response (the model continues it);
    it is part of `response` and not of `n_tokens`."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    forced = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    outs = generate_batched(model, [render_prompt(tok, p) + forced for p in prompts], batch_size=batch_size,
                            eos_id=stop_ids(tok, model), pad_id=tok.pad_token_id, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, generator=gen)
    model.train(was_training)
    return [{"response": tok.decode(forced + ids, skip_special_tokens=True), "terminated": term, "n_tokens": len(ids)}
            for ids, term, _ in outs]


def sample_groups(model, tok, prompts: Sequence, n_free: Sequence[int], n_prefixed: Sequence[int], prefix: str = "",
                  **kwargs) -> list[list[dict]]:
    """Several responses per prompt: `n_free[i]` sampled freely and then `n_prefixed[i]` continuing the
    forced `prefix` (e.g. a refusal opener, so the candidates include one). Two batched `answer` calls
    (free, then prefixed); `kwargs` go to `answer`. Returns one list of response dicts per prompt."""
    free = iter(answer(model, tok, [p for p, n in zip(prompts, n_free) for _ in range(n)], **kwargs) if sum(n_free) else [])
    pre = iter(answer(model, tok, [p for p, n in zip(prompts, n_prefixed) for _ in range(n)], prefix=prefix, **kwargs)
               if sum(n_prefixed) else [])
    return [[next(free) for _ in range(n)] + [next(pre) for _ in range(m)] for n, m in zip(n_free, n_prefixed)]
