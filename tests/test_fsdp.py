"""FSDP2 is invisible too: `--parallel=fsdp` under torchrun (2 gloo ranks on CPU) trains what 1 process trains.

The model is sharded from outside (rlhfkit.distributed.shard_model: each decoder block, then the root; a reward
model's backbone and head as their own units); FSDP averages gradients like DDP, so the stages' world_size
scaling stays. Rank 0 alone writes, after every rank joined gathering the full weights and optimiser state.
"""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config import ConfigError, parse_cli
from tests.helpers import assert_only_rank_zero_wrote, assert_same_metrics, kill_at_first_checkpoint, metrics, rlhfkit
from tests.test_distributed import SAME_EVERY_STEP, state_dict, torchrun

# SFT: full weights, a checkpoint and samples (greedy decoding on every rank) mid-run; DPO: LoRA adapters (the
# reference = the sharded policy's base, merged export); RM: the scalar model (backbone and head sharded apart).
ARGS = {
    "sft": ("--epochs=0.5", "--batch_size=16", "--lr=3e-3", "--sample_every=3", "--ckpt_every=3"),  # 7 steps
    "dpo": ("--epochs=2", "--batch_size=8", "--micro_batch_size=2", "--lr=3e-3", "--lora.r=4", "--ckpt_every=5"),
    "rm": ("--epochs=1", "--batch_groups=4", "--lr=1e-3", "--pair_weight=ranking", "--evaluate=false", "--ckpt_every=5"),
}
COMMON = ("--warmup_steps=0", "--eval_every=2")


def stage_args(stage: str, runs) -> tuple[str, ...]:
    world = runs / "world"
    return {"sft": (f"--model={runs}/pretrain/model", f"--data={world}/sft.jsonl"),
            "dpo": (f"--policy={runs}/sft/model", f"--data={world}/pairs.jsonl"),
            "rm": (f"--model={runs}/sft/model", f"--data={world}/pairs.jsonl")}[stage] + ARGS[stage] + COMMON


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_runs):
    """Each stage with 1 process (plain) and with 2 FSDP ranks: `<root>/<stage>/{1,2}`, and the 2-rank stdouts."""
    root = tmp_path_factory.mktemp("fsdp")
    out = {}
    for stage in ARGS:
        rlhfkit(stage, f"--out_dir={root}/{stage}/1", *stage_args(stage, tiny_runs))
        out[stage] = rlhfkit(stage, f"--out_dir={root}/{stage}/2", "--parallel=fsdp", *stage_args(stage, tiny_runs),
                             launcher=torchrun(2)).stdout
    return root, out


@pytest.mark.parametrize("stage", ARGS)
def test_fsdp_takes_the_steps_of_one_process(runs, tiny_runs, stage):
    root, _ = runs
    one, two = metrics(f"{root}/{stage}/1"), metrics(f"{root}/{stage}/2")
    assert [r["step"] for r in two] == [r["step"] for r in one] and len(one) >= 5
    for a, b in zip(one, two):
        for key in SAME_EVERY_STEP + ("eval/accuracy", "eval/rewards/accuracy", "dpo/loss", "train/margin"):
            assert (key in a) == (key in b), (a["step"], key)
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=2e-6), (a["step"], key)
    if stage == "rm":  # a reward model is saved as a sequence classifier: its config carries the score offset
        from transformers import AutoModelForSequenceClassification

        load = lambda p: AutoModelForSequenceClassification.from_pretrained(p).state_dict()  # noqa: E731
        start = None
    else:  # the saved model is an ordinary causal LM directory
        load, start = state_dict, state_dict(f"{tiny_runs}/{'pretrain' if stage == 'sft' else 'sft'}/model")
    w1, w2 = load(f"{root}/{stage}/1/model"), load(f"{root}/{stage}/2/model")
    assert w1.keys() == w2.keys()
    for k in w1:  # within 1e-5 but for the odd weight whose gradient is near 0: there Adam's m / sqrt(v) turns the
        diff = (w1[k] - w2[k]).abs()  # last-bit differences of 2 ranks' summed gradients into ~1% of a step (3e-5 seen)
        assert diff.max() < 1e-4 and (diff > 1e-5).sum() <= diff.numel() // 1000 + 1, (k, diff.max().item())
    if start is not None:  # the steps moved the weights far more than the tolerance
        assert max((w1[k] - start[k]).abs().max().item() for k in w1) > 5e-3, stage


