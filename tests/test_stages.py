"""Every training stage end to end through the CLI on a tiny model and world, asserting a real effect."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers import WORLD_ARGS, assert_same_metrics, kill_at_first_checkpoint, metrics, rlhfkit


def test_pretrain_lowers_heldout_loss(tiny_runs):
    evals = [m["eval/loss"] for m in metrics(f"{tiny_runs}/pretrain") if "eval/loss" in m]
    assert len(evals) >= 3 and evals[-1] < evals[0] - 1.0


def test_sft_lowers_heldout_loss(tiny_runs):
    evals = [m["eval/loss"] for m in metrics(f"{tiny_runs}/sft") if "eval/loss" in m]
    assert evals[-1] < 0.7 * evals[0], evals
    cfg = (tiny_runs / "sft" / "config.yaml").read_text()
    assert "lr: 0.003" in cfg and (tiny_runs / "sft" / "run.json").exists()


def _world():
    from rlhfkit.world import WorldConfig, build_world

    return build_world(WorldConfig(**WORLD_ARGS))


def verbose_pairs(path, n=None):
    """Preference pairs with a known answer: the ideal response beats the same response padded with filler."""
    from rlhfkit.data.loaders import write_jsonl

    world = _world()
    rows = []
    for i, p in enumerate(world.prompts("rl")[:n]):
        ideal = world.ideal_response(p)
        rows.append({"prompt": p.text, "chosen": ideal, "rejected": ideal + " I hope this helps, and have a really wonderful day today!",
                     "source": "simulated", "annotator": "a", "group": f"g{i}"})
    write_jsonl(path, rows)
    return rows


@pytest.fixture(scope="module")
def pairs(tiny_runs):
    """The filler-vs-ideal preference pairs, written once for this module's tests."""
    verbose_pairs(f"{tiny_runs}/pairs.jsonl")
    return f"{tiny_runs}/pairs.jsonl"


@pytest.fixture(scope="module")
def trained_rm(tiny_runs, pairs):
    rlhfkit("rm", f"--out_dir={tiny_runs}/rm", f"--model={tiny_runs}/sft/model", f"--data={pairs}",
            "--epochs=6", "--batch_groups=4", "--lr=3e-3", "--heldout_fraction=0.25", "--eval_every=10")
    return tiny_runs / "rm"


@pytest.fixture(scope="module")
def trained_dpo(tiny_runs, pairs):
    rlhfkit("dpo", f"--out_dir={tiny_runs}/dpo", f"--policy={tiny_runs}/sft/model", f"--data={pairs}",
            "--epochs=4", "--batch_size=8", "--micro_batch_size=4", "--lr=1e-3", "--heldout_fraction=0.25",
            "--eval_every=5")
    return tiny_runs / "dpo"


def test_reward_model_learns_the_labelled_preference(tiny_runs, trained_rm):
    evals = [m["eval/accuracy"] for m in metrics(f"{tiny_runs}/rm") if "eval/accuracy" in m]
    assert evals[-1] >= 0.9, evals
    saved = json.loads((tiny_runs / "rm" / "rm_metrics.json").read_text())
    cfg = json.loads((tiny_runs / "rm" / "model" / "config.json").read_text())
    assert cfg["rlhfkit_score_offset"] == pytest.approx(saved["score_offset"])
    assert saved["calibration"]["bins"] and "ceiling" not in saved  # one label per pair: no agreement ceiling to report


def test_acceptability_marks_put_answers_to_different_prompts_on_one_scale(tiny_runs):
    """Comparisons say only 'ideal beats padded'; the marks say every answer to an arithmetic
    prompt is unacceptable and every other answer acceptable. The RM must learn that offset."""
    from rlhfkit.data.loaders import write_jsonl

    from rlhfkit.world.tasks import parse_prompt

    rows = verbose_pairs(f"{tiny_runs}/pairs_marked.jsonl")
    tables = _world().tables
    for r in rows:
        ok = parse_prompt(r["prompt"], tables)[0] != "arithmetic"
        r["meta"] = {"chosen_acceptable": ok, "rejected_acceptable": ok}
    write_jsonl(f"{tiny_runs}/pairs_marked.jsonl", rows)
    rlhfkit("rm", f"--out_dir={tiny_runs}/rm_marked", f"--model={tiny_runs}/sft/model", f"--data={tiny_runs}/pairs_marked.jsonl",
            "--epochs=6", "--batch_groups=4", "--lr=3e-3", "--heldout_fraction=0.25", "--eval_every=10", "--evaluate=false")
    accept = [m["eval/accept_accuracy"] for m in metrics(f"{tiny_runs}/rm_marked") if "eval/accept_accuracy" in m]
    assert accept[-1] >= 0.9 > accept[0], accept  # held-out answers: sign(raw score) matches the mark
    assert any("train/accept_loss" in m for m in metrics(f"{tiny_runs}/rm_marked"))


