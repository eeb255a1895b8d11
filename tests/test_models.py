"""The tiny model and tokenizer are plain HF objects: save, then load with the Auto classes."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.models.load import load_causal_lm


def test_save_load_round_trip_through_auto_classes(tiny_model, tiny_tok, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tiny_tok.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    text = "The capital of Zorvia is Quenport."
    assert tok(text)["input_ids"] == tiny_tok(text)["input_ids"]
    assert tok.pad_token_id == tiny_tok.pad_token_id != tok.eos_token_id
    msgs = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == "<|user|>Hi<|assistant|>"
    ids = torch.tensor([tiny_tok(text)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, tiny_model.eval()(input_ids=ids).logits, atol=1e-5)
    loaded, ltok = load_causal_lm(str(tmp_path), device="cpu")
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_missing_pad_token_gets_a_distinct_one(tiny_model, tiny_tok, tmp_path):
    # A model whose tokenizer has no PAD (common for base models) gets one, never PAD == EOS.
    tiny_tok.save_pretrained(tmp_path)
    tiny_model.save_pretrained(tmp_path)
    import json

    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["pad_token"] = None
    cfg_path.write_text(json.dumps(cfg))
    special = tmp_path / "special_tokens_map.json"
    if special.exists():
        sm = json.loads(special.read_text())
        sm.pop("pad_token", None)
        special.write_text(json.dumps(sm))
    model, tok = load_causal_lm(str(tmp_path), device="cpu")
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)


def test_value_head_on_the_policy_shares_the_backbone(tiny_model, tiny_tok):
    """The memory-saving critic adds hidden_size weights, no second network, and its gradient reaches
    the shared backbone."""
    from rlhfkit.models.reward import ValueHeadOnPolicy, token_scores

    critic = ValueHeadOnPolicy(tiny_model, seed=0)
    own = {id(p) for p in tiny_model.parameters()}
    extra = [p for p in critic.parameters() if id(p) not in own]
    assert sum(p.numel() for p in extra) == tiny_model.config.hidden_size
    ids = torch.tensor([[tiny_tok.pad_token_id, 5, 6, 7], [4, 5, 6, 7]])
    attn = ids != tiny_tok.pad_token_id
    values = token_scores(critic, ids, attn)
    assert values.shape == (2, 4)
    hidden = tiny_model.model(input_ids=ids, attention_mask=attn.long()).last_hidden_state
    assert torch.allclose(values[1], critic.score(hidden[1]).squeeze(-1), atol=1e-5)
    values[:, -1].sum().backward()
    assert tiny_model.get_input_embeddings().weight.grad.abs().sum() > 0
