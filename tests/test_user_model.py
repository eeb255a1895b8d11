"""The generic stages on a user's own model and data: nothing of the built-in world runs or is written.

The model is not the world's: a WordLevel tokenizer over digits and words with its own special
tokens and a ChatML-style chat template, and a Llama of a different shape. The data are small JSONL
files of arithmetic. Every stage runs through the CLI in a process where importing `rlhfkit.world`
or `rlhfkit.demo` fails, so a stage that reached for the world would crash; its outputs must hold
no world metric.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from tests.helpers import REPO, metrics

pytestmark = pytest.mark.slow

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
BLOCKED = "import sys, runpy; sys.modules['rlhfkit.world'] = None; sys.modules['rlhfkit.demo'] = None; sys.argv[0] = 'rlhfkit'; runpy.run_module('rlhfkit', run_name='__main__')"
WORLD_KEYS = ("gold", "refusal", "sycophancy", "spearman", "bias_", "fact_recall", "premise", "ceiling")


def run(*args: str) -> subprocess.CompletedProcess:
    """`rlhfkit *args` with the built-in world and the demo made unimportable."""
    env = {**os.environ, "RLHFKIT_NO_TENSORBOARD": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", BLOCKED, *args], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"rlhfkit {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def user_model(path: str) -> None:
    """A tokenizer and model of the user's own: word-level vocabulary, ChatML template, EOS <|im_end|>."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [str(i) for i in range(40)] + "what is plus minus equals the answer sum of and ? . , = + - user assistant \n".split(" ")
    special = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(special + sorted(set(words)))}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"], padding_side="left")
    tok.chat_template = CHATML
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=40, intermediate_size=80, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None))
    model.save_pretrained(path)
    tok.save_pretrained(path)


def user_data(root: str) -> None:
    rng = random.Random(0)
    sums = [(a, b) for a in range(15) for b in range(15)]
    rng.shuffle(sums)
    rows = lambda fn: [json.dumps(fn(a, b)) + "\n" for a, b in sums[:120]]  # noqa: E731
    files = {
        "sft.jsonl": rows(lambda a, b: {"prompt": f"what is {a} plus {b} ?", "completion": f"{a + b} ."}),
        "pairs.jsonl": rows(lambda a, b: {"prompt": f"what is {a} plus {b} ?", "chosen": f"{a + b} .",
                                          "rejected": f"the answer is the sum of {a} and {b} , {a + b + 1} ."}),
        "prompts.jsonl": rows(lambda a, b: {"prompt": f"what is {a} plus {b} ?"}),
        "text.jsonl": rows(lambda a, b: {"text": f"{a} plus {b} equals {a + b} . {b} plus {a} equals {a + b} ."}),
    }
    for name, lines in files.items():
        with open(os.path.join(root, name), "w") as f:
            f.writelines(lines)


def no_world_metric(run_dir: str) -> None:
    keys = {k for m in metrics(run_dir) for k in m}
    found = [k for k in keys if any(w in k for w in WORLD_KEYS)]
    assert not found, (run_dir, found)


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    user_model(str(root / "base"))
    user_data(str(root))
    run("sft", f"--out_dir={root}/sft", f"--model={root}/base", f"--data={root}/sft.jsonl", "--epochs=3", "--batch_size=16",
        "--lr=3e-3", "--eval_every=5", "--sample_every=10")
    return root


def test_sft_trains_the_users_model_on_the_users_template(user):
    evals = [m["eval/loss"] for m in metrics(f"{user}/sft") if "eval/loss" in m]
    assert evals[-1] < 0.7 * evals[0], evals
    samples = [json.loads(line) for line in open(f"{user}/sft/samples.jsonl")]
    assert samples and "what is" in samples[0]["prompt"]  # its own held-out prompts, not the world's
    no_world_metric(f"{user}/sft")


