"""Padding-free batches: several sequences share a row, kept apart by their position ids.

A batch of right-padded rows computes on padding: in the demo's preference data the longest answer of a
batch is about twice the mean length. `pack` lays the sequences end to end in rows as long as the batch's
longest (first fit, longest first), each sequence's position ids starting again at 0; transformers builds
the attention mask from those restarts (`masking_utils.find_packed_sequence_indices`) so no token attends
across a boundary, and every sequence gets the outputs it would get alone, up to float rounding.

A model whose attention ignores the restarts would silently mix sequences, so `packs(model)` checks it
first, once per model: two short sequences alone and packed must give the same outputs. Callers fall back
to padded batches when it fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass
class Packed:
    """`N` sequences packed into `R` rows of `C` columns."""

    input_ids: torch.Tensor  # (R, C) long: the sequences end to end, pad_id in each row's free tail
    position_ids: torch.Tensor  # (R, C) long: 0, 1, ... within each sequence (and within the free tail)
    seq: torch.Tensor  # (R, C) long: which sequence each column holds, -1 in the free tail
    row: torch.Tensor  # (N,) long: the row of each sequence
    start: torch.Tensor  # (N,) long: its first column
    length: torch.Tensor  # (N,) long

    def place(self, values: Sequence[Sequence], fill) -> torch.Tensor:
        """Per-sequence lists (each as long as its sequence) laid out as the sequences are: (R, C), `fill` elsewhere."""
        dtype = torch.bool if isinstance(fill, bool) else None
        out = torch.full(self.input_ids.shape, fill, dtype=dtype or torch.long)
        for v, r, s, n in zip(values, self.row.tolist(), self.start.tolist(), self.length.tolist()):
            out[r, s : s + n] = torch.as_tensor(list(v), dtype=out.dtype)
        return out

    def last(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, column) of each sequence's last token."""
        return self.row, self.start + self.length - 1


def pack(rows: Sequence[Sequence[int]], pad_id: int) -> Packed:
    """Pack token-id lists into rows as long as the longest: each goes into the first row with room, longest
    first (first-fit decreasing)."""
    capacity = max(len(r) for r in rows)
    row, start, used = first_fit([len(r) for r in rows], capacity)
    R = len(used)
    ids = torch.full((R, capacity), pad_id, dtype=torch.long)
    seq = torch.full((R, capacity), -1, dtype=torch.long)
    pos = torch.empty((R, capacity), dtype=torch.long)
    for r in range(R):  # the free tail counts 0, 1, ... as a sequence of its own
        pos[r, used[r] :] = torch.arange(capacity - used[r])
    for i, ids_i in enumerate(rows):
        r, s, n = row[i], start[i], len(ids_i)
        ids[r, s : s + n] = torch.as_tensor(list(ids_i), dtype=torch.long)
        seq[r, s : s + n] = i
        pos[r, s : s + n] = torch.arange(n)
    return Packed(ids, pos, seq, torch.tensor(row), torch.tensor(start), torch.tensor([len(r) for r in rows]))


def first_fit(lengths: Sequence[int], capacity: int) -> tuple[list[int], list[int], list[int]]:
    """Place items of `lengths` in rows of `capacity`, longest first, each in the first row with room (first-fit
    decreasing): (row of each, start column of each, columns used in each row)."""
    used: list[int] = []
    row, start = [0] * len(lengths), [0] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((k for k, u in enumerate(used) if capacity - u >= lengths[i]), None)
        if r is None:
            used.append(0)
            r = len(used) - 1
        row[i], start[i] = r, used[r]
        used[r] += lengths[i]
    return row, start, used


def packs(model, forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None) -> bool:
    """Whether `model` keeps packed sequences apart: the outputs of two short sequences packed in one row
    equal their outputs alone (to 1e-3 of the outputs' scale in fp32, 3e-2 in 16-bit). Checked once per model
    (the answer is kept on it). `forward(input_ids (1, T), position_ids (1, T) or None) -> (1, T, ...)`: the
    outputs compared, by default the causal LM's logits."""
    if forward is None:
        forward = lambda ids, pos: model(input_ids=ids, position_ids=pos, use_cache=False).logits  # noqa: E731

    def outputs(device, token_ids):
        a, b = (torch.tensor(t, device=device) for t in token_ids((7, 5), seed=0))
        alone = [forward(x[None], None)[0].float() for x in (a, b)]
        pos = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None].to(device)
        both = forward(torch.cat([a, b])[None], pos)[0].float()
        return alone, [both[: len(a)], both[len(a) :]]

    return _checked_once(model, "_rlhfkit_packs", outputs)


