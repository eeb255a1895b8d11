"""The lean Llama decoder against the Hugging Face forward it replaces in the generation loop."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.data.chat import pad_batch, render_prompt
from rlhfkit.models import decode
from rlhfkit.models.logprobs import position_ids_from_mask
from rlhfkit.rollout import generate
from tests.helpers import response_logits

PROMPTS = ("What is 7 + 5?", "Reverse this list: cat, dog, sun, cat, dog.", "Hi")


def _model(kind: str, tok):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if kind == "llama_gqa":  # grouped-query attention, untied head, explicit head_dim, scaled RoPE
        cfg = LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False, head_dim=16,
                          rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})
        model = LlamaForCausalLM(cfg)
    elif kind == "qwen2":  # q/k/v biases
        model = Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=4, tie_word_embeddings=True))
        for layer in model.model.layers:  # random biases, so a decoder that ignored them would differ
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    else:
        cfg = LlamaConfig(**common, num_key_value_heads=4, tie_word_embeddings=True)
        model = LlamaForCausalLM(cfg)
    for p in model.parameters():  # larger weights than the init, so logits are far from uniform
        p.data.mul_(3.0)
    return model.eval()


@pytest.mark.parametrize("kind", ["llama", "llama_gqa", "qwen2"])
def test_decoder_logits_match_the_hf_forward_with_left_padding(kind, tiny_tok):
    model = _model(kind, tiny_tok)
    assert decode.supports(model)
    prompts = [render_prompt(tiny_tok, p) for p in PROMPTS]
    ids, mask = pad_batch(prompts, tiny_tok.pad_token_id, side="left")
    follow = torch.randint(5, len(tiny_tok), (ids.shape[0], 6))
    full_ids = torch.cat([ids, follow], 1)
    full_mask = torch.cat([mask, torch.ones_like(follow, dtype=torch.bool)], 1)
    with torch.no_grad():
        ref = model(input_ids=full_ids, attention_mask=full_mask.long(),
                    position_ids=position_ids_from_mask(full_mask)).logits  # (B, P + 6, V)
        dec = decode.LlamaDecoder(model, ids.shape[0], full_ids.shape[1])
        got = [dec.prefill(ids, mask)] + [dec.step(follow[:, t]) for t in range(follow.shape[1])]
    P = ids.shape[1]
    for t, logits in enumerate(got):
        assert torch.allclose(logits, ref[:, P - 1 + t], atol=1e-4, rtol=1e-4), (kind, t)
    # the check can fail: shifting every position by one changes the logits
    with torch.no_grad():
        shifted = decode.LlamaDecoder(model, ids.shape[0], P + 1)
        wrong = shifted.prefill(torch.cat([torch.full_like(ids[:, :1], 5), ids], 1)[:, :P + 1],
                                torch.cat([torch.ones_like(mask[:, :1]), mask], 1))
    assert not torch.allclose(wrong, ref[:, P - 1], atol=1e-3)


@pytest.mark.parametrize("kind", ["llama", "llama_gqa", "qwen2"])
def test_generate_is_the_same_with_either_engine(kind, tiny_tok):
    model = _model(kind, tiny_tok)
    prompts = [render_prompt(tiny_tok, p) for p in PROMPTS]
    kw = dict(eos_id=tiny_tok.eos_token_id, pad_id=tiny_tok.pad_token_id, max_new_tokens=12)
    greedy = [generate(model, prompts, temperature=0.0, engine=e, **kw) for e in ("auto", "hf")]
    assert greedy[0].response_ids.tolist() == greedy[1].response_ids.tolist()
    assert torch.allclose(greedy[0].logprobs, greedy[1].logprobs, atol=1e-4)
    sampled = [generate(model, prompts, temperature=1.0, engine=e, generator=torch.Generator().manual_seed(3), **kw)
               for e in ("auto", "hf")]
    assert sampled[0].response_ids.tolist() == sampled[1].response_ids.tolist()
    assert sampled[0].response_mask.sum() > len(prompts)  # real multi-token samples were compared


def test_decoder_reads_the_current_weights(tiny_tok):
    """A policy trains between rollouts: the decoder must never hold a stale copy of its weights."""
    model = _model("llama", tiny_tok)
    prompts = [render_prompt(tiny_tok, p) for p in PROMPTS]
    ids, mask = pad_batch(prompts, tiny_tok.pad_token_id, side="left")
    before = decode.LlamaDecoder(model, 3, ids.shape[1] + 1).prefill(ids, mask)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(-1.0)
    after = decode.LlamaDecoder(model, 3, ids.shape[1] + 1).prefill(ids, mask)
    ref = model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask)).logits[:, -1]
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, ref, atol=1e-4)
    # q/k/v and gate/up run on weights concatenated per decoder: a change to them must reach the next generate call
    kw = dict(eos_id=tiny_tok.eos_token_id, pad_id=tiny_tok.pad_token_id, max_new_tokens=4, temperature=0.0)
    first = generate(model, prompts, **kw)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight.mul_(-2.0)
            layer.mlp.gate_proj.weight.mul_(-2.0)
    second, hf = generate(model, prompts, **kw), generate(model, prompts, engine="hf", **kw)
    assert not torch.allclose(first.logprobs, second.logprobs, atol=1e-3)
    assert torch.equal(second.response_ids, hf.response_ids)
    assert torch.allclose(second.logprobs, hf.logprobs, atol=1e-4)


def test_unsupported_models_use_the_hf_forward(tiny_tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tok), n_embd=32, n_layer=1, n_head=2, n_positions=64))
    assert not decode.supports(gpt2)
    wrapped = torch.nn.Sequential(_model("llama", tiny_tok))
    assert not decode.supports(wrapped)
    from transformers import LlamaConfig, LlamaForCausalLM

    dynamic = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tok), hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}))
    assert not decode.supports(dynamic)  # its inv_freq changes with the sequence length
    prompts = [render_prompt(tiny_tok, p) for p in PROMPTS]
    out = generate(gpt2.eval(), prompts, eos_id=tiny_tok.eos_token_id, pad_id=tiny_tok.pad_token_id,
                   max_new_tokens=4, temperature=0.0)
    assert out.response_ids.shape == (3, 4)
    with pytest.raises(ValueError, match="engine"):
        generate(gpt2, prompts, eos_id=tiny_tok.eos_token_id, pad_id=tiny_tok.pad_token_id, engine="fast")


@pytest.mark.parametrize("kind", ["llama", "llama_gqa", "qwen2"])
def test_greedy_equals_model_generate_and_sampled_logprobs_equal_a_recomputed_forward(kind, tiny_tok):
    """Issue 24's exactness bar for the lean decoder: greedy tokens are transformers' own `model.generate`'s on the
    same left-padded batch, and the logprobs of sampled tokens are those of one forward pass over the sequences."""
    from rlhfkit.ops import logprobs_from_logits

    model = _model(kind, tiny_tok)
    prompts = [render_prompt(tiny_tok, p) for p in PROMPTS]
    eos, pad = tiny_tok.eos_token_id, tiny_tok.pad_token_id
    kw = dict(eos_id=eos, pad_id=pad, max_new_tokens=12)
    ours = generate(model, prompts, temperature=0.0, **kw)
    ids, mask = pad_batch(prompts, pad, side="left")
    with torch.no_grad():
        theirs = model.generate(ids, attention_mask=mask.long(), do_sample=False, max_new_tokens=12, eos_token_id=eos,
                                pad_token_id=pad)[:, ids.shape[1]:]
    for row, m in enumerate(ours.response_mask):
        n = int(m.sum())
        assert ours.response_ids[row, :n].tolist() == theirs[row, :n].tolist(), (kind, row)
    assert ours.response_mask.sum() > len(prompts)  # multi-token responses were compared

    temperature = 0.7
    gen = generate(model, prompts, temperature=temperature, generator=torch.Generator().manual_seed(5), **kw)
    recomputed = logprobs_from_logits(response_logits(model, gen), gen.response_ids, temperature=temperature)
    m = gen.response_mask
    assert m.sum() > len(prompts)
    assert torch.allclose(recomputed[m], gen.logprobs[m], atol=1e-5), (recomputed[m] - gen.logprobs[m]).abs().max()