def test_reward_model_killed_and_resumed_matches_an_uninterrupted_run(tiny_runs):
    verbose_pairs(f"{tiny_runs}/pairs_resume.jsonl", n=24)
    args = lambda name: ("rm", f"--out_dir={tiny_runs}/{name}", f"--model={tiny_runs}/sft/model",  # noqa: E731
                         f"--data={tiny_runs}/pairs_resume.jsonl", "--epochs=3", "--batch_groups=4", "--lr=3e-3",
                         "--eval_every=3", "--ckpt_every=3", "--evaluate=false")
    rlhfkit(*args("rm_full"))
    kill_at_first_checkpoint(args("rm_killed"), str(tiny_runs / "rm_killed" / "checkpoints" / "latest"))
    assert not (tiny_runs / "rm_killed" / "model").exists(), "the run finished before it could be killed"
    assert "[rm] resumed from" in rlhfkit(*args("rm_killed")).stdout
    assert_same_metrics(metrics(f"{tiny_runs}/rm_full"), metrics(f"{tiny_runs}/rm_killed"))


def test_reward_is_read_at_the_last_real_token_under_left_and_right_padding(tiny_runs, trained_rm):
    from rlhfkit.data.chat import pad_batch, render_example
    from rlhfkit.models.reward import load_scalar_model, sequence_scores

    model, tok = load_scalar_model(f"{tiny_runs}/rm/model")
    rows = [render_example(tok, "What is 7 + 5?", "7 + 5 = 12.")[0], render_example(tok, "Hi", "Hello! How can I help you today?")[0]]
    alone = torch.stack([sequence_scores(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.bool))[0] for r in rows])
    for side in ("left", "right"):
        ids, attn = pad_batch(rows, tok.pad_token_id, side=side)
        assert torch.allclose(sequence_scores(model, ids, attn), alone, atol=1e-4), side


def test_dpo_prefers_the_chosen_responses(tiny_runs, trained_dpo):
    rows = [m for m in metrics(f"{tiny_runs}/dpo") if "eval/rewards/accuracy" in m]
    assert rows[-1]["eval/rewards/accuracy"] >= 0.9
    assert rows[-1]["eval/rewards/margin"] > rows[0]["eval/rewards/margin"]
    assert os.path.exists(f"{tiny_runs}/dpo/ref_logprobs.pt")


def test_dpo_cached_reference_logprobs_equal_live_ones(tiny_runs, trained_dpo):
    from rlhfkit.data.chat import render_example
    from rlhfkit.data.loaders import load_preferences
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.models.logprobs import sequence_logprobs

    cache = torch.load(f"{tiny_runs}/dpo/ref_logprobs.pt")
    ref_c = cache["chosen"]
    assert len(cache["key"]) == 16  # keyed by the reference model's files and the rendered pairs
    pairs = load_preferences(f"{tiny_runs}/pairs.jsonl")
    import random

    random.Random(0).shuffle(pairs)  # the stage's shuffle (seed 0)
    ref, tok = load_causal_lm(f"{tiny_runs}/sft/model", device="cpu")
    with torch.no_grad():
        live = sequence_logprobs(ref, [render_example(tok, p.prompt, p.chosen, 256) for p in pairs[:6]], tok.pad_token_id)
    assert torch.allclose(live, ref_c[:6], atol=1e-4)


def test_dpo_reference_logprobs_only_of_the_pairs_a_run_reads(tiny_model, tiny_tok, monkeypatch):
    """A run shorter than an epoch computes the reference on the pairs it reads, the same numbers as over all
    of them, and NaN for the rest (a loss that read one would be non-finite: the run would stop loudly)."""
    from rlhfkit.data.chat import render_example
    from rlhfkit.distributed import Dist
    from rlhfkit.stages import dpo as dpo_stage
    from rlhfkit.stages.dpo import reference_logprobs

    tiny_tok.pad_token = tiny_tok.pad_token or tiny_tok.eos_token
    rows = [render_example(tiny_tok, f"What is {i} + 5?", f"{i} + 5 = {i + 5}.") for i in range(7)]
    every = reference_logprobs(tiny_model, rows, tiny_tok.pad_token_id, Dist(), batch_size=3)
    some = reference_logprobs(tiny_model, rows, tiny_tok.pad_token_id, Dist(), used=[1, 4, 5], batch_size=3)
    assert torch.isfinite(every).all() and torch.allclose(some[[1, 4, 5]], every[[1, 4, 5]], atol=1e-5)
    assert torch.isnan(some[[0, 2, 3, 6]]).all()
    # a repeated example (pairs share responses) is computed once and copied to every place that holds it
    computed = []
    real = dpo_stage.sequence_logprobs
    monkeypatch.setattr(dpo_stage, "sequence_logprobs", lambda m, r, *a: computed.extend(r) or real(m, r, *a))
    repeated = reference_logprobs(tiny_model, rows + rows[:3], tiny_tok.pad_token_id, Dist(), used=[0, 7, 1, 8, 9, 3], batch_size=3)
    assert len(computed) == 4  # rows 0, 1, 3 and 9 (a copy of row 2, which is not read)
    assert torch.equal(repeated[[7, 8]], repeated[[0, 1]]) and torch.allclose(repeated[[0, 1, 9, 3]], every[:4], atol=1e-5)
    assert torch.isnan(repeated[[2, 4, 5, 6]]).all()


