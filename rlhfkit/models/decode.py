"""A lean decoder for Llama-family models: a preallocated KV cache and one plain forward per token.

Why: every online method (PPO, RLOO, GRPO, feedback sampling, evaluation) spends most of its time in
the decode loop, and for small models that time is framework overhead, not arithmetic: a Hugging
Face forward builds a 4-D mask, grows a dynamic cache by concatenation and walks a generic module
tree on every token (~6 ms a step on a 1M-parameter model whose matmuls need well under 1 ms).
`LlamaDecoder` reads the same weights (never copies them, so a policy that trains between rollouts
decodes with its current weights) and runs the same math: RMSNorm in fp32, rotary embeddings from
the model's own `inv_freq`, grouped-query attention, SwiGLU. It checks the architecture first and
`supports(model)` is False for anything it does not reproduce exactly (other model types, biases
other than Qwen2's q/k/v biases, dynamic RoPE, sliding windows, adapters other than LoRA, FSDP-sharded weights); callers then use the
Hugging Face forward. `tests/test_decode.py` holds it to the HF logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_TYPES = {"llama": False, "qwen2": True}  # model_type -> q/k/v projections carry a bias
_STATIC_ROPE = {"default", "linear", "llama3"}  # rope types whose inv_freq is fixed after loading


def _rope_type(config) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"


def supports(model) -> bool:
    """True when `model` is a plain (unwrapped) Llama/Qwen2 causal LM this decoder reproduces exactly."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in _TYPES or type(model).__name__ not in (
            "LlamaForCausalLM", "Qwen2ForCausalLM"):
        return False
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "mlp_bias", False):
        return False
    if config.model_type == "llama" and getattr(config, "attention_bias", False):
        return False
    if getattr(config, "use_sliding_window", False) or _rope_type(config) not in _STATIC_ROPE:
        return False
    # LoRA layers (peft) compute base + B A x inside the very modules the decoder calls, adapters on or disabled
    lora_only = all(getattr(c, "peft_type", None) == "LORA" for c in (getattr(model, "peft_config", None) or {}).values())
    # FSDP shards (DTensors) are no weights to read: only the model's forward gathers them
    sharded = any(hasattr(p, "full_tensor") for p in model.parameters())
    return lora_only and not getattr(model, "_hf_hook", None) and not sharded


class LlamaDecoder:
    """Decode state for one batch: `prefill(ids, mask)` then `step(tokens)`, each returning last-token logits (B, V)."""

    def __init__(self, model, batch_size: int, max_len: int):
        cfg, inner = model.config, model.model
        self.layers, self.norm, self.embed, self.lm_head = inner.layers, inner.norm, inner.embed_tokens, model.lm_head
        self.eps = cfg.rms_norm_eps
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.inv_freq = inner.rotary_emb.inv_freq.float()  # (head_dim / 2,)
        self.rope_scale = float(getattr(inner.rotary_emb, "attention_scaling", 1.0))
        w = self.embed.weight
        shape = (batch_size, self.n_kv, max_len, self.head_dim)
        self.k = [torch.empty(shape, dtype=w.dtype, device=w.device) for _ in self.layers]
        self.v = [torch.empty(shape, dtype=w.dtype, device=w.device) for _ in self.layers]
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=w.device)  # keys that may be attended
        self.length = 0  # filled cache columns
        self.next_pos = None  # (B,) RoPE position of the next token

    def _rms(self, x, weight):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * x.to(dtype)

    def _rope(self, pos):
        """cos, sin (B, 1, T, head_dim) for positions (B, T), as HF's rotary embedding computes them."""
        freqs = pos.float()[..., None] * self.inv_freq  # (B, T, head_dim / 2)
        emb = torch.cat([freqs, freqs], -1)
        dtype = self.embed.weight.dtype
        return (emb.cos() * self.rope_scale).to(dtype)[:, None], (emb.sin() * self.rope_scale).to(dtype)[:, None]

    @staticmethod
    def _rotate(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    def _forward(self, ids, pos, mask):
        """Hidden state of the last column after running `ids` (B, T) at positions `pos` (B, T) through every
        layer, appending their keys/values at cache columns [length, length + T); `mask` (B, 1, T, L) bool."""
        B, T = ids.shape
        start, end = self.length, self.length + T
        cos, sin = self._rope(pos)
        h = self.embed(ids)  # (B, T, D)
        group = self.n_heads // self.n_kv
        for i, layer in enumerate(self.layers):
            att = layer.self_attn
            x = self._rms(h, layer.input_layernorm.weight)
            q = att.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
            k = att.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            v = att.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            self.k[i][:B, :, start:end] = k
            self.v[i][:B, :, start:end] = v
            keys, values = self.k[i][:B, :, :end], self.v[i][:B, :, :end]
            if group > 1:
                keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
            if T == 1:  # one query: two small batched matmuls beat SDPA's kernel set-up here
                scores = (q @ keys.transpose(-1, -2)) * self.head_dim ** -0.5  # (B, H, 1, L)
                o = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ values  # (B, H, 1, hd)
            else:
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.head_dim ** -0.5)
            h = h + att.o_proj(o.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
            x = self._rms(h, layer.post_attention_layernorm.weight)
            mlp = layer.mlp
            h = h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        self.length = end
        return self._rms(h[:, -1], self.norm.weight)  # (B, D)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Left-padded prompts `ids` (B, P) with `mask` (B, P) True on real tokens -> logits (B, V) of the next token."""
        B, P = ids.shape
        self.valid[:B, :P] = mask
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(P, P, dtype=torch.bool, device=ids.device).tril()
        # a padding query sees itself as well, so its row is never all-masked (softmax of nothing is NaN)
        attn = causal & (mask[:, None, None, :] | torch.eye(P, dtype=torch.bool, device=ids.device))  # (B, 1, P, P)
        self.next_pos = mask.long().sum(-1)
        return self.lm_head(self._forward(ids, pos, attn))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (B,) -> logits (B, V) of the token after it."""
        B = tokens.shape[0]
        col = self.length
        self.valid[:B, col] = True
        attn = self.valid[:B, None, None, : col + 1]  # (B, 1, 1, L)
        logits = self.lm_head(self._forward(tokens[:, None], self.next_pos[:, None], attn))
        self.next_pos = self.next_pos + 1
        return logits