def user_rm(user) -> str:
    """The user's reward model, trained on their pairs once per module."""
    if not os.path.exists(f"{user}/rm/model"):
        run("rm", f"--out_dir={user}/rm", f"--model={user}/sft/model", f"--data={user}/pairs.jsonl", "--epochs=2",
            "--batch_groups=8", "--lr=1e-3", "--eval_every=5")
    return f"{user}/rm/model"


def test_rm_writes_only_its_own_diagnostics(user):
    user_rm(user)
    saved = json.loads(open(f"{user}/rm/rm_metrics.json").read())
    assert {"heldout_accuracy", "calibration", "score_offset"} <= set(saved)
    assert not [k for k in saved if any(w in k for w in WORLD_KEYS)], saved.keys()
    no_world_metric(f"{user}/rm")


def test_dpo_on_the_users_pairs_with_the_users_evaluator(user):
    run("dpo", f"--out_dir={user}/dpo", f"--policy={user}/sft/model", f"--data={user}/pairs.jsonl", "--epochs=1",
        "--batch_size=16", "--micro_batch_size=16", "--lr=1e-4", "--eval_every=3", f"--eval_prompts={user}/prompts.jsonl",
        "--evaluator=tests.helpers:exact_sum")
    rows = [m for m in metrics(f"{user}/dpo") if "eval/score" in m]
    assert rows and all(0.0 <= m["eval/score"] <= 1.0 for m in rows)  # the user's evaluator, logged as eval/<key>
    no_world_metric(f"{user}/dpo")


@pytest.mark.parametrize("stage", ["ppo", "rloo", "grpo"])
def test_online_rl_on_the_users_prompts(user, stage):
    extra = ["--rollout_batch_size=8", "--minibatch_size=8", "--micro_batch_size=8", "--ptx_coef=0.1",
             f"--ptx_data={user}/text.jsonl"] if stage == "ppo" else ["--prompts_per_step=4", "--k=2", "--minibatch_size=8",
                                                                      "--micro_batch_size=8"]
    run(stage, f"--out_dir={user}/{stage}", f"--policy={user}/sft/model", f"--prompts={user}/prompts.jsonl",
        "--reward=tests.helpers:exact_sum_reward", "--total_steps=3", "--max_new_tokens=6", "--eval_every=0",
        "--sample_every=100", *extra)
    rows = metrics(f"{user}/{stage}")
    assert len([r for r in rows if "objective/scores" in r]) == 3
    if stage == "ppo":
        assert all(r["ppo/ptx_loss"] > 0 for r in rows if "objective/scores" in r)  # PPO-ptx trained on the user's text
    no_world_metric(f"{user}/{stage}")


def test_eval_on_the_users_prompts(user):
    """Two policies on the user's prompt file, judged by the user's reward model and evaluator: the table is
    printed and saved, with RM score and RM win-rate (with CIs), KL, length, diversity, refusal rate."""
    proc = run("eval", f"--out_dir={user}/eval", f"--policies=[{user}/base, {user}/sft/model]", "--names=[base, sft]",
               f"--prompts={user}/prompts.jsonl", f"--reward_model={user_rm(user)}", "--evaluator=tests.helpers:exact_sum",
               "--num_samples=2", "--bootstrap=50", "--max_new_tokens=6", f"--eval_corpus={user}/text.jsonl",
               "--score_key=format")
    m = json.loads(open(f"{user}/eval/metrics.json").read())
    assert m["sft"]["format"] > m["base"]["format"]  # SFT learned to end its answer; the untrained model rambles on
    assert m["sft"]["terminated_rate"] > m["base"]["terminated_rate"]
    assert m["sft"]["format_winrate"]["mean"] > 0.5 and 0 <= m["sft"]["score"] <= 1
    assert m["sft"]["kl"] > 0 and m["sft"]["perplexity"] > 1
    # the user's RM was trained on SFT-style chosen answers: it scores SFT's answers above the untrained model's
    assert m["sft"]["rm_score"] > m["base"]["rm_score"] and m["sft"]["rm_winrate"]["mean"] > 0.5
    assert m["base"]["rm_winrate"]["mean"] == 0.5  # the baseline against itself
    assert not [k for k in m["sft"] if any(w in k for w in WORLD_KEYS) and k != "refusal_phrase_rate"]  # generic, not the world's
    assert 0 <= m["sft"]["refusal_phrase_rate"] <= 1
    table = open(f"{user}/eval/metrics.md").read()
    assert "| metric | base | sft |" in table and "| rm_winrate |" in table and "| distinct_2 |" in table
    assert "| metric | base | sft |" in proc.stdout and "| rm_score |" in proc.stdout  # printed as well as saved