def ppo_args(root, name, *extra):
    return ("ppo", f"--out_dir={root}/{name}", f"--policy={root}/sft/model", "--reward=tests.helpers:short_reward",
            "--rollout_batch_size=8", "--minibatch_size=8", "--micro_batch_size=8", "--ppo_epochs=2",
            "--max_new_tokens=16", "--eval_every=0", "--sample_every=1000", "--lr=1e-3", "--kl_coef=0.01",
            "--missing_eos_penalty=-5", f"--prompts={root}/world/rl_prompts.jsonl", *extra)


@pytest.mark.parametrize("value_head", ["separate", "policy"])
def test_ppo_raises_the_reward(tiny_runs, value_head):
    """Both critics: a separate network from the RM init, or a head sharing the policy's backbone."""
    rlhfkit(*ppo_args(tiny_runs, f"ppo_{value_head}", "--total_steps=12", "--ckpt_every=100", f"--value_head={value_head}"))
    rows = metrics(f"{tiny_runs}/ppo_{value_head}")
    first = sum(r["objective/scores"] for r in rows[:3]) / 3
    last = sum(r["objective/scores"] for r in rows[-3:]) / 3
    assert last > first + 1.0, (first, last)
    for key in ("objective/kl", "objective/entropy", "ppo/policy/clipfrac", "ppo/policy/approxkl",
                "ppo/val/explained_variance", "ppo/val/clipfrac", "rollout/eos_rate", "objective/non_score_reward",
                "ppo/policy/grad_norm", "ppo/val/grad_norm"):
        assert key in rows[-1]


@pytest.mark.parametrize("value_head", ["separate", "policy"])
def test_ppo_killed_and_resumed_matches_an_uninterrupted_run(tiny_runs, value_head):
    steps = ("--total_steps=6", "--ckpt_every=2", f"--value_head={value_head}")
    full_dir, killed_dir = f"ppo_full_{value_head}", f"ppo_killed_{value_head}"
    rlhfkit(*ppo_args(tiny_runs, full_dir, *steps))
    # Same run, killed with SIGKILL as soon as its first checkpoint lands, then resumed.
    kill_at_first_checkpoint(ppo_args(tiny_runs, killed_dir, *steps), str(tiny_runs / killed_dir / "checkpoints" / "latest"))
    assert not (tiny_runs / killed_dir / "model").exists(), "the run finished before it could be killed"
    resumed = rlhfkit(*ppo_args(tiny_runs, killed_dir, *steps))
    assert "resumed from" in resumed.stdout
    assert_same_metrics(metrics(f"{tiny_runs}/{full_dir}"), metrics(f"{tiny_runs}/{killed_dir}"))


