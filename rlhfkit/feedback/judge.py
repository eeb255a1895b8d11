"""The AI judge (RLAIF): any local causal LM gives preference labels as probabilities.

Lee et al. (2023), "RLAIF", and Bai et al. (2022), "Constitutional AI" (sec. 4):
the judge is shown a conversation, a question from the constitution and two
responses as options (A) and (B); the label is read from the next-token
distribution after a forced opening ("The better response is ("), not parsed from
generated text:

    P(A) = p(label_A) / (p(label_A) + p(label_B)) = sigmoid(logit_A - logit_B)

renormalised over the two answer tokens (for a label of several tokens, its first
token; the two first tokens must differ). Position-swap debiasing (Lee et al.
sec. 3.1.2; Zheng et al. 2023): each pair is judged in both orders and

    P(a > b) = (P(A | a, b) + 1 - P(A | b, a)) / 2;

a pair is position-consistent when both orders pick the same response (the rate
is reported). With `cot`, the judge first writes a short rationale (greedy) after
the `compare_cot` question, then `cot_verdict` is appended and the label read
(Lee et al.'s two-step chain of thought). `rate` asks one answer's `rating`
question and returns P(yes): the judge as a reward without a reward model.
Forward passes are batched (left padding, position ids from the mask), only the
last position's logits are computed.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.chat import pad_batch, render_prompt, stop_ids
from rlhfkit.data.records import Prompt
from rlhfkit.feedback.constitution import Constitution
from rlhfkit.models.logprobs import position_ids_from_mask
from rlhfkit.rollout import generate_batched


def transcript(prompt: Prompt) -> str:
    """A prompt as the text the judge reads: the user string, or every turn of a conversation as `Role: text`."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.role.capitalize()}: {m.content}" for m in prompt)


def label_ids(tok, opening: str, labels: Sequence[str], where: str = "labels") -> tuple[int, int]:
    """The token ids of each label as the token that follows `opening` (tokenized together, so a tokenizer
    that writes " A" after a space or "A" after "(" gives the right one). ConfigError if a label merges
    with the opening or the two labels start with the same token."""
    head = tok(opening, add_special_tokens=False)["input_ids"] if opening else []
    out = []
    for label in labels:
        ids = tok(opening + label, add_special_tokens=False)["input_ids"]
        if ids[: len(head)] != head or len(ids) == len(head):
            raise ConfigError(f"{where}: the label {label!r} merges with the opening {opening!r} in this tokenizer; "
                              "change the template's opening or the labels")
        out.append(ids[len(head)])
    if out[0] == out[1]:
        raise ConfigError(f"{where}: labels {labels[0]!r} and {labels[1]!r} start with the same token in this tokenizer")
    return out[0], out[1]


