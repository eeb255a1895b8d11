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


@pytest.fixture()
def steerable(tmp_path, tiny_model, tiny_tok):
    """The tiny Llama with its (tied) embeddings scaled up 10x. LoRA leaves embeddings frozen, and at their
    random init (std 0.02, width 32) every logit stays within about +-0.6 whatever the adapters do: no
    policy could move far from uniform. A trained model's embeddings are far larger."""
    with torch.no_grad():
        tiny_model.get_input_embeddings().weight.mul_(10.0)
    path = tmp_path / "steerable"
    tiny_model.save_pretrained(path)
    tiny_tok.save_pretrained(path)
    return str(path)


def letter_reward(prompts, responses, terminated=None):
    """ASCII letters in the response: a signal a random tiny model (mostly byte tokens) climbs in a few steps."""
    return [float(sum(c.isascii() and c.isalpha() for c in r)) for r in responses]


def prompts_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS * 4])


def run_rl(stage: str, tmp_path, base: str, name: str, *extra: str) -> str:
    from rlhfkit.stages import STAGES

    module, config, entry = STAGES[stage][:3]
    import importlib

    mod = importlib.import_module(module)
    cfg = load_config(getattr(mod, config), overrides=[
        f"out_dir={tmp_path}/{name}", f"policy={base}", f"prompts={prompts_file(tmp_path)}", "reward=tests.test_lora:letter_reward",
        "max_new_tokens=8", "eval_every=0", "sample_every=1000", "lr=1e-2", "warmup_steps=0", "missing_eos_penalty=null",
        "lora.r=8", "lora.alpha=16", *extra])
    return getattr(mod, entry)(cfg)


def test_rloo_with_lora_raises_the_reward(tmp_path, steerable):
    """A random tiny model learns to say more letters, adapters alone moving (seeds 0-2: +3.0 to +3.4 letters
    per response from the first three iterations to the last three)."""
    run_rl("rloo", tmp_path, steerable, "rloo", "total_steps=12", "prompts_per_step=8", "k=8", "minibatch_size=32",
           "micro_batch_size=32", "ckpt_every=100")
    rows = metrics(f"{tmp_path}/rloo")
    first = sum(r["objective/scores"] for r in rows[:3]) / 3
    last = sum(r["objective/scores"] for r in rows[-3:]) / 3
    assert last > first + 1.5, (first, last)
    assert os.path.exists(f"{tmp_path}/rloo/adapter/adapter_config.json")