def test_ppo_gradient_accumulation_matches_one_big_batch(tiny_runs):
    common = ("--total_steps=1", "--ppo_epochs=1", "--ckpt_every=100")
    rlhfkit(*ppo_args(tiny_runs, "ppo_accum1", *common), "--micro_batch_size=1")
    rlhfkit(*ppo_args(tiny_runs, "ppo_accum8", *common), "--micro_batch_size=8")
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(f"{tiny_runs}/ppo_accum1/model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(f"{tiny_runs}/ppo_accum8/model").state_dict()
    start = AutoModelForCausalLM.from_pretrained(f"{tiny_runs}/sft/model").state_dict()
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    assert moved > 1e-4  # the update did something
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


@pytest.mark.parametrize("algo, kl_coef", [("rloo", 0.1), ("grpo", 0.1), ("grpo", 0.0)])
def test_critic_free_methods_raise_the_reward(tiny_runs, algo, kl_coef):
    """beta 0 runs without a reference model (nothing measures a KL then)."""
    out = f"{tiny_runs}/{algo}_{kl_coef}"
    rlhfkit(algo, f"--out_dir={out}", f"--policy={tiny_runs}/sft/model", "--reward=tests.helpers:short_reward",
            "--total_steps=10", "--prompts_per_step=4", "--k=4", "--minibatch_size=16", "--micro_batch_size=8",
            "--max_new_tokens=16", "--eval_every=0", "--sample_every=1000", "--lr=1e-3", "--missing_eos_penalty=-5",
            f"--kl_coef={kl_coef}", f"--prompts={tiny_runs}/world/rl_prompts.jsonl")
    rows = metrics(out)
    first = sum(r["objective/scores"] for r in rows[:3]) / 3
    last = sum(r["objective/scores"] for r in rows[-3:]) / 3
    assert last > first + 1.0, (first, last)
    assert ("objective/kl" in rows[-1]) == bool(kl_coef)


def test_world_export_lists_a_familys_prompts_that_many_times_for_ppo(tmp_path):
    """ppo_prompts.jsonl repeats each prompt of a `prompt_repeats` family (the demo's false premises x3);
    rl_prompts.jsonl lists each once; a bad repeat is a config error."""
    from collections import Counter

    from rlhfkit.data.loaders import prompt_list

    rlhfkit("world", "export", f"--out_dir={tmp_path}", *(f"--world.{k}={v}" for k, v in WORLD_ARGS.items()),
            "--prompt_repeats={false_premise: 3}")
    rl = [json.loads(line) for line in open(tmp_path / "rl_prompts.jsonl")]
    n_fp = sum(p["family"] == "false_premise" for p in rl)
    assert n_fp >= 2
    got = Counter(prompt_list(str(tmp_path / "ppo_prompts.jsonl")))
    assert sum(got.values()) == len(rl) + 2 * n_fp
    assert all(got[p["prompt"]] == (3 if p["family"] == "false_premise" else 1) for p in rl)
    assert prompt_list(str(tmp_path / "rl_prompts.jsonl")) == [p["prompt"] for p in rl]
    for bad, msg in (("{false_premise: 0}", "integers >= 1"), ("{false_premises: 3}", "unknown world families ['false_premises']")):
        proc = rlhfkit("world", "export", f"--out_dir={tmp_path}/x", f"--prompt_repeats={bad}", check=False)
        assert proc.returncode == 2 and msg in proc.stderr


def resumable(stage: str, root, name: str) -> tuple[str, ...]:
    """Short runs of each stage that checkpoint early (every 2-4 steps), for the kill-and-resume test."""
    from tests.helpers import MODEL

    w = f"{root}/world"
    return {
        "pretrain": ("pretrain", f"--out_dir={root}/{name}", f"--corpus={w}/corpus.jsonl", "--max_steps=16",
                     "--batch_size=16", "--seq_len=64", "--eval_every=4", "--ckpt_every=4", "--sample_every=1000", *MODEL),
        "sft": ("sft", f"--out_dir={root}/{name}", f"--model={root}/pretrain/model", f"--data={w}/sft.jsonl",
                "--epochs=1", "--batch_size=16", "--eval_every=3", "--ckpt_every=3", "--sample_every=1000"),
        "dpo": ("dpo", f"--out_dir={root}/{name}", f"--policy={root}/sft/model", f"--data={w}/pairs.jsonl",
                "--epochs=1", "--batch_size=8", "--micro_batch_size=8", "--eval_every=3", "--ckpt_every=3"),
        "grpo": ("grpo", f"--out_dir={root}/{name}", f"--policy={root}/sft/model", f"--prompts={w}/rl_prompts.jsonl",
                 "--reward=tests.helpers:short_reward", "--total_steps=6", "--prompts_per_step=4", "--k=4",
                 "--minibatch_size=16", "--micro_batch_size=8", "--max_new_tokens=12", "--eval_every=0",
                 "--sample_every=1000", "--ckpt_every=2"),
    }[stage]


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo", "grpo"])
def test_kill_and_resume_is_bit_identical(tiny_runs, stage):
    """SIGKILL at the first checkpoint, rerun the same command: it resumes and logs exactly what an
    uninterrupted run logs (rm and ppo: their own tests above)."""
    rlhfkit(*resumable(stage, tiny_runs, f"{stage}_full"))
    killed = resumable(stage, tiny_runs, f"{stage}_killed")
    kill_at_first_checkpoint(killed, str(tiny_runs / f"{stage}_killed" / "checkpoints" / "latest"))
    assert not (tiny_runs / f"{stage}_killed" / "model").exists(), "the run finished before it could be killed"
    assert "resumed from" in rlhfkit(*killed).stdout
    assert_same_metrics(metrics(f"{tiny_runs}/{stage}_full"), metrics(f"{tiny_runs}/{stage}_killed"))
