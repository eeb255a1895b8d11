"""Chat rendering and SFT batches: the loss sees response tokens only."""

from __future__ import annotations

import pytest
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


def test_repeated_items_are_rendered_once_and_counted_each_time(tiny_tok, capsys, monkeypatch):
    """Preference pairs share responses: each distinct (prompt, completion) is rendered once, every copy is its own list
    (equal to a fresh rendering), and a cut repeat is counted as often as it occurs."""
    from rlhfkit.data import chat

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]  # unhashable: keyed by its JSON
    items = [("What is 7 + 5?", "12."), ("What is 7 + 5?", "13."), ("What is 7 + 5?", "12."), (conversation, "Hello."),
             (list(conversation), "Hello."), ("Hi", "cat, dog, " * 30), ("Hi", "cat, dog, " * 30)]
    calls = []
    real = chat._prompt_and_turn
    monkeypatch.setattr(chat, "_prompt_and_turn", lambda *a: calls.append(a[1:]) or real(*a))
    rows = chat.render_examples(tiny_tok, items, 40, "dpo")
    assert len(calls) == 4  # 7 items, 4 distinct
    assert rows == [render_example(tiny_tok, p, c, 40) for p, c in items]
    rows[0][0].append(-1)
    assert rows[2][0][-1] != -1  # copies, not one shared list
    assert "[dpo] warning: 2 of 7 examples are longer than max_len=40" in capsys.readouterr().out


def test_pad_differs_from_eos(tiny_tok):
    assert tiny_tok.pad_token_id != tiny_tok.eos_token_id
    assert isinstance(torch.tensor(tiny_tok.pad_token_id), torch.Tensor)


# ---------------------------------------------------------------- chat fidelity: turn ends, stops, fallback


def _word_tokenizer(template: str | None, eos: str, bos_processor: bool = False, newline: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "what is 7 plus 5 ? 12 . hi user assistant system : answer in french".split()
    special = ["<unk>", "<pad>", "<s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = special + sorted(set(words)) + ["User", "Assistant", "System"] + (["\n"] if newline else [])
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    split = ([pre_tokenizers.Split(" ", "removed"), pre_tokenizers.Split("\n", "isolated")] if newline
             else [pre_tokenizers.Whitespace()])  # with `newline`, "\n" is a token (as in BPE vocabularies)
    core.pre_tokenizer = pre_tokenizers.Sequence([*split, pre_tokenizers.Punctuation()])
    if bos_processor:  # Llama-style: the tokenizer puts BOS in front of text itself
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token=eos, bos_token="<s>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = template
    return tok


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_turns_end_with_the_templates_token_and_generation_stops_on_every_end(tmp_path, capsys):
    from rlhfkit.data.chat import end_of_turn_id, render_response, stop_ids
    from rlhfkit.models.load import load_tokenizer

    tok = _word_tokenizer(CHATML, eos="<|endoftext|>")  # a Qwen-style base: eos differs from the turn end
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(tok) == im_end != tok.eos_token_id
    assert render_response(tok, "12 .")[-1] == im_end  # trained to end the turn as the template does
    tok.save_pretrained(tmp_path / "tok")
    load_tokenizer(str(tmp_path / "tok"))
    assert "ends assistant turns with '<|im_end|>', not eos_token '<|endoftext|>'" in capsys.readouterr().out

    class Model:  # Llama-3.1 style: generation_config lists several end ids
        class generation_config:
            eos_token_id = [tok.eos_token_id, 7, im_end]

    assert stop_ids(tok, Model()) == [im_end, tok.eos_token_id, 7]
    same = _word_tokenizer(CHATML, eos="<|im_end|>")
    assert stop_ids(same) == [same.eos_token_id]
    load_tokenizer(str(tmp_path / "tok"))  # no warning when they agree
    same.save_pretrained(tmp_path / "same")
    capsys.readouterr()
    load_tokenizer(str(tmp_path / "same"))
    assert "ends assistant turns" not in capsys.readouterr().out


def test_generation_stops_at_the_first_of_several_end_ids(tiny_model, tiny_tok):
    from rlhfkit.rollout import generate

    prompts = [render_prompt(tiny_tok, "What is 7 + 5?")]
    kw = dict(pad_id=tiny_tok.pad_token_id, max_new_tokens=10, temperature=0.0)
    free = generate(tiny_model.eval(), prompts, eos_id=tiny_tok.eos_token_id, **kw)
    ids = free.response_ids[0].tolist()
    stop = ids[2]  # a token it emits (first at index ids.index(stop))
    assert tiny_tok.eos_token_id not in ids[:3]
    cut = generate(tiny_model, prompts, eos_id=[tiny_tok.eos_token_id, stop], **kw)
    n = ids.index(stop) + 1
    assert cut.response_mask[0].sum() == n and cut.response_ids[0, :n].tolist() == ids[:n]
    assert bool(cut.terminated[0])


@pytest.mark.parametrize("bos", [False, True])
def test_a_model_without_a_template_is_saved_with_the_format_it_was_trained_on(tmp_path, bos):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rlhfkit.checkpoint import save_model

    tok = _word_tokenizer(None, eos="<|endoftext|>", bos_processor=bos)
    conv = [{"role": "system", "content": "answer in french"}, {"role": "user", "content": "what is 7 plus 5 ?"}]
    ids = render_prompt(tok, conv)
    text = "System: answer in french\nUser: what is 7 plus 5 ?\nAssistant:\n"
    assert ids == ([tok.bos_token_id] if bos else []) + tok(text, add_special_tokens=False)["input_ids"]
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2))
    save_model("sft", model, tok, str(tmp_path / "model"))
    loaded = AutoTokenizer.from_pretrained(tmp_path / "model")
    again = loaded.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    assert loaded(again, add_special_tokens=False)["input_ids"] == ids  # exactly the training-time prompt


def test_an_example_is_the_templates_own_rendering_of_the_conversation():
    """ChatML writes a newline after <|im_end|>: a reward model trained on rlhfkit's rendering and scored
    through `apply_chat_template` must see the same last token (it used to read 2.21 vs -0.46)."""
    tok = _word_tokenizer(CHATML, eos="<|im_end|>", newline=True)
    conv = [{"role": "system", "content": "answer in french"}, {"role": "user", "content": "what is 7 plus 5 ?"}]
    ids, mask = render_example(tok, conv, "12 .")
    full = tok.apply_chat_template(conv + [{"role": "assistant", "content": "12 ."}], tokenize=False)
    assert ids == tok(full, add_special_tokens=False)["input_ids"]
    trained = [i for i, m in zip(ids, mask) if m]
    assert tok.convert_ids_to_tokens(trained) == ["12", ".", "<|im_end|>", "\n"]
    assert ids[: mask.index(True)] == render_prompt(tok, conv)  # the boundary is the generation prompt's end