DIVERGING = {  # a learning rate no run survives: weights overflow within a step or two
    "sft": ["--model={u}/base", "--data={u}/sft.jsonl", "--epochs=1", "--batch_size=16"],
    "rm": ["--model={u}/sft/model", "--data={u}/pairs.jsonl", "--epochs=1", "--batch_groups=8"],
    "dpo": ["--policy={u}/sft/model", "--data={u}/pairs.jsonl", "--epochs=1", "--batch_size=16", "--micro_batch_size=16"],
    "grpo": ["--policy={u}/sft/model", "--prompts={u}/prompts.jsonl", "--reward=tests.helpers:exact_sum_reward",
             "--total_steps=3", "--max_new_tokens=6", "--eval_every=0", "--prompts_per_step=4", "--k=2",
             "--minibatch_size=8", "--micro_batch_size=8"],
}


@pytest.mark.parametrize("stage", sorted(DIVERGING))
def test_a_diverged_run_fails_loudly_and_saves_no_model(user, stage):
    """lr=1e30: the loss or gradient goes non-finite; the stage stops before applying the update, says
    so in one line, exits non-zero, and writes no model (before the guard: exit 0 and an all-NaN model)."""
    env = {**os.environ, "RLHFKIT_NO_TENSORBOARD": "1", "OMP_NUM_THREADS": "1"}
    out = f"{user}/diverged-{stage}"
    args = [a.format(u=user) for a in DIVERGING[stage]]
    proc = subprocess.run([sys.executable, "-c", BLOCKED, stage, f"--out_dir={out}", "--lr=1e30", *args], cwd=REPO,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "diverged" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not os.path.exists(f"{out}/model")


def test_dpo_reference_cache_is_keyed_by_the_pairs_and_the_precision(user):
    """A second DPO run started afresh (resume=never) in the same out_dir on the same pairs with chosen and
    rejected swapped: the cached reference log-probs belong to the first run's pairs, so they must be recomputed. At step 1
    the policy is the reference, so the loss is ln 2 exactly (a stale cache gave a far larger one)."""
    import math

    swapped = f"{user}/pairs_swapped.jsonl"
    with open(f"{user}/pairs.jsonl") as f, open(swapped, "w") as g:
        for line in f:
            row = json.loads(line)
            g.write(json.dumps({**row, "chosen": row["rejected"], "rejected": row["chosen"]}) + "\n")
    out = f"{user}/dpo-cache"
    common = ["--epochs=0.3", "--batch_size=16", "--micro_batch_size=16", "--lr=1e-3", "--ckpt_every=1000", "--eval_every=1000"]
    run("dpo", f"--out_dir={out}", f"--policy={user}/sft/model", f"--data={user}/pairs.jsonl", *common)
    run("dpo", f"--out_dir={out}", f"--policy={user}/sft/model", f"--data={swapped}", "--resume=never", *common)
    first_steps = [m for m in metrics(out) if m["step"] == 1]  # the second run's is the last
    assert first_steps[-1]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-4)
    again = run("dpo", f"--out_dir={out}", f"--policy={user}/sft/model", f"--data={swapped}", "--resume=never", *common)
    assert "recomputing" not in again.stdout  # the same reference, pairs and precision: the cache serves
    mixed = run("dpo", f"--out_dir={out}", f"--policy={user}/sft/model", f"--data={swapped}", "--resume=never",
                "--precision=bf16-mixed", *common)
    assert "recomputing" in mixed.stdout  # reference numbers computed in another precision are not reused