@torch.no_grad()
def verdict_probs(model, heads: Sequence[Sequence[int]], ids: tuple[int, int], pad_id: int,
                  batch_size: int = 16) -> torch.Tensor:
    """P(first label) after each head (token ids), renormalised over the two labels: (N,) float64.

    Heads are bucketed by length (less padding) and left-padded; results come back in input order.
    """
    device = next(model.parameters()).device
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    order = sorted(range(len(heads)), key=lambda i: len(heads[i]))
    out = torch.empty(len(heads), dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        input_ids, attn = pad_batch([heads[i] for i in idx], pad_id, side="left")
        input_ids, attn = input_ids.to(device), attn.to(device)
        logits = model(input_ids=input_ids, attention_mask=attn.long(), position_ids=position_ids_from_mask(attn),
                       **keep).logits[:, -1].double()  # (b, V): every row's last real token is in the last column
        out[idx] = torch.sigmoid(logits[:, ids[0]] - logits[:, ids[1]]).cpu()  # (b,)
    return out


def swap_debias(p_first: torch.Tensor, p_swapped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(P(a > b), consistent)` from P(A) with a shown first and P(A) with b shown first, (N,) each.

    consistent: both orders pick the same response (an order with P = 0.5 exactly picks none)."""
    p_a_second = 1.0 - p_swapped  # P(a better) in the swapped order, where a is option B
    pick = lambda p: torch.sign(p - 0.5)  # noqa: E731  +1: a, -1: b, 0: no pick
    return (p_first + p_a_second) / 2, (pick(p_first) == pick(p_a_second)) & (pick(p_first) != 0)


class Judge:
    """A causal LM that judges under a constitution.

    `compare(prompts, a, b, questions)` -> P(a better than b) per pair (swap-debiased by default);
    `rate(prompts, responses)` -> P(yes) of the constitution's `rating` question per response.
    """

    def __init__(self, model, tok, constitution: Constitution, batch_size: int = 16, cot: bool = False,
                 cot_tokens: int = 64):
        self.model, self.tok, self.c = model.eval(), tok, constitution
        self.batch_size, self.cot, self.cot_tokens = batch_size, cot, cot_tokens
        where = f"{constitution.path}: labels"
        self.pair_ids = label_ids(tok, constitution.templates["cot_verdict" if cot else "verdict"], constitution.labels, where)
        self.yes_ids = None  # the yes/no tokens, looked up on the first `rate`

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def order(self, prompts: Sequence[Prompt], firsts: Sequence[str], seconds: Sequence[str],
              questions: Sequence[str]) -> tuple[torch.Tensor, list[str] | None]:
        """P(A) for each comparison shown in this order (first as A), and the rationales when `cot`."""
        template = "compare_cot" if self.cot else "compare"
        heads = [render_prompt(self.tok, self.c.fill(template, prompt=transcript(p), principle=q, a=a, b=b))
                 for p, a, b, q in zip(prompts, firsts, seconds, questions)]
        rationales = None
        if self.cot:  # 1. the judge's reasoning, greedy; 2. the verdict opening after it
            outs = generate_batched(self.model, heads, batch_size=self.batch_size, eos_id=stop_ids(self.tok, self.model),
                                    pad_id=self.tok.pad_token_id, max_new_tokens=self.cot_tokens, temperature=0.0)
            rationales = [self.tok.decode(ids, skip_special_tokens=True) for ids, _, _ in outs]
            heads = [h + ids + self._encode(self.c.templates["cot_verdict"]) for h, (ids, _, _) in zip(heads, outs)]
        else:
            heads = [h + self._encode(self.c.templates["verdict"]) for h in heads]
        return verdict_probs(self.model, heads, self.pair_ids, self.tok.pad_token_id, self.batch_size), rationales

    def compare(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str], questions: Sequence[str],
                swap: bool = True) -> dict:
        """Judge each (prompt, a, b) under its question. Returns `p` (N,) P(a better than b), `p_orders` (N, 2)
        P(a better) as judged in each order, `consistent` (N,) bool (None without `swap`), `rationales`
        (per pair, one per order; None without `cot`)."""
        p1, r1 = self.order(prompts, a, b, questions)
        if not swap:
            return {"p": p1, "p_orders": p1[:, None], "consistent": None, "rationales": r1 and [[r] for r in r1]}
        p2, r2 = self.order(prompts, b, a, questions)
        p, consistent = swap_debias(p1, p2)
        return {"p": p, "p_orders": torch.stack([p1, 1.0 - p2], 1), "consistent": consistent,
                "rationales": r1 and [list(x) for x in zip(r1, r2)]}

    def rate(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """P(yes) of the `rating` question about each response alone: (N,) float64."""
        self.yes_ids = self.yes_ids or label_ids(self.tok, "", self.c.yes_no, f"{self.c.path}: yes_no")
        heads = [render_prompt(self.tok, self.c.fill("rate", prompt=transcript(p), response=r, question=self.c.rating))
                 for p, r in zip(prompts, responses)]
        return verdict_probs(self.model, heads, self.yes_ids, self.tok.pad_token_id, self.batch_size)


JUDGE_ARGS = ("judge_constitution", "judge_reference", "judge_batch_size")


def judge_reward(path: str, device, args: dict | None = None):
    """A reward `fn(prompts, responses, terminated=None, **columns) -> (B,)` in [0, 1] from the judge at `path`.

    Without `judge_reference`: P(yes) of the constitution's `rating` question (one forward per response).
    With `judge_reference=<column>`: P(response better than that dataset column's reference answer) under
    the `overall` question, swap-debiased (two forwards per response). `reward_args`: judge_constitution
    (a YAML path), judge_reference, judge_batch_size.
    """
    from rlhfkit.feedback.constitution import load_constitution
    from rlhfkit.models.load import load_causal_lm

    args = {k: v for k, v in (args or {}).items() if k.startswith("judge_")}
    if unknown := sorted(set(args) - set(JUDGE_ARGS)):
        raise ConfigError(f"reward judge:{path}: unknown reward_args {unknown[0]!r} (known: {', '.join(JUDGE_ARGS)})")
    model, tok = load_causal_lm(path, device=str(device))
    model.requires_grad_(False)
    judge = Judge(model, tok, load_constitution(args.get("judge_constitution")), int(args.get("judge_batch_size", 16)))
    column = args.get("judge_reference")

    def fn(prompts, responses, terminated=None, **columns) -> torch.Tensor:
        if column is None:
            return judge.rate(list(prompts), list(responses)).float()
        if column not in columns:
            raise ValueError(f"reward judge:{path}: the prompts have no column {column!r} (judge_reference)")
        refs = [str(x) for x in columns[column]]
        return judge.compare(list(prompts), list(responses), refs, [judge.c.overall] * len(refs))["p"].float()

    return fn
