"""Data parallelism is invisible: `torchrun` with 2 ranks (gloo on CPU) trains the same model as 1 process.

Each stage shards every global batch by rank, divides its summed loss by the
global token count and multiplies by world_size to undo DDP's gradient average
(rlhfkit.distributed), so with the same global batch size the two runs must
take the same optimiser steps: same gradient norms at every step, same held-out
losses, same final weights. Only rank 0 writes the run directory.

The online RL stages (PPO, RLOO, GRPO) do the same with rollouts: each rank samples its rows of every
global rollout batch (RLOO/GRPO: whole groups), drawing the global batch's random numbers from generators
seeded by (seed, step), whitens advantages with global statistics, trains on its members of every global
minibatch with losses divided by the global token count, and sums gradients over ranks.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import MODEL, assert_only_rank_zero_wrote, assert_same_metrics, free_port, kill_at_first_checkpoint, metrics, rlhfkit

STAGES = ("pretrain", "sft", "rm", "dpo", "ppo", "rloo", "grpo")
RL = ("ppo", "rloo", "grpo")
# Short runs with no warmup, so the weights move by far more than the tolerance of the comparison.
ARGS = {
    "pretrain": ("--max_steps=4", "--batch_size=8", "--seq_len=64", "--lr=2e-3", "--sample_every=1000", *MODEL),
    "sft": ("--epochs=0.5", "--batch_size=16", "--lr=3e-3", "--sample_every=1000"),  # 7 steps of 16 of the 228 demonstrations
    "rm": ("--epochs=2", "--batch_groups=4", "--lr=1e-3", "--pair_weight=ranking", "--evaluate=false"),  # 2 rankings a rank
    "dpo": ("--epochs=3", "--batch_size=8", "--micro_batch_size=2", "--lr=1e-3"),  # 2 micro-batches of 2 per rank a step
    # online RL: each rank samples, scores and trains on its rows of every global rollout batch
    "ppo": ("--total_steps=3", "--rollout_batch_size=8", "--minibatch_size=4", "--micro_batch_size=2", "--max_new_tokens=12",
            "--lr=1e-3", "--sample_every=1000", "--eval_every=0"),
    "rloo": ("--total_steps=3", "--prompts_per_step=4", "--k=2", "--minibatch_size=4", "--micro_batch_size=2",
             "--max_new_tokens=12", "--lr=1e-3", "--sample_every=1000", "--eval_every=0"),
    "grpo": ("--total_steps=3", "--prompts_per_step=4", "--k=2", "--minibatch_size=4", "--micro_batch_size=2",
             "--max_new_tokens=12", "--lr=1e-3", "--sample_every=1000", "--eval_every=0"),
}
COMMON = ("--warmup_steps=0", "--eval_every=2")
SAME_EVERY_STEP = ("train/loss", "train/grad_norm", "train/lr", "eval/loss",  # metrics both runs must log alike
                   "objective/scores", "objective/kl", "ppo/policy/pg_loss", "ppo/policy/grad_norm", "ppo/policy/ratio_var",
                   "ppo/val/vf_loss", "ppo/val/explained_variance", "objective/kl_coef")


def torchrun(nproc: int) -> tuple[str, ...]:
    """`python -m torch.distributed.run ...` on one machine, on a free port."""
    return ("-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}")


pytestmark = pytest.mark.slow


def data_args(stage: str, world) -> tuple[str, ...]:
    if stage == "pretrain":
        return (f"--corpus={world}/corpus.jsonl", f"--eval_corpus={world}/eval_corpus.jsonl")
    if stage in RL:
        return (f"--prompts={world}/rl_prompts.jsonl",)
    return (f"--data={world}/{'sft' if stage == 'sft' else 'pairs'}.jsonl",)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, world_files):
    """Each stage once with 1 process and once with 2 ranks; SFT starts from the 1-process pretrained model.

    Returns (root, {"<stage>/<ranks>": stdout}); run directories are `<root>/<stage>/<ranks>`.
    """
    root = tmp_path_factory.mktemp("dist")
    out = {}
    for stage in STAGES:
        init = {"pretrain": (), "sft": (f"--model={root}/pretrain/1/model",), "rm": (f"--model={root}/sft/1/model",),
                "dpo": (f"--policy={root}/sft/1/model",), "ppo": rl_init(root), "rloo": rl_init(root),
                "grpo": rl_init(root)}[stage]
        for ranks, launcher in ((1, ()), (2, torchrun(2))):
            name = f"{stage}/{ranks}"
            proc = rlhfkit(stage, f"--out_dir={root}/{name}", *init, *data_args(stage, world_files), *ARGS[stage], *COMMON,
                           launcher=launcher)
            out[name] = proc.stdout
    return root, out


def rl_init(root) -> tuple[str, ...]:
    """The online RL stages start from the 1-process SFT model and score with the 1-process reward model."""
    return (f"--policy={root}/sft/1/model", f"--reward_model={root}/rm/1/model")


def state_dict(path: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.mark.parametrize("stage", STAGES)
def test_two_ranks_take_the_same_steps_as_one_process(runs, stage):
    root, _ = runs
    one, two = metrics(f"{root}/{stage}/1"), metrics(f"{root}/{stage}/2")
    assert [r["step"] for r in two] == [r["step"] for r in one] and len(one) >= (3 if stage in RL else 5)
    for a, b in zip(one, two):
        for key in SAME_EVERY_STEP:
            assert (key in a) == (key in b), (a["step"], key)
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=2e-6), (a["step"], key)  # logs keep 6 decimals
    if stage in RL:  # (that the steps moved the policy: the weights test below)
        return
    key = "train/loss" if stage == "rm" else "eval/loss"  # the steps really trained the model (the RM's held-out
    evals = [r[key] for r in one if key in r]  # accuracy on the tiny world is 1.0 from the start)
    assert evals[-1] < evals[0] - 0.1, evals


@pytest.mark.parametrize("stage", STAGES)
def test_two_ranks_end_with_the_same_weights(runs, stage):
    root, _ = runs
    one, two = state_dict(f"{root}/{stage}/1/model"), state_dict(f"{root}/{stage}/2/model")
    assert one.keys() == two.keys()
    start = state_dict(f"{root}/{'pretrain' if stage == 'sft' else 'sft'}/1/model") if stage != "pretrain" else None
    # (pretraining from scratch at lr 2e-3: 4.5e-6 at most; at 5e-3 Adam made rounding 1-3e-5. The RM packs each
    # prompt once per rank's share, so one and two ranks round differently: 3e-5 at most seen)
    tol = 1e-4 if stage == "rm" else 1e-5
    for k in one:
        assert torch.allclose(one[k], two[k], atol=tol), (k, (one[k] - two[k]).abs().max().item())
    if start is not None:  # the steps moved the weights far more than the tolerance
        assert max((one[k] - start[k]).abs().max().item() for k in one) > 5e-3, stage


@pytest.mark.parametrize("stage", STAGES)
def test_only_rank_zero_writes_the_run_directory(runs, stage):
    root, stdout = runs
    one, two = root / stage / "1", root / stage / "2"
    assert_only_rank_zero_wrote(one, two)  # a second writer would also announce the run directory again:
    assert stdout[f"{stage}/2"].count(f"[{stage}] run dir") == 1
    assert stdout[f"{stage}/2"].count(f"saved {two}/model") == 1
    if stage in RL:  # one summary, naming the ranks
        assert stdout[f"{stage}/2"].count("; 2 ranks") == 1
        return
    # ... while both ranks did run: each prints its own data summary.
    summary = {"sft": "demonstrations", "pretrain": "corpus tokens", "rm": "rankings (+", "dpo": "held out), "}[stage]
    assert stdout[f"{stage}/2"].count(summary) == 2


def test_distributed_kill_and_resume_equals_an_uninterrupted_run(runs, world_files):
    """PPO under torchrun (2 ranks), every process SIGKILLed at its first checkpoint, then the same command
    again: it resumes and logs what the uninterrupted 2-rank run logged, and ends with its weights."""
    root, _ = runs
    args = ("ppo", f"--out_dir={root}/ppo/killed", *rl_init(root), *data_args("ppo", world_files), *ARGS["ppo"], *COMMON,
            "--ckpt_every=1")
    kill_at_first_checkpoint(args, f"{root}/ppo/killed/checkpoints/latest", launcher=torchrun(2))
    assert not (root / "ppo" / "killed" / "model").exists(), "the run finished before it could be killed"
    assert "resumed from" in rlhfkit(*args, launcher=torchrun(2)).stdout
    assert_same_metrics(metrics(f"{root}/ppo/2"), metrics(f"{root}/ppo/killed"))
    full, resumed = state_dict(f"{root}/ppo/2/model"), state_dict(f"{root}/ppo/killed/model")
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)


@pytest.mark.parametrize("args", [
    ("eval", "--policies=[missing]", "--prompts=missing.jsonl", "--out_dir={out}"),
    ("sample", "--model=missing", "--prompts=missing.jsonl", "--out={out}"),
])
def test_a_stage_that_is_not_data_parallel_refuses_torchrun(tmp_path, args):
    """Two ranks of a stage that does not shard its work would each run the whole job and write the same
    files: it must stop before writing anything, with a message saying why."""
    out = tmp_path / "out"
    proc = rlhfkit(*(a.format(out=out) for a in args), launcher=torchrun(2), check=False)
    assert proc.returncode != 0
    # each rank refuses; torchrun may stop the second before it prints, once the first has failed
    assert proc.stderr.count(f"{args[0]} does not run data-parallel yet") >= 1, proc.stderr[-3000:]
    assert "refuse_multi_process" not in proc.stderr and not out.exists()  # a message, not a traceback of ours
