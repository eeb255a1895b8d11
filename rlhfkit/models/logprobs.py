"""Log-probabilities of a causal LM: per response token (RL losses) and summed per example (DPO).

One convention everywhere: position ids counted over real tokens (so left padding
does not shift RoPE positions), and logits at column t predict token t + 1.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rlhfkit.data.chat import pad_batch
from rlhfkit.ops import entropy_from_logits, logprobs_from_logits, masked_sum


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2 ... counted over real tokens only; padding positions get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                      temperature: float = 1.0, with_entropy: bool = False):
    """Tempered logprobs (B, R) of the response part of `input_ids` (B, P + R), and optionally entropy (B, R).

    Column P - 1 + t of the logits predicts response token t. Dividing by the
    sampling temperature makes these equal the sampling-time logprobs.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask.long(),
                   position_ids=position_ids_from_mask(attention_mask)).logits[:, prompt_len - 1 : -1]  # (B, R, V)
    logprobs = logprobs_from_logits(logits, input_ids[:, prompt_len:], temperature)
    return logprobs, (entropy_from_logits(logits, temperature) if with_entropy else None)


def sequence_logprobs(model, rows: Sequence[tuple[list[int], list[bool]]], pad_id: int) -> torch.Tensor:
    """Summed logprob of the masked (response) tokens of each rendered example: (N,).

    `rows` are `(ids, mask)` from `rlhfkit.data.chat.render_example`, right-padded here.
    """
    ids, attn = pad_batch([r[0] for r in rows], pad_id, side="right")
    loss_mask, _ = pad_batch([[int(m) for m in r[1]] for r in rows], 0, side="right")
    device = next(model.parameters()).device
    ids, attn, loss_mask = ids.to(device), attn.to(device), loss_mask.to(device).bool()
    logits = model(input_ids=ids, attention_mask=attn.long()).logits[:, :-1]  # (N, T-1, V)
    logprobs = logprobs_from_logits(logits, ids[:, 1:])  # (N, T-1)
    return masked_sum(logprobs, loss_mask[:, 1:], dim=1)


def scored_tokens(row: tuple[list[int], list[bool]]) -> int:
    """How many tokens of a rendered example `sequence_logprobs` sums over (the mask shifted by one)."""
    return sum(row[1][1:])
