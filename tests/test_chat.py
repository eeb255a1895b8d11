"""Chat rendering and SFT batches: the loss sees response tokens only."""

from __future__ import annotations

import torch

from rlhfkit.data.chat import IGNORE_INDEX, render_example, render_prompt, sft_batch


def test_render_prompt_uses_chat_template(tiny_tok):
    ids = render_prompt(tiny_tok, "What is 7 + 5?")
    text = tiny_tok.decode(ids)
    assert text == "<|user|>What is 7 + 5?<|assistant|>"


def test_sft_labels_mask_prompt_and_padding(tiny_tok):
    short = render_example(tiny_tok, "What is 7 + 5?", "7 + 5 = 12.")
    long = render_example(tiny_tok, "Reverse this list: cat, dog, sun.", "sun, dog, cat.")
    ids, attn, labels = sft_batch([short, long], tiny_tok.pad_token_id)
    n_prompt = len(render_prompt(tiny_tok, "What is 7 + 5?"))
    # Row 0: prompt tokens and right padding are ignored; response tokens are their own ids.
    assert (labels[0, :n_prompt] == IGNORE_INDEX).all()
    n_real = len(short[0])
    assert (labels[0, n_prompt:n_real] == ids[0, n_prompt:n_real]).all()
    assert (labels[0, n_real:] == IGNORE_INDEX).all()
    assert (ids[0, n_real:] == tiny_tok.pad_token_id).all()
    assert not attn[0, n_real:].any()
    # Every pad position and every prompt position is ignored, in every row.
    assert (labels[ids == tiny_tok.pad_token_id] == IGNORE_INDEX).all()
    # The supervised tokens decode to exactly the response plus the end-of-turn EOS.
    target = labels[0][labels[0] != IGNORE_INDEX]
    assert tiny_tok.decode(target) == "7 + 5 = 12.<|eos|>"
    assert target[-1].item() == tiny_tok.eos_token_id


def test_overlong_example_keeps_the_response(tiny_tok):
    ids, mask = render_example(tiny_tok, "What is 7 + 5? " * 20, "7 + 5 = 12.", max_len=16)
    assert len(ids) == 16
    response = [i for i, m in zip(ids, mask) if m]
    assert tiny_tok.decode(response) == "7 + 5 = 12.<|eos|>"


def test_cut_examples_are_counted_aloud(tiny_tok, capsys):
    from rlhfkit.data.chat import render_examples

    items = [("What is 7 + 5?", "7 + 5 = 12."), ("What is 7 + 5? " * 20, "7 + 5 = 12."), ("Hi", "cat, dog, " * 30)]
    n = len(render_example(tiny_tok, *items[0])[0])  # the first fits exactly
    rows = render_examples(tiny_tok, items, n, "sft")
    assert rows == [render_example(tiny_tok, p, c, n) for p, c in items]
    assert len(rows[2][0]) == n and rows[2][0][-1] != tiny_tok.eos_token_id  # the long completion lost its EOS
    out = capsys.readouterr().out
    assert f"[sft] warning: 2 of 3 examples are longer than max_len={n}" in out
    assert "1 lost the start of their prompt, 1 lost the end of their completion" in out
    render_examples(tiny_tok, items[:1], n, "sft")
    assert capsys.readouterr().out == ""  # nothing cut, nothing said


def test_pad_differs_from_eos(tiny_tok):
    assert tiny_tok.pad_token_id != tiny_tok.eos_token_id
    assert isinstance(torch.tensor(tiny_tok.pad_token_id), torch.Tensor)