def _checked_once(model, attr: str, outputs: Callable) -> bool:
    """Compare a model's outputs alone and laid out another way, once per model (the answer kept on it as `attr`):
    `outputs(device, token_ids) -> (alone, other)`, lists of tensors that must match within 1e-3 of the outputs'
    scale in fp32, 3e-2 in 16-bit; `token_ids(lengths, seed)` draws random token-id lists. In eval mode (no dropout),
    without gradients; a forward that fails (no position_ids, another layout) is a no."""
    known = getattr(model, attr, None)
    if known is not None:
        return known
    param = next(model.parameters())
    vocab = model.get_input_embeddings().weight.shape[0] if hasattr(model, "get_input_embeddings") else 100

    def token_ids(lengths, seed):
        g = torch.Generator().manual_seed(seed)
        return [torch.randint(0, min(vocab, 1000), (n,), generator=g).tolist() for n in lengths]

    training = getattr(model, "training", None)  # (a reference seen through `lora.AdaptersOff` has no mode)
    model.eval()
    try:
        with torch.no_grad():
            alone, other = outputs(param.device, token_ids)
        scale = 1 + max(t.abs().max().item() for t in alone)
        tol = (1e-3 if param.dtype == torch.float32 else 3e-2) * scale
        ok = all(bool((x - y).abs().max() <= tol) for x, y in zip(alone, other))
    except (TypeError, ValueError, RuntimeError):
        ok = False
    finally:
        if training is not None:
            model.train(training)
    try:
        setattr(model, attr, ok)
    except AttributeError:
        pass
    return ok


SHARED_WIDTH = 2.0  # the most columns of a `pack_shared` segment, in longest sequences


@dataclass
class Shared:
    """`N` sequences packed with each prompt once (`pack_shared`): `R` rows of `C` columns and the mask that keeps
    them apart."""

    input_ids: torch.Tensor  # (R, C) long
    position_ids: torch.Tensor  # (R, C) long: each sequence's tokens at the positions they have alone
    mask: torch.Tensor  # (R, 1, C, C) bool: which columns each column attends to
    row: torch.Tensor  # (N,) long: the row of each sequence
    columns: list[list[int]]  # the columns of each sequence's tokens, in order (its prompt's, then its own)

    def last(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, column) of each sequence's last token."""
        return self.row, torch.tensor([c[-1] for c in self.columns], dtype=torch.long)

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """The mask as an attention bias (0 where attended, the dtype's minimum elsewhere): (R, 1, C, C)."""
        return torch.zeros(self.mask.shape, dtype=dtype).masked_fill_(~self.mask, torch.finfo(dtype).min)


def prompt_length(mask: Sequence[bool]) -> int:
    """The prompt of a rendered example for `pack_shared`: its tokens before the first trained (masked) one; 0, so
    it shares nothing, when none is."""
    return mask.index(True) if True in mask else 0


def pack_shared(rows: Sequence[Sequence[int]], prompt_lens: Sequence[int], pad_id: int, width: float = SHARED_WIDTH) -> Shared:
    """Pack token-id lists whose first `prompt_lens[i]` tokens are a prompt, each prompt once where it fits: a
    prompt's segment is its tokens, then the rest of sequences that begin with it, end to end. A rest attends to
    the prompt and to itself causally, at the positions it has alone, so each sequence's outputs are those it gets
    alone, up to float rounding (the answers in a ranking of K share one prompt: up to K - 1 copies of it are not
    computed). A segment is at most `width` x the longest sequence: a prompt whose answers do not fit is repeated
    in as many segments as they need (the masked attention costs columns x row length, so longer rows spend on
    attention what sharing saves on the rest). Segments go into rows as long as the longest segment, first-fit
    decreasing, as `pack`. A sequence with no prompt tokens (0) shares nothing."""
    groups: dict[tuple, list[int]] = {}
    for i, (r, n) in enumerate(zip(rows, prompt_lens)):
        groups.setdefault(tuple(r[:n]) if n else ("alone", i), []).append(i)
    limit = max(int(width * max(len(r) for r in rows)), max(len(r) for r in rows))
    segments = []  # (prompt, members, length)
    for members in groups.values():
        prompt = list(rows[members[0]][: prompt_lens[members[0]]])
        current, n = [], len(prompt)
        for i in sorted(members, key=lambda i: -len(rows[i])):
            rest = len(rows[i]) - len(prompt)
            if current and n + rest > limit:
                segments.append((prompt, current, n))
                current, n = [], len(prompt)
            current.append(i)
            n += rest
        segments.append((prompt, current, n))
    capacity = max(n for _, _, n in segments)
    seg_row, seg_start, used = first_fit([n for _, _, n in segments], capacity)
    placed = [(r, s, prompt, members) for r, s, (prompt, members, _) in zip(seg_row, seg_start, segments)]
    R = len(used)
    ids = torch.full((R, capacity), pad_id, dtype=torch.long)
    pos = torch.zeros((R, capacity), dtype=torch.long)
    seg = torch.full((R, capacity), -1, dtype=torch.long)  # the segment of each column (-1: free tail)
    branch = torch.zeros((R, capacity), dtype=torch.long)  # 0: a prompt token; k: the k-th rest of its segment
    row, columns = [0] * len(rows), [[] for _ in rows]
    for k, (r, s, prompt, members) in enumerate(placed):
        P = len(prompt)
        if P:
            ids[r, s : s + P], pos[r, s : s + P], seg[r, s : s + P] = torch.tensor(prompt, dtype=torch.long), torch.arange(P), k
        c = s + P
        for b, i in enumerate(members, 1):
            rest = list(rows[i][P:])
            ids[r, c : c + len(rest)] = torch.tensor(rest, dtype=torch.long)
            pos[r, c : c + len(rest)], seg[r, c : c + len(rest)], branch[r, c : c + len(rest)] = torch.arange(P, P + len(rest)), k, b
            row[i] = r
            columns[i] = list(range(s, s + P)) + list(range(c, c + len(rest)))
            c += len(rest)
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)  # (R, query, key)
    own = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    mask = (same & own & (pos[:, None, :] <= pos[:, :, None])) | torch.eye(capacity, dtype=torch.bool)
    return Shared(ids, pos, mask[:, None], torch.tensor(row), columns)