@pytest.mark.parametrize("stage", ARGS)
def test_only_rank_zero_writes(runs, stage):
    root, stdout = runs
    one, two = root / stage / "1", root / stage / "2"
    assert_only_rank_zero_wrote(one, two)
    assert stdout[stage].count(f"saved {two}/model") == 1
    if stage == "dpo":  # LoRA: the adapter and the merged model, as one process writes them
        assert (two / "adapter" / "adapter_model.safetensors").exists() and (two / "model" / "model.safetensors").exists()
    if stage == "sft":  # samples decoded on both ranks (every forward gathers weights), logged once, the same text
        assert (two / "samples.jsonl").read_text() .count("\n") == (one / "samples.jsonl").read_text().count("\n") > 0
        assert [r["response"] for r in map(_json, (two / "samples.jsonl").read_text().splitlines())] == \
            [r["response"] for r in map(_json, (one / "samples.jsonl").read_text().splitlines())]


def _json(line: str):
    import json

    return json.loads(line)


def test_fsdp_kill_and_resume_equals_an_uninterrupted_run(runs, tiny_runs):
    """FSDP SFT on 2 ranks SIGKILLed at its first checkpoint, then rerun: it resumes from the gathered weights and
    optimiser state (re-sharded) and logs and ends as the uninterrupted FSDP run."""
    root, _ = runs
    args = ("sft", f"--out_dir={root}/sft/killed", "--parallel=fsdp", *stage_args("sft", tiny_runs), "--ckpt_every=2")
    kill_at_first_checkpoint(args, f"{root}/sft/killed/checkpoints/latest", launcher=torchrun(2))
    assert not (root / "sft" / "killed" / "model").exists(), "the run finished before it could be killed"
    assert "resumed from" in rlhfkit(*args, launcher=torchrun(2)).stdout
    full, resumed = metrics(f"{root}/sft/2"), metrics(f"{root}/sft/killed")
    assert_same_metrics(full, resumed)
    w_full, w_resumed = state_dict(f"{root}/sft/2/model"), state_dict(f"{root}/sft/killed/model")
    assert all(torch.allclose(w_full[k], w_resumed[k], atol=1e-6) for k in w_full)


def test_one_process_fsdp_is_the_plain_model(tiny_model):
    """Without torchrun there is nothing to shard across: parallel=fsdp leaves the model as it is."""
    from rlhfkit import distributed

    assert distributed.wrap(tiny_model, distributed.Dist(), "fsdp") is tiny_model
    assert not distributed.is_sharded(tiny_model)


@pytest.mark.parametrize("stage,args,says", [
    ("ppo", ("--prompts=p.jsonl",), "'parallel': fsdp is not supported by ppo"),
    ("rloo", ("--prompts=p.jsonl",), "'parallel': fsdp is not supported by rloo"),
    ("grpo", ("--prompts=p.jsonl",), "'parallel': fsdp is not supported by grpo"),
    ("sft", ("--data=d.jsonl", "--precision=fp16-mixed"), "fsdp with precision=fp16-mixed is not supported"),
])
def test_unsupported_fsdp_is_a_config_error(stage, args, says):
    import importlib

    from rlhfkit.stages import STAGES

    entry = STAGES[stage]
    cls = getattr(importlib.import_module(entry.module), entry.config)
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        parse_cli(cls, ["--parallel=fsdp", *args])
