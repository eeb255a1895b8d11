"""Log-probabilities of a causal LM: per response token (RL losses) and summed per example (DPO).

One convention everywhere: position ids counted over real tokens (so left padding
does not shift RoPE positions), and logits at column t predict token t + 1.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rlhfkit.data.chat import pad_batch
from rlhfkit.models.packed import pack, pack_rollout, pack_shared, prompt_length
from rlhfkit.ops import entropy_from_logits, logprobs_from_logits, masked_sum


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2 ... counted over real tokens only; padding positions get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                      temperature: float = 1.0, with_entropy: bool = False, packed: bool = False):
    """Tempered logprobs (B, R) of the response part of `input_ids` (B, P + R), and optionally entropy (B, R).

    Column P - 1 + t of the logits predicts response token t. Dividing by the
    sampling temperature makes these equal the sampling-time logprobs. `packed`: the forward runs on the rows'
    real tokens packed end to end (`rlhfkit.models.packed.pack_rollout`; only for a model `packs` accepts).
    """
    if packed:
        p, row, col = pack_rollout(input_ids, attention_mask, prompt_len)
        dev = input_ids.device
        logits = model(input_ids=p.input_ids.to(dev), position_ids=p.position_ids.to(dev),
                       use_cache=False).logits[row.to(dev), col.to(dev)]  # (B, R, V)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask.long(),
                       position_ids=position_ids_from_mask(attention_mask)).logits[:, prompt_len - 1 : -1]  # (B, R, V)
    logprobs = logprobs_from_logits(logits, input_ids[:, prompt_len:], temperature)
    return logprobs, (entropy_from_logits(logits, temperature) if with_entropy else None)


def sequence_logprobs(model, rows: Sequence[tuple[list[int], list[bool]]], pad_id: int, packed: bool = False,
                      shared: bool = False) -> torch.Tensor:
    """Summed logprob of the masked (response) tokens of each rendered example: (N,).

    `rows` are `(ids, mask)` from `rlhfkit.data.chat.render_example`, right-padded here, or with `packed`
    laid end to end in fewer rows (`rlhfkit.models.packed`; only for a model `packs` accepts), with `shared`
    too each prompt (the tokens before the first masked one) once (`pack_shared`; only for a model
    `shares_prompts` accepts): DPO's chosen and rejected answers share their prompt.
    """
    param = next(model.parameters())
    device = param.device
    if packed and shared:
        s = pack_shared([r[0] for r in rows], [prompt_length(r[1]) for r in rows], pad_id)
        logits = model(input_ids=s.input_ids.to(device), position_ids=s.position_ids.to(device),
                       attention_mask=s.additive_mask(param.dtype).to(device), use_cache=False).logits  # (R, C, V)
        seq, where, targets = [], [], []  # token k of a sequence is predicted at the column of its token k - 1
        for i, ((ids, mask), cols) in enumerate(zip(rows, s.columns)):
            for k in range(1, len(ids)):
                if mask[k]:
                    seq.append(i), where.append(cols[k - 1]), targets.append(ids[k])
        at = s.row[torch.tensor(seq, dtype=torch.long)].to(device), torch.tensor(where, dtype=torch.long, device=device)
        logprobs = logprobs_from_logits(logits[at][None], torch.tensor(targets, device=device)[None])[0]  # (M,)
        return logprobs.new_zeros(len(rows)).index_add(0, torch.tensor(seq, dtype=torch.long, device=device), logprobs)
    if packed:
        p = pack([r[0] for r in rows], pad_id)
        logits = model(input_ids=p.input_ids.to(device), position_ids=p.position_ids.to(device), use_cache=False).logits
        logprobs = logprobs_from_logits(logits[:, :-1], p.input_ids[:, 1:].to(device))  # (R, C-1): column c predicts c + 1
        scored = p.place([[False, *r[1][1:]] for r in rows], False)[:, 1:].to(device)  # a sequence's first token never is
        seq = p.seq[:, 1:].to(device)
        return logprobs.new_zeros(len(rows)).index_add(0, seq[scored], logprobs[scored])
    ids, attn = pad_batch([r[0] for r in rows], pad_id, side="right")
    loss_mask, _ = pad_batch([[int(m) for m in r[1]] for r in rows], 0, side="right")
    ids, attn, loss_mask = ids.to(device), attn.to(device), loss_mask.to(device).bool()
    logits = model(input_ids=ids, attention_mask=attn.long()).logits[:, :-1]  # (N, T-1, V)
    logprobs = logprobs_from_logits(logits, ids[:, 1:])  # (N, T-1)
    return masked_sum(logprobs, loss_mask[:, 1:], dim=1)


def scored_tokens(row: tuple[list[int], list[bool]]) -> int:
    """How many tokens of a rendered example `sequence_logprobs` sums over (the mask shifted by one)."""
    return sum(row[1][1:])
