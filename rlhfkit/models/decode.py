"""A lean decoder for Llama-family models: a preallocated KV cache and a short list of kernels per token.

Why: every online method (PPO, RLOO, GRPO, feedback sampling, evaluation) spends much of its time in
the decode loop, and for small models that time is framework overhead, not arithmetic: a Hugging
Face forward builds a 4-D mask, grows a dynamic cache by concatenation and walks a generic module
tree on every token (~6 ms a step on a 1M-parameter model whose matmuls need well under 1 ms).
`LlamaDecoder` runs the same math on the same weights: RMSNorm in fp32, rotary embeddings from the
model's own `inv_freq`, grouped-query attention, SwiGLU. Where a projection is a plain `nn.Linear`
it concatenates q/k/v and gate/up weights into one matmul each; the copy is made per decoder, i.e.
per `generate` call, so a policy that trains between rollouts always decodes with its current
weights (LoRA layers and hooked modules are called as modules instead). Measured (docs/results.md,
"Generation"): per decode step, the matmuls are under half of the time at batch 8; the rest is one
dispatch per small op, which is why the step is written as few ops as possible. `torch.compile` of
the step took 72 s to compile and ran slower than eager on CPU, so it is not used.
The decoder checks the architecture first and `supports(model)` is False for anything it does not
reproduce (other model types, biases other than Qwen2's q/k/v biases, dynamic RoPE, sliding windows,
adapters other than LoRA, FSDP-sharded weights); callers then use the Hugging Face forward.
`tests/test_decode.py` holds it to the HF logits, to `model.generate`'s greedy tokens and to
recomputed logprobs of sampled tokens.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

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


def _plain(*mods) -> bool:
    return all(type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks) for m in mods)


def _project(*mods):
    """x (N, in) -> the modules' outputs concatenated on the last dim. Plain `nn.Linear` modules (no hooks) run as
    one matmul: their weights are concatenated here, once per decoder, i.e. per `generate` call, so a policy that
    trained since the last call decodes with its new weights; anything else (peft's LoRA layers, a hooked module) is
    called as a module, one call each."""
    if not _plain(*mods):
        return mods[0] if len(mods) == 1 else (lambda x: torch.cat([m(x) for m in mods], -1))
    w = mods[0].weight.detach() if len(mods) == 1 else torch.cat([m.weight.detach() for m in mods])
    b = None
    if any(m.bias is not None for m in mods):
        b = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features) for m in mods])
    return functools.partial(F.linear, weight=w, bias=b)


def _add_projection(mod, fuse: bool):
    """(h, x) -> h + mod(x): one `addmm` for a plain bias-free `nn.Linear` when `fuse` (off under autocast, where
    addmm would run the residual add in bf16), else the module call and an add."""
    if fuse and _plain(mod) and mod.bias is None:
        wt = mod.weight.detach().t()  # (in, out)
        return lambda h, x: torch.addmm(h, x, wt)
    return lambda h, x: h + mod(x)


class LlamaDecoder:
    """Decode state for one batch: `prefill(ids, mask)` then `step(tokens)`, each returning last-token logits (B, V).

    A decode step is a short list of kernels per layer: RMSNorm, one q/k/v matmul, RoPE on q and k together
    (tables made once), two cache writes, scale * q k^T plus the padding mask in one `baddbmm` (grouped-query heads
    as a view of q, keys never repeated), softmax, the value matmul, the o-projection and residual add in one `addmm`,
    RMSNorm, one gate/up matmul, SiLU times up, and the down projection and residual add in one `addmm`.
    """

    def __init__(self, model, batch_size: int, max_len: int):
        cfg, inner = model.config, model.model
        self.model, self.eps = model, cfg.rms_norm_eps
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.embed, self.norm = inner.embed_tokens, inner.norm.weight
        w = self.embed.weight
        # RoPE for every position this batch can reach, as HF's rotary embedding computes it; rotate_half(x) * sin
        # (rotate_half = cat(-x2, x1)) is computed as roll(x) * cat(-sin1, sin2): the same products, sign-flipped
        freqs = torch.arange(max_len, device=w.device, dtype=torch.float32)[:, None] * inner.rotary_emb.inv_freq.float()
        emb = torch.cat([freqs, freqs], -1)  # (L, head_dim)
        scale = float(getattr(inner.rotary_emb, "attention_scaling", 1.0))
        half = self.head_dim // 2
        sin = emb.sin() * scale
        self.rope = torch.stack([emb.cos() * scale, torch.cat([-sin[:, :half], sin[:, half:]], -1)], 1).to(w.dtype)  # (L, 2, hd)
        self.B, self.L = batch_size, max_len
        shape = (len(inner.layers), batch_size, self.n_kv, max_len, self.head_dim)  # (layers, B, KV, L, hd)
        self.k = torch.empty(shape, dtype=w.dtype, device=w.device)
        self.v = torch.empty(shape, dtype=w.dtype, device=w.device)
        self.bias = torch.zeros(batch_size * self.n_kv, 1, max_len, dtype=w.dtype, device=w.device)  # -inf on padding
        self.length = 0  # filled cache columns
        self.next_pos = None  # (B,) RoPE position of the next token
        # fp32: one `rms_norm` call, the same numbers as HF's formula (`_rms`)
        self.rms = functools.partial(torch.rms_norm, normalized_shape=(cfg.hidden_size,), eps=self.eps) \
            if w.dtype == torch.float32 else self._rms

    def _build(self, fuse: bool):
        """Per layer: (norm 1, q/k/v projection, o-projection + residual, norm 2, gate/up projection, down-projection +
        residual), and the LM head; built in `prefill`, under the autocast (or not) the steps run in."""
        model = self.model
        self.lm_head = _project(model.lm_head)
        self.layers = [(layer.input_layernorm.weight, _project(layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                                layer.self_attn.v_proj),
                        _add_projection(layer.self_attn.o_proj, fuse), layer.post_attention_layernorm.weight,
                        _project(layer.mlp.gate_proj, layer.mlp.up_proj), _add_projection(layer.mlp.down_proj, fuse))
                       for layer in model.model.layers]

    def _rms(self, x, weight):
        """HF's LlamaRMSNorm, op for op."""
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * x.to(dtype)

    def _forward(self, ids, pos, mask):
        """Final-norm hidden state (B, D) of the last column after running `ids` (B, T) at positions `pos` (B, T)
        through every layer, appending their keys/values at cache columns [length, length + T); `mask` (B, 1, T, L)
        bool for T > 1 (prefill), unused for T == 1 (the additive `self.bias`)."""
        B, T = ids.shape
        H, KV, hd = self.n_heads, self.n_kv, self.head_dim
        start, end = self.length, self.length + T
        rope = self.rope[pos.reshape(-1)]  # (N, 2, hd), N = B * T rows
        cos, sin = rope[:, :1], rope[:, 1:]
        h = self.embed(ids.reshape(-1))  # (N, D)
        if T == 1:  # this step's views of every layer's cache, (B KV, hd, L) and (B KV, L, hd), and of the mask
            keys_t = self.k.view(-1, B * KV, self.L, hd)[:, :, :end].transpose(-1, -2).unbind(0)
            values = self.v.view(-1, B * KV, self.L, hd)[:, :, :end].unbind(0)
            bias = self.bias[:, :, :end]  # (B KV, 1, L)
        for i, (norm1, qkv_proj, o_proj, norm2, gate_up, down) in enumerate(self.layers):
            qkv = qkv_proj(self.rms(h, weight=norm1)).view(-1, H + 2 * KV, hd)  # (N, H + 2 KV, hd)
            qk = qkv[:, : H + KV]
            qk = (qk * cos).add_(qk.roll(hd // 2, -1).mul_(sin))  # (N, H + KV, hd): HF's q * cos + rotate_half(q) * sin
            if T == 1:  # decode: q's heads grouped under their key/value head, (B KV, H / KV, hd)
                self.k[i, :, :, start] = qk[:, H:]
                self.v[i, :, :, start] = qkv[:, H + KV :]
                # scale * q k^T + the padding mask in one kernel (no key is masked beyond the prompt's padding)
                scores = torch.baddbmm(bias, qk[:, :H].reshape(B * KV, H // KV, hd), keys_t[i], alpha=hd ** -0.5)
                o = torch.bmm(scores.softmax(-1), values[i]).view(B, H * hd)  # (B KV, H / KV, hd) -> (B, H hd)
            else:
                self.k[i, :, :, start:end] = qk[:, H:].view(B, T, KV, hd).transpose(1, 2)
                self.v[i, :, :, start:end] = qkv[:, H + KV :].view(B, T, KV, hd).transpose(1, 2)
                keys, values_i = self.k[i, :, :, :end], self.v[i, :, :, :end]  # (B, KV, L, hd)
                if H > KV:
                    keys, values_i = keys.repeat_interleave(H // KV, 1), values_i.repeat_interleave(H // KV, 1)
                q = qk[:, :H].view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
                o = F.scaled_dot_product_attention(q, keys, values_i, attn_mask=mask, scale=hd ** -0.5)
                o = o.transpose(1, 2).reshape(B * T, H * hd)
            h = o_proj(h, o)
            gu = gate_up(self.rms(h, weight=norm2))  # (N, 2 I)
            inter = gu.shape[-1] // 2
            h = down(h, F.silu(gu[:, :inter]).mul_(gu[:, inter:]))
        self.length = end
        return self.rms(h.view(B, T, -1)[:, -1], weight=self.norm)  # (B, D)

    # inference mode: no autograd bookkeeping (version counters, view tracking) on the ~100 small ops of a step;
    # the returned logits are inference tensors, fine for sampling (not to be saved for a backward pass)
    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Left-padded prompts `ids` (B, P) with `mask` (B, P) True on real tokens -> logits (B, V) of the next token."""
        B, P = ids.shape
        assert B == self.B, f"the decoder was made for {self.B} rows, got {B}"
        self._build(fuse=not torch.is_autocast_enabled(ids.device.type))
        self.bias[:, 0, :P].masked_fill_(~mask.repeat_interleave(self.n_kv, 0), float("-inf"))
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(P, P, dtype=torch.bool, device=ids.device).tril()
        # a padding query sees itself as well, so its row is never all-masked (softmax of nothing is NaN)
        attn = causal & (mask[:, None, None, :] | torch.eye(P, dtype=torch.bool, device=ids.device))  # (B, 1, P, P)
        self.next_pos = mask.long().sum(-1)
        return self.lm_head(self._forward(ids, pos, attn))

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (B,) -> logits (B, V) of the token after it."""
        logits = self.lm_head(self._forward(tokens[:, None], self.next_pos, None))
        self.next_pos += 1
        return logits