def test_ppo_with_lora_policy_and_critic_resumes_exactly(tmp_path, steerable, capsys):
    """PPO with adapters on the policy and on a separate critic (policy backbone + score head): a run
    resumed from its mid-run checkpoint (the adapters and head alone) logs what an uninterrupted run logs."""
    from tests.helpers import assert_same_metrics

    args = ("total_steps=4", "rollout_batch_size=8", "minibatch_size=4", "micro_batch_size=2", "ckpt_every=2")
    run_rl("ppo", tmp_path, steerable, "ppo_full", *args)
    run_rl("ppo", tmp_path, steerable, "ppo_resumed", *args)
    ckpt = f"{tmp_path}/ppo_resumed/checkpoints/step_000002"
    saved = set(os.listdir(f"{ckpt}/policy"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved and "model.safetensors" not in saved
    assert os.path.getsize(f"{ckpt}/critic/adapter_model.safetensors") < os.path.getsize(f"{steerable}/model.safetensors")
    import shutil

    shutil.rmtree(f"{tmp_path}/ppo_resumed/model")  # as if killed after the checkpoint at step 2
    run_rl("ppo", tmp_path, steerable, "ppo_resumed", *args)
    assert "[ppo] resumed from" in capsys.readouterr().out
    assert_same_metrics(metrics(f"{tmp_path}/ppo_full"), metrics(f"{tmp_path}/ppo_resumed"))


def pairs(tmp_path, n: int = 16) -> str:
    """The fixture texts as chosen, the same text with filler as rejected."""
    rows = [{"prompt": f"Say something ({i})", "chosen": TEXTS[i % 4], "rejected": TEXTS[i % 4] + " and so on and so on",
             "group": f"g{i}"} for i in range(n)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_dpo_with_lora_takes_its_reference_from_the_policy_with_adapters_off(tmp_path, base):
    from rlhfkit.data.chat import render_example
    from rlhfkit.data.loaders import load_preferences
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.models.logprobs import sequence_logprobs
    from rlhfkit.stages import dpo

    cfg = load_config(dpo.Config, overrides=[f"out_dir={tmp_path}/dpo", f"policy={base}", f"data={pairs(tmp_path)}",
                                             "epochs=2", "batch_size=8", "micro_batch_size=4", "lr=1e-2", "heldout_fraction=0.25",
                                             "warmup_steps=0", "eval_every=1", "lora.r=4"])
    dpo.train(cfg)
    cache = torch.load(f"{tmp_path}/dpo/ref_logprobs.pt")
    ref, tok = load_causal_lm(base, device="cpu")  # a separate copy of the initial policy
    rows = [render_example(tok, p.prompt, p.chosen, 256) for p in load_preferences(f"{tmp_path}/pairs.jsonl")]
    with torch.no_grad():
        separate = sequence_logprobs(ref, rows, tok.pad_token_id)
    # (to float rounding: DPO packs its batches, padding-free, and this forward does not)
    assert torch.allclose(torch.sort(cache["chosen"]).values, torch.sort(separate).values, atol=1e-5, rtol=1e-6)
    rows = [m for m in metrics(f"{tmp_path}/dpo") if "eval/rewards/margin" in m]
    assert rows[-1]["eval/rewards/margin"] > rows[0]["eval/rewards/margin"]


def test_reward_model_with_lora_trains_the_head_and_adapters_and_saves_merged(tmp_path, base):
    from rlhfkit.models.reward import load_scalar_model
    from rlhfkit.stages import rm

    cfg = load_config(rm.Config, overrides=[f"out_dir={tmp_path}/rm", f"model={base}", f"data={pairs(tmp_path)}",
                                            "epochs=3", "batch_groups=4", "lr=1e-2", "heldout_fraction=0.25",
                                            "warmup_steps=0", "eval_every=1", "evaluate=false", "lora.r=4"])
    rm.train(cfg)
    model, _ = load_scalar_model(f"{tmp_path}/rm/model")  # an ordinary sequence-classification directory
    assert not lora.is_peft(model) and model.config.rlhfkit_score_std > 0
    assert os.path.exists(f"{tmp_path}/rm/adapter/adapter_config.json")
    rows = [m for m in metrics(f"{tmp_path}/rm") if "train/margin" in m]
    assert rows[-1]["train/margin"] > rows[0]["train/margin"]
    from rlhfkit.config import ConfigError

    with pytest.raises(ConfigError, match="always saved merged"):
        load_config(rm.Config, overrides=["lora.r=4", "lora.merge=false"])


def test_rollouts_of_a_lora_policy_use_the_lean_decoder_and_match_the_peft_forward(tiny_model, tiny_tok):
    from rlhfkit.data.chat import render_prompt
    from rlhfkit.models import decode
    from rlhfkit.rollout import generate

    policy = lora.apply(tiny_model, LoraSettings(r=4)).eval()
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    assert decode.supports(lora.hf_model(policy))
    prompts = [render_prompt(tiny_tok, p) for p in PROMPTS]
    kwargs = dict(eos_id=tiny_tok.eos_token_id, pad_id=tiny_tok.pad_token_id, max_new_tokens=6, temperature=0.0)
    runs = {}
    for adapters in ("on", "off"):
        with policy.disable_adapter() if adapters == "off" else torch.no_grad():
            lean, hf = generate(policy, prompts, **kwargs), generate(policy, prompts, engine="hf", **kwargs)
        assert torch.equal(lean.response_ids, hf.response_ids), adapters
        assert torch.allclose(lean.logprobs, hf.logprobs, atol=1e-5), adapters
        runs[adapters] = lean.logprobs
    assert (runs["on"] - runs["off"]).abs().max() > 1e-2  # the adapters change what the lean decoder computes
