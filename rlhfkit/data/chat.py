"""Chat rendering: conversations -> token ids, and batches of them -> padded tensors.

`render_prompt` gives the ids a policy is conditioned on (the chat template with
the generation prompt); `render_example` appends the completion and its end of
turn and returns `(ids, mask)` with the mask true exactly on the tokens the model
is trained to produce (nanochat's convention). Rendering the prompt through the
template and the completion as plain text keeps the prompt/response boundary
exact for any tokenizer: no search for where the template put the reply.
"""

from __future__ import annotations

import json
from typing import Sequence

from rlhfkit.data.records import Message

IGNORE_INDEX = -100  # label value that torch's cross-entropy skips


def as_messages(prompt: str | Sequence[Message] | Sequence[dict]) -> list[dict]:
    """A user string or a list of messages -> the list of dicts chat templates take."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in prompt]


# Models without a chat template are prompted in this plain dialogue format; a model trained so gets it
# saved as its `chat_template`, so `apply_chat_template` gives exactly the text it was trained on (an
# assistant turn is "Assistant:\n" + its text + EOS, as training writes the reply; the newline keeps the
# reply's first token the same whether it is tokenized alone or after the cue). BOS only where the
# tokenizer adds one itself (Llama's does, GPT-2's does not).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}Assistant:\n{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:\n{% endif %}"
)
_SENTINEL = "\u2063rlhfkit-turn\u2063"


def chat_template(tokenizer) -> str:
    """The tokenizer's chat template, or the plain-dialogue fallback (with BOS in front where the tokenizer adds it)."""
    if tokenizer.chat_template:
        return tokenizer.chat_template
    cached = getattr(tokenizer, "_rlhfkit_fallback", None)
    if cached is None:
        bos = tokenizer.bos_token_id
        adds_bos = bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
        cached = ("{{ bos_token }}" if adds_bos else "") + FALLBACK_TEMPLATE
        _memo(tokenizer, "_rlhfkit_fallback", cached)
    return cached


def _memo(tokenizer, name: str, value) -> None:
    try:
        setattr(tokenizer, name, value)
    except AttributeError:
        pass


def render_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of `prompt` rendered with the chat template, ending with the assistant cue."""
    return tokenizer(_prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def _prompt_text(tokenizer, prompt) -> str:
    return tokenizer.apply_chat_template(as_messages(prompt), chat_template=chat_template(tokenizer), tokenize=False,
                                         add_generation_prompt=True)


def render_turn(tokenizer, prompt, completion: str, head: str | None = None) -> list[int]:
    """Ids of the assistant turn that answers `prompt` with `completion`, exactly as the chat template writes
    it after the generation prompt: the text, the end-of-turn token and whatever the template puts after
    it (ChatML's newline), so a reward model scores the same last token as `apply_chat_template` gives.
    Templates that do not write the turn after their generation prompt get text + end-of-turn token.
    `head`: the prompt's rendered text, when the caller has it."""
    template, messages = chat_template(tokenizer), as_messages(prompt)
    head = _prompt_text(tokenizer, messages) if head is None else head
    try:
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                             chat_template=template, tokenize=False)
    except Exception:  # e.g. a template that only renders user-ending conversations
        full = ""
    if full.startswith(head) and full[len(head):].startswith(completion):
        ids = tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
        if end_of_turn_id(tokenizer) in ids:
            return ids
    return render_response(tokenizer, completion)


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn: the special token the chat template writes right after the
    assistant's text (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>` ...), else `eos_token`. A model whose
    template ends turns with another token than `eos_token` must learn to end them with the template's."""
    cached = getattr(tokenizer, "_rlhfkit_turn_end", None)
    if cached is not None:
        return cached
    turn_end = tokenizer.eos_token_id
    if tokenizer.chat_template:
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}],
                                                 tokenize=False)
        except Exception:  # a template that cannot render a plain exchange (e.g. needs extra variables)
            text = ""
        if _SENTINEL in text:
            after = tokenizer(text.split(_SENTINEL, 1)[1].lstrip(" "), add_special_tokens=False)["input_ids"][:1]
            if after and after[0] in set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder):
                turn_end = after[0]
    _memo(tokenizer, "_rlhfkit_turn_end", turn_end)
    return turn_end


def stop_ids(tokenizer, model=None) -> list[int]:
    """Every token that ends a response: the template's end of turn, `eos_token`, and each id of the
    model's `generation_config.eos_token_id` (an int or, as in Llama 3.1, a list)."""
    ids = [end_of_turn_id(tokenizer), tokenizer.eos_token_id]
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += extra if isinstance(extra, (list, tuple)) else [extra]
    return list(dict.fromkeys(i for i in ids if i is not None))


def render_response(tokenizer, response: str) -> list[int]:
    """Ids of a response followed by the end-of-turn token."""
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [end_of_turn_id(tokenizer)]


def render_example(tokenizer, prompt, completion: str, max_len: int | None = None) -> tuple[list[int], list[bool]]:
    """Return `(ids, mask)`; mask is True on completion tokens (EOS included). An empty `prompt` renders
    `completion` as a plain document (BOS where the tokenizer adds one, the text, EOS; no chat template).

    Over-long examples are cut from the left of the prompt so the completion
    survives; if even the completion does not fit it is truncated (and loses its EOS).
    """
    p, r, _ = _fit(*_prompt_and_turn(tokenizer, prompt, completion), max_len)
    return p + r, [False] * len(p) + [True] * len(r)