def test_a_run_dir_resumes_only_the_run_that_made_it(user):
    """A changed setting, or changed content behind the same data path, into an existing SFT run dir is refused
    with a one-line error naming it; resume=never starts afresh; the same command continues the same run."""
    env = {**os.environ, "RLHFKIT_NO_TENSORBOARD": "1", "OMP_NUM_THREADS": "1"}
    out, data = f"{user}/sft-identity", f"{user}/sft-identity.jsonl"
    with open(f"{user}/sft.jsonl") as f:
        rows = f.readlines()
    with open(data, "w") as f:
        f.writelines(rows)
    args = ["sft", f"--out_dir={out}", f"--model={user}/base", f"--data={data}", "--epochs=0.5", "--batch_size=16",
            "--ckpt_every=2", "--sample_every=100"]

    def sft(*extra):
        return subprocess.run([sys.executable, "-c", BLOCKED, *args, *extra], cwd=REPO, capture_output=True, text=True, env=env)

    assert sft().returncode == 0
    refused = sft("--lr=0.01")
    assert refused.returncode == 2 and "lr: 0.001 -> 0.01" in refused.stderr and "Traceback" not in refused.stderr
    with open(data, "w") as f:
        f.writelines(rows[::-1])  # same path, other content
    refused = sft()
    assert refused.returncode == 2 and f"content of {data} changed" in refused.stderr, refused.stderr[-2000:]
    fresh = sft("--resume=never", "--lr=0.01")
    assert fresh.returncode == 0 and "resume=never: cleared" in fresh.stdout, fresh.stdout[-2000:]
    again = sft("--lr=0.01", "--threads=1")  # threads may differ: the same run, resumed from its last checkpoint
    assert again.returncode == 0 and "resumed from" in again.stdout, (again.stdout[-2000:], again.stderr[-2000:])



def test_grpo_learns_a_verifiable_reward_that_reads_the_answer_column(user):
    """The TRL-style math setup: prompts with an `answer` column and a reward that checks the response against it.
    SFT on demonstrations that give each of four sums every one of the four answers equally (so the SFT model
    is right a quarter of the time, whichever the prompt); GRPO with `answer_reward` must learn which answer
    goes with which prompt, which it can only do if each rollout's reward reads its own prompt's `answer`."""
    sums = [(5, 7), (9, 6), (8, 9), (10, 11)]
    answers = [a + b for a, b in sums]
    with open(f"{user}/guess.jsonl", "w") as f:
        f.writelines(json.dumps({"prompt": f"what is {a} plus {b} ?", "completion": f"{c} ."}) + "\n"
                     for a, b in sums for c in answers * 4)
    with open(f"{user}/math.jsonl", "w") as f:
        f.writelines(json.dumps({"prompt": f"what is {a} plus {b} ?", "answer": a + b}) + "\n" for a, b in sums)
    run("sft", f"--out_dir={user}/guess-sft", f"--model={user}/base", f"--data={user}/guess.jsonl", "--epochs=20",
        "--batch_size=16", "--lr=3e-3", "--eval_every=0", "--sample_every=1000")
    run("grpo", f"--out_dir={user}/math-grpo", f"--policy={user}/guess-sft/model", f"--prompts={user}/math.jsonl",
        "--reward=tests.helpers:answer_reward", "--total_steps=30", "--prompts_per_step=4", "--k=8", "--minibatch_size=32",
        "--micro_batch_size=32", "--max_new_tokens=4", "--lr=3e-3", "--eval_every=0", "--sample_every=1000")
    scores = [r["objective/scores"] for r in metrics(f"{user}/math-grpo") if "objective/scores" in r]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert first < 0.45 and last > first + 0.25, scores  # from about 1 in 4 right to most right
