"""rlhfkit.models.precision: activation checkpointing changes no gradient; mixed precision computes under
autocast and keeps fp32 master weights, which move at a small learning rate where pure bf16 weights round
the updates away."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config import load_config
from rlhfkit.models import lora, precision
from rlhfkit.models.lora import LoraSettings
from tests.conftest import TEXTS
from tests.test_lora import demos

CPU = torch.device("cpu")


def grads(model, tok) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of the LM loss on the fixture texts, and how many elements the forward kept for the backward."""
    from rlhfkit.losses import lm_loss

    ids = tok(TEXTS[:4], return_tensors="pt", padding=True)["input_ids"]
    model.train()
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel()) or t, lambda t: t):
        loss, _ = lm_loss(model(input_ids=ids).logits[:, :-1], ids[:, 1:])
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, sum(kept)


@pytest.mark.parametrize("r", [0, 4])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, tiny_tok, r):
    import copy

    plain = lora.apply(tiny_model, LoraSettings(r=r))
    with torch.no_grad():  # adapters that are not zero, so their path matters to the comparison
        for n, p in plain.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    checkpointed = precision.prepare(copy.deepcopy(plain), "fp32", CPU, gradient_checkpointing=True)
    (want, kept_plain), (got, kept_checkpointed) = grads(plain, tiny_tok), grads(checkpointed, tiny_tok)
    assert kept_checkpointed < 0.7 * kept_plain  # blocks kept their inputs only: activations are recomputed
    assert want.keys() == got.keys() and len(want) > 0
    for n in want:
        assert torch.allclose(got[n], want[n], atol=1e-6, rtol=0), n


def test_mixed_precision_computes_in_bf16_on_fp32_weights(tiny_model, tiny_tok):
    model = precision.prepare(tiny_model, "bf16-mixed", CPU)
    ids = tiny_tok(TEXTS[:2], return_tensors="pt", padding=True)["input_ids"]
    assert model(input_ids=ids).logits.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert precision.resolve("auto", CPU) == "fp32" and precision.weights_dtype("bf16") == torch.bfloat16


@pytest.mark.parametrize("mode", ["bf16", "bf16-mixed"])
def test_at_a_small_learning_rate_only_fp32_master_weights_move(tmp_path, tiny_model, tiny_tok, mode):
    """Three SFT steps at lr 2e-5 (the default of DPO, PPO, RLOO and GRPO): an Adam update of ~2e-5 is below
    half a bf16 ulp of most weights (2^-9 x |w|, 4e-5 for |w| = 0.02), so pure bf16 weights mostly keep
    their value; fp32 master weights all move."""
    from transformers import AutoModelForCausalLM

    from rlhfkit.stages import sft

    base = tmp_path / "base"
    tiny_model.save_pretrained(base)
    tiny_tok.save_pretrained(base)
    cfg = load_config(sft.Config, overrides=[f"out_dir={tmp_path}/{mode}", f"model={base}", f"data={demos(tmp_path)}",
                                             "epochs=1.2", "batch_size=8", "lr=2e-5", "warmup_steps=0", "eval_every=1000",
                                             "sample_every=1000", "heldout_fraction=0.1", f"precision={mode}"])
    sft.train(cfg)
    start = AutoModelForCausalLM.from_pretrained(base).state_dict()
    end = AutoModelForCausalLM.from_pretrained(f"{tmp_path}/{mode}/model", dtype="auto").state_dict()
    assert {v.dtype for v in end.values()} == {torch.bfloat16 if mode == "bf16" else torch.float32}
    changed = sum(int((end[k].float() != start[k].to(end[k].dtype).float()).sum()) for k in start)
    share = changed / sum(v.numel() for v in start.values())
    print(f"[{mode}] share of weights changed after 3 steps at lr 2e-5: {share:.3f}")
    assert (share < 0.5) if mode == "bf16" else (share > 0.95), share


def test_fp16_loss_scaling_skips_an_overflow_without_counting_it_and_unscales_before_clipping():
    from rlhfkit.optim import NonFiniteGuard

    w = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([w], lr=0.1)
    scaler, guard = precision.Scaler("fp16-mixed", CPU), NonFiniteGuard("test", max_skips=0)  # would raise if counted
    scale = scaler.amp.get_scale()
    for factor, applied in ((1e38, False), (1.0, True)):  # x 65536 loss scale: 1e38 overflows fp32, 1 does not
        loss = (w * factor).sum()
        scaler.backward(loss)
        scaler.unscale(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_([w], 100.0)
        assert scaler.step(optimizer, guard, 0, loss=loss, grad_norm=grad_norm) is applied
        optimizer.zero_grad()
    assert guard.skipped == 0 and scaler.amp.get_scale() < scale  # the overflow lowered the scale
    assert grad_norm.item() == pytest.approx(2 ** 0.5)  # the true gradient norm: unscaled before clipping
    assert torch.allclose(w.detach(), torch.full((2,), 0.9))  # one SGD step of the unscaled gradient (1, 1)


def test_rollouts_of_a_mixed_precision_model_decode_under_its_autocast(tiny_model, tiny_tok):
    """The lean decoder calls the model's modules, not its forward: it must run under the same autocast."""
    from rlhfkit.data.chat import render_prompt
    from rlhfkit.rollout import generate

    seen = []
    tiny_model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    prompts = [render_prompt(tiny_tok, "What is 7 + 5?")]
    kwargs = dict(eos_id=tiny_tok.eos_token_id, pad_id=tiny_tok.pad_token_id, max_new_tokens=3, temperature=0.0)
    generate(tiny_model, prompts, **kwargs)
    assert set(seen) == {torch.float32}
    seen.clear()
    generate(precision.prepare(tiny_model, "bf16-mixed", CPU), prompts, **kwargs)
    assert set(seen) == {torch.bfloat16}