def shares_prompts(model, forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None) -> bool:
    """Whether `model` honours `pack_shared`'s mask: two sequences with one prompt, packed with it once, give the
    outputs they give alone at their last tokens (the tolerance of `packs`). Checked once per model (kept on it).
    `forward(input_ids (R, C), position_ids (R, C), additive mask (R, 1, C, C) or None) -> (R, C, ...)`: the
    outputs compared, by default the causal LM's logits."""
    if forward is None:
        forward = lambda ids, pos, mask: model(input_ids=ids, position_ids=pos, attention_mask=mask,  # noqa: E731
                                               use_cache=False).logits

    def outputs(device, token_ids):
        prompt, x, y = token_ids((6, 4, 3), seed=1)
        rows = [prompt + x, prompt + y]
        alone = [forward(torch.tensor([r], device=device), torch.arange(len(r), device=device)[None], None)[0, -1].float()
                 for r in rows]
        s = pack_shared(rows, [6, 6], 0)
        dtype = next(model.parameters()).dtype
        out = forward(s.input_ids.to(device), s.position_ids.to(device), s.additive_mask(dtype).to(device))
        return alone, [out[r, c].float() for r, c in zip(*(t.tolist() for t in s.last()))]

    return _checked_once(model, "_rlhfkit_shares", outputs)


def use_packing(stage: str, asked: bool, *checks: Callable[[], bool]) -> bool:
    """Whether a stage packs: asked for (its `packing` setting) and every check passes (`packs` of each model it
    runs, called only when asked); prints which batches it uses and, when a check failed, why."""
    ok = asked and all(check() for check in checks)
    why = "" if ok or not asked else ": a model's attention does not keep packed sequences apart"
    print(f"[{stage}] {'padding-free (packed)' if ok else 'padded'} batches{why}", flush=True)
    return ok


def pack_rollout(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> tuple[Packed, torch.Tensor, torch.Tensor]:
    """Pack rollouts laid out as (B, P + R) — prompts left-padded to P, responses right-padded to R — by their
    real tokens only; returns the packing and, as (B, R) row and column indices into it, where the outputs of
    the padded columns P - 1 ... P + R - 2 (those that predict or value the response tokens) are. Past a
    response's end the index stays on its last token (an output the caller masks)."""
    attn = attention_mask.bool().cpu()
    ids = input_ids.cpu()
    p = pack([row[keep].tolist() for row, keep in zip(ids, attn)], pad_id=0)  # the free tail's ids are never read
    prompt_tokens, real = attn[:, :prompt_len].sum(-1), attn.sum(-1)  # (B,)
    R = ids.shape[1] - prompt_len
    within = prompt_tokens[:, None] - 1 + torch.arange(R)[None]  # (B, R): the column's place in its own sequence
    within = torch.minimum(within, real[:, None] - 1)
    return p, p.row[:, None].expand(-1, R), p.start[:, None] + within