def _prompt_and_turn(tokenizer, prompt, completion: str) -> tuple[list[int], list[int]]:
    if not prompt:  # a plain-text example (SFT's `text` rows): the document and EOS, every token trained, no template
        ids = tokenizer(completion, add_special_tokens=True)["input_ids"]
        n_bos = int(bool(ids) and ids[0] == tokenizer.bos_token_id)  # BOS as the tokenizer adds it: conditioned on, not trained
        return ids[:n_bos], ids[n_bos:] + [tokenizer.eos_token_id]
    head = _prompt_text(tokenizer, prompt)  # rendered once for both parts
    return tokenizer(head, add_special_tokens=False)["input_ids"], render_turn(tokenizer, prompt, completion, head)


def _fit(p: list[int], r: list[int], max_len: int | None) -> tuple[list[int], list[int], str]:
    """Prompt and response ids cut to `max_len` in all, and what was cut: "" | "prompt" | "completion"."""
    if max_len is None or len(p) + len(r) <= max_len:
        return p, r, ""
    if len(r) >= max_len:
        return [], r[:max_len], "completion"
    return p[len(p) - (max_len - len(r)) :], r, "prompt"


def _hashable(prompt):
    """`prompt` itself when hashable (a string, a tuple of Messages), else its JSON (a list of role/content dicts)."""
    try:
        hash(prompt)
        return prompt
    except TypeError:
        return json.dumps(prompt, sort_keys=True, default=str)


def render_examples(tokenizer, items: Sequence[tuple], max_len: int | None, what: str,
                    turns: str = "last") -> list[tuple[list[int], list[bool]]]:
    """`render_example` of every `(prompt, completion)`; says once, with counts, how many were cut to `max_len`
    (a silent cut trains on a different example than the data holds). `turns="all"`: the assistant turns
    inside the prompt are trained too (`render_all_turns`). An item that repeats (preference pairs share their
    responses: a ranking of 5 makes 10 pairs) is rendered once."""
    out, cut, seen = [], {"prompt": 0, "completion": 0}, {}
    for prompt, completion in items:
        key = (_hashable(prompt), completion)
        if key in seen:
            ids, mask, where = seen[key]
            out.append((list(ids), list(mask)))
            if where:
                cut[where] += 1
            continue
        if turns == "all" and not isinstance(prompt, str) and any(_role(m) == "assistant" for m in prompt):
            ids, mask = render_all_turns(tokenizer, prompt, completion)
            where = "" if max_len is None or len(ids) <= max_len else "prompt"  # cut from the left: the last turn survives
            ids, mask = (ids[-max_len:], mask[-max_len:]) if where else (ids, mask)
        else:
            p, r, where = _fit(*_prompt_and_turn(tokenizer, prompt, completion), max_len)
            ids, mask = p + r, [False] * len(p) + [True] * len(r)
        out.append((ids, mask))
        seen[key] = ids, mask, where
        if where:
            cut[where] += 1
    if cut["prompt"] or cut["completion"]:
        print(f"[{what}] warning: {cut['prompt'] + cut['completion']} of {len(items)} examples are longer than "
              f"max_len={max_len} tokens: {cut['prompt']} lost the start of their prompt, {cut['completion']} lost "
              "the end of their completion and its end-of-turn token; raise max_len to keep them whole", flush=True)
    return out


def _role(message) -> str:
    return message["role"] if isinstance(message, dict) else message.role


def render_all_turns(tokenizer, prompt, completion: str) -> tuple[list[int], list[bool]]:
    """`(ids, mask)` of a whole conversation with the mask true on every assistant turn (its text and end of
    turn), not only the last: each turn is rendered as `render_example` renders a last turn, after the text
    the template writes before it. A template that rewrites earlier turns once later ones follow (some drop
    earlier reasoning) cannot be trained this way: a ConfigError says so."""
    messages = as_messages(prompt) + [{"role": "assistant", "content": completion}]
    ids, mask, done = [], [], ""  # `done`: the template's text of the conversation so far
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = _prompt_text(tokenizer, messages[:i])
        if not head.startswith(done):
            from rlhfkit.config import ConfigError

            raise ConfigError("assistant_turns=all: the chat template renders earlier turns differently once later turns follow; "
                             "train on the last assistant turn only (assistant_turns=last)")
        between = tokenizer(head[len(done):], add_special_tokens=False)["input_ids"]
        turn = render_turn(tokenizer, messages[:i], m["content"], head)
        ids, mask = ids + between + turn, mask + [False] * len(between) + [True] * len(turn)
        try:  # the template's own text through this turn, so the next head can be checked against it
            full = tokenizer.apply_chat_template(messages[: i + 1], chat_template=chat_template(tokenizer), tokenize=False)
        except Exception:
            full = ""
        done = full if full.startswith(head + m["content"]) else head + tokenizer.decode(turn, skip_special_tokens=False)
    return ids, mask


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right", dtype=None):
    """Pad lists of ints to a (B, T) long tensor plus a bool attention mask (B, T)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=dtype or torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, sl] = torch.as_tensor(list(r), dtype=ids.dtype)
        attn[i, sl] = True
    return ids, attn


def sft_batch(examples: Sequence[tuple[list[int], list[bool]]], pad_id: int):
    """Right-padded `(input_ids, attention_mask, labels)`; labels are IGNORE_INDEX on prompt and pad."""
    import torch

    ids, attn = pad_batch([e[0] for e in examples], pad_id)
    loss_mask, _ = pad_batch([[int(m) for m in e[1]] for e in examples], 0)
    labels = torch.where(loss_mask.bool(), ids, torch.full_like(ids, IGNORE_INDEX))
    return ids, attn, labels
