"""Training-time text is the chat template's own: for a ChatML model, a Llama-3-style model whose turn end
(<|eot_id|>) is not its EOS, and a model with no template (saved with the fallback), the ids SFT trains on
and the RM scores equal `apply_chat_template` of the saved tokenizer, and an RM scored through HF's own
template path gives rlhfkit's scores."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.data.chat import end_of_turn_id, render_example

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
KINDS = {  # template, eos, bos, whether the tokenizer adds BOS itself, the expected turn end
    "chatml": (CHATML, "<|im_end|>", None, False, "<|im_end|>"),
    "llama3": (LLAMA3, "<|end_of_text|>", "<|begin_of_text|>", False, "<|eot_id|>"),
    "none": (None, "<|end_of_text|>", "<|begin_of_text|>", True, "<|end_of_text|>"),
}
CONV = [{"role": "system", "content": "answer in french"}, {"role": "user", "content": "what is 7 plus 5 ?"},
        {"role": "assistant", "content": "12 ."}, {"role": "user", "content": "and 9 minus 4 ?"}]


def tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    template, eos, bos, adds_bos, _ = KINDS[kind]
    special = ["<unk>", "<pad>", "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>",
               "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    words = "what is 7 plus 5 ? 12 . and 9 minus 4 answer in french 5 cinq user assistant system User: Assistant: System:".split()
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(special + sorted(set(words)) + ["\n", "\n\n"])},
                                      unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", "removed"), pre_tokenizers.Split("\n\n", "isolated"),
                                                  pre_tokenizers.Split("\n", "isolated")])
    if adds_bos:
        core.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, special.index(bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token=eos, bos_token=bos,
                                  additional_special_tokens=[t for t in special[4:] if t != eos])
    tok.chat_template = template
    return tok


def saved(kind: str, tmp_path):
    """The tokenizer and a small RM as a stage saves them (checkpoint.save_model), loaded back the HF way."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from rlhfkit.checkpoint import save_model

    tok = tokenizer(kind)
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, num_labels=1, pad_token_id=tok.pad_token_id))
    for p in rm.parameters():  # larger than the init, so different replies score clearly apart
        p.data.mul_(4.0)
    save_model("rm", rm, tok, str(tmp_path / kind))
    return tok, AutoTokenizer.from_pretrained(tmp_path / kind), rm.eval()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_training_ids_are_the_saved_templates_rendering(kind, tmp_path):
    tok, hf, _ = saved(kind, tmp_path)
    assert tok.convert_ids_to_tokens(end_of_turn_id(tok)) == KINDS[kind][4]
    ids, mask = render_example(tok, CONV, "5 .")
    text = hf.apply_chat_template(CONV + [{"role": "assistant", "content": "5 ."}], tokenize=False)
    assert ids == hf(text, add_special_tokens=False)["input_ids"]
    prompt = hf.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    assert ids[: mask.index(True)] == hf(prompt, add_special_tokens=False)["input_ids"]
    trained = tok.convert_ids_to_tokens([i for i, m in zip(ids, mask) if m])
    assert trained[:2] == ["5", "."] and KINDS[kind][4] in trained  # the reply and its own turn end
    assert (tok.bos_token_id in ids[:1]) == (kind != "chatml")  # BOS as the template (or the tokenizer) puts it


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reward_scores_through_the_hf_template_path_equal_rlhfkits(kind, tmp_path):
    from rlhfkit.models.reward import reward_fn_from_model, sequence_scores

    tok, hf, rm = saved(kind, tmp_path)
    replies = ["5 .", "cinq .", "12 ."]
    ours = reward_fn_from_model(rm, tok, normalized=False)([CONV] * 3, replies)
    theirs = []
    for r in replies:
        ids = hf(hf.apply_chat_template(CONV + [{"role": "assistant", "content": r}], tokenize=False),
                 add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            theirs.append(sequence_scores(rm, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool), normalized=False))
    assert torch.allclose(ours, torch.cat(theirs), atol=1e-5), (ours, theirs)
    assert not torch.allclose(ours[:1], ours[1:2], atol=1e-3)  # the scores do depend on the reply


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_all_assistant_turns_train_on_the_templates_own_text(kind, tmp_path):
    """assistant_turns=all: the ids are the template's rendering of the whole conversation, and the mask is true
    on exactly the two assistant turns (their text and turn end); `last` marks only the final one."""
    from rlhfkit.data.chat import render_examples

    _, tok, _ = saved(kind, tmp_path)
    full = CONV + [{"role": "assistant", "content": "5 ."}]
    want = tok.apply_chat_template(full, tokenize=True, return_dict=False)
    (ids, mask), = render_examples(tok, [(CONV, "5 .")], None, "sft", "all")
    assert ids == list(want)
    turn_end = tok.convert_ids_to_tokens(end_of_turn_id(tok))
    runs, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    assert [tok.convert_ids_to_tokens(r)[:3] for r in runs] == [["12", ".", turn_end], ["5", ".", turn_end]]
    (_, last_mask), = render_examples(tok, [(CONV, "5 .")], None, "sft", "last")
    assert sum(last_mask) == len(runs[1]) and last_mask[-len(runs[1]):] == [True] * len(runs[1])


def test_a_template_that_rewrites_earlier_turns_refuses_all_turns():
    """A template that drops earlier assistant turns' text once the conversation goes on (as some reasoning
    models' do) cannot give every turn its training-time text: a config error, not a silently different text."""
    from rlhfkit.config import ConfigError
    from rlhfkit.data.chat import render_examples

    tok = tokenizer("chatml")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and not loop.last %}"
                         "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ConfigError, match="assistant_turns=all"):
        render_examples(tok, [(CONV, "5 .")], None, "sft", "all")
    assert render_examples(tok, [(CONV, "5 .")], None, "sft", "last")  # the last turn alone is still exact
