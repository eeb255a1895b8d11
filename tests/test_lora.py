"""LoRA (peft) in the stages: adapters alone train, the reference is the policy with its adapters disabled,
the saved adapter and merged model load with the HF / peft APIs and agree, and RL with LoRA learns.
Tiny models built in the test (no pretraining run), stages run in-process."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rlhfkit.config import load_config
from rlhfkit.models import lora
from rlhfkit.models.lora import LoraSettings
from tests.conftest import TEXTS
from tests.helpers import metrics

PROMPTS = ["What is 7 + 5?", "Reverse this list: cat, dog, sun.", "The capital of Zorvia is", "What is 9 - 4?"]


@pytest.fixture()
def base(tmp_path, tiny_model, tiny_tok):
    """The tiny Llama and its tokenizer saved as an ordinary HF model directory."""
    path = tmp_path / "base"
    tiny_model.save_pretrained(path)
    tiny_tok.save_pretrained(path)
    return str(path)


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def demos(tmp_path, n: int = 24) -> str:
    """Demonstrations cut from the fixture texts: prompt = first half, completion = second half."""
    rows = []
    for i in range(n):
        words = TEXTS[i % 4].split()
        rows.append({"prompt": " ".join(words[: len(words) // 2]) + f" ({i})", "completion": " ".join(words[len(words) // 2 :])})
    return write_jsonl(tmp_path / "sft.jsonl", rows)


def run_sft(tmp_path, base: str, name: str, *extra: str) -> str:
    from rlhfkit.stages import sft

    cfg = load_config(sft.Config, overrides=[f"out_dir={tmp_path}/{name}", f"model={base}", f"data={demos(tmp_path)}",
                                             "epochs=1", "batch_size=8", "lr=1e-2", "warmup_steps=0", "eval_every=1000",
                                             "sample_every=1000", "heldout_fraction=0.2", *extra])
    return sft.train(cfg)


def logprobs(model, tok, prompts=PROMPTS, response="The flag of Zorvia is green."):
    """Summed response logprobs (N,) of one fixed response to each prompt."""
    from rlhfkit.data.chat import render_example
    from rlhfkit.models.logprobs import sequence_logprobs

    with torch.no_grad():
        return sequence_logprobs(model, [render_example(tok, p, response) for p in prompts], tok.pad_token_id)


def lm_steps(model, tok, steps: int = 3, lr: float = 1e-2):
    """A few AdamW steps of next-token loss on the fixture texts."""
    from rlhfkit.losses import lm_loss
    from rlhfkit.optim import adamw

    ids = tok(TEXTS[:4], return_tensors="pt", padding=True)["input_ids"]
    optimizer = adamw(model, lr)
    for _ in range(steps):
        loss, _ = lm_loss(model(input_ids=ids).logits[:, :-1], ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_only_adapters_train_and_the_base_weights_stay_bit_identical(tiny_model, tiny_tok):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    model = lora.apply(tiny_model, LoraSettings(r=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    lm_steps(model, tiny_tok)
    after = {k.replace("base_layer.", ""): v for k, v in lora.hf_model(model).state_dict().items() if "lora_" not in k}
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = [p for n, p in model.named_parameters() if "lora_B" in n]  # lora_B starts at 0
    assert all(p.abs().max() > 0 for p in moved)


def test_the_reference_is_the_policy_with_adapters_disabled(base, tiny_tok):
    from rlhfkit.models.load import load_causal_lm

    policy, tok = load_causal_lm(base, device="cpu")
    policy = lora.apply(policy, LoraSettings(r=4))
    lm_steps(policy, tok)
    ref = lora.reference(policy, lambda: pytest.fail("with adapters, the reference must not load a second copy"))
    plain = load_causal_lm(base, device="cpu")[0]
    copy = lora.reference(plain, lambda: load_causal_lm(base, device="cpu")[0])  # no adapters: a second, frozen model
    assert copy is not plain
    shared, separate, trained = logprobs(ref, tok), logprobs(copy, tok), logprobs(policy, tok)
    assert torch.allclose(shared, separate, atol=1e-6, rtol=0)
    assert (trained - separate).abs().max() > 1e-2  # the adapters are on in the policy itself
    assert not any(p.requires_grad for p in copy.parameters())
    assert any(p.requires_grad for p in policy.parameters())  # the reference did not freeze the policy's adapters


@pytest.mark.parametrize("merge", [True, False])
def test_sft_with_lora_saves_an_adapter_and_a_merged_model_that_agree(tmp_path, base, merge):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhfkit.models.load import load_causal_lm

    out = run_sft(tmp_path, base, "sft_lora", "lora.r=4", "lora.alpha=8", f"lora.merge={str(merge).lower()}")
    tok = load_causal_lm(base, device="cpu")[1]
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), f"{tmp_path}/sft_lora/adapter").eval()
    assert os.path.exists(f"{out}/adapter_config.json") != merge
    model = AutoModelForCausalLM.from_pretrained(out).eval() if merge else load_causal_lm(out, device="cpu")[0]
    assert not lora.is_peft(model)
    got, want = logprobs(model, tok), logprobs(adapter, tok)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got, want)
    assert (want - logprobs(AutoModelForCausalLM.from_pretrained(base), tok)).abs().max() > 1e-2  # training moved it
    assert metrics(f"{tmp_path}/sft_lora")[-1]["eval/loss"] < metrics(f"{tmp_path}/sft_lora")[0]["eval/loss"]
