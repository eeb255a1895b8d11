"""Every training stage on one fixed workload: samples/s, train tokens/s, generated tokens/s, model-FLOPs
utilisation, start-up seconds and peak RSS, as a table and JSON.

    .venv/bin/python benchmarks/stages.py [--stages sft,rm,dpo,grpo,rloo,ppo] [--steps 50] [--threads 2]
                                          [--keep DIR] [--json stages.json] [--code CHECKOUT] [--terms 2]

The workload (the speed issue's reference, built locally, nothing downloaded): a Llama of 4 layers, width 256,
SwiGLU 768, 4 heads, tied embeddings, a byte-level BPE vocabulary of 1,024 (3.7M parameters), fp32;
2,000 arithmetic rows ("What is 12 + 7?" -> "12 + 7 = 19."; ~25 tokens with the chat template) as
prompt/completion (SFT), prompt/chosen/rejected with a wrong sum rejected (RM, DPO) and prompts (GRPO,
RLOO, PPO); batch 8 (SFT examples, RM/DPO pairs, RL completions: 2 prompts x 4 samples for GRPO/RLOO,
8 prompts for PPO), `--steps` optimiser steps, one pass over each rollout batch (on-policy), 16 new tokens at
most. Each stage runs as a user runs it, `python -m rlhfkit <stage> ...`, in a process of its own, in the
order sft, rm, dpo, grpo, rloo, ppo: DPO and the online stages start from the SFT model this run trained,
and the online stages score with the reward model it trained (PPO's critic starts from it).

`--terms 17` is the long-sequence workload (sums of 17 numbers answered by their running sums, ~136 tokens a
sequence), the issue's check of model-FLOPs utilisation at >= 128 tokens (run it with `--stages sft,dpo`).

Figures (from the stage's own metrics.jsonl, whose `time` counts from run.json's `started_unix`):
- samples/s: sequences trained per second over steps 2..N (the first step's one-off costs are start-up);
- train tok/s: non-padding tokens of those sequences per second (prompt + response; both sides of a pair,
  though the RM computes a pair's prompt once: `rm --share_prompts`, so its tok/s and MFU count work saved);
- gen tok/s: response tokens the online stages sampled, per second of their `time/generate`;
- MFU: 6 x parameters x train tokens/s (plus 2 x parameters per token of every no-grad forward: the
  reference, the reward model, rollout scoring) over the fp32 matmul peak measured in this run (2 threads);
- start-up: process launch -> first step begun (imports, loading models and data);
- peak RSS: the stage process's maximum resident memory (os.wait4).
Time it on an idle machine (any concurrent process collapses torch's threads on a small CPU); nothing here
is asserted in tests. Prints a table, then one JSON line prefixed `JSON `.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = ["sft", "rm", "dpo", "grpo", "rloo", "ppo"]
BATCH, K, NEW = 8, 4, 16


def matmul_peak(threads: int, n: int = 1024, repeats: int = 20) -> float:
    """fp32 GFLOP/s of an n x n matmul at `threads` threads: the best of `repeats`."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def build(root: str, rows: int = 2000, terms: int = 2) -> dict:
    """The model and the three data files under `root`; returns their paths and the parameter count.

    `terms` numbers per sum: 2 is the reference workload ("What is 12 + 7?" -> "12 + 7 = 19."); more make the
    long-sequence workload, whose answer adds them up one at a time ("12 + 7 = 19, 19 + 30 = 49, ..."), the
    rejected answer slipping on one running sum (and carrying the error on)."""
    from rlhfkit.data.loaders import write_jsonl
    from rlhfkit.models.tiny import TinyModelConfig, build_model, train_tokenizer

    rng = random.Random(0)
    if terms == 2:
        sums = rng.sample([(a, b) for a in range(51) for b in range(51)], rows)  # distinct prompts: one pair per ranking
    else:
        sums = list({tuple(rng.randrange(51) for _ in range(terms)) for _ in range(rows * 2)})[:rows]
    prompt = [f"What is {' + '.join(map(str, s))}?" for s in sums]
    right = [_chain(s, None) for s in sums]
    wrong = [_chain(s, (rng.randrange(1, len(s)), rng.choice([-3, -2, -1, 1, 2, 3]))) for s in sums]
    tok = train_tokenizer([f"{p} {c}" for p, c in zip(prompt, right)] * 4, 1024)
    model = build_model(TinyModelConfig(vocab_size=1024, hidden_size=256, num_layers=4, num_heads=4,
                                        intermediate_size=768, tie_embeddings=True), tok)
    paths = {"model": f"{root}/base", "sft": f"{root}/sft.jsonl", "pairs": f"{root}/pairs.jsonl",
             "prompts": f"{root}/prompts.jsonl"}
    model.save_pretrained(paths["model"])
    tok.save_pretrained(paths["model"])
    write_jsonl(paths["sft"], [{"prompt": p, "completion": c} for p, c in zip(prompt, right)])
    write_jsonl(paths["pairs"], [{"prompt": p, "chosen": c, "rejected": w} for p, c, w in zip(prompt, right, wrong)])
    write_jsonl(paths["prompts"], [{"prompt": p} for p in prompt])
    return {**paths, "params": sum(p.numel() for p in model.parameters())}


def _chain(terms: tuple[int, ...], slip: tuple[int, int] | None) -> str:
    """The running sums of `terms` as an answer; `slip` = (k, d) adds d to the k-th running sum."""
    total, steps = terms[0], []
    for k, t in enumerate(terms[1:], 1):
        new = total + t + (slip[1] if slip and slip[0] == k else 0)
        steps.append(f"{total} + {t} = {new}")
        total = new
    return ", ".join(steps) + "."


def stage_args(stage: str, d: dict, root: str, steps: int) -> list[str]:
    """The CLI arguments of `stage` on the workload: batch 8, `steps` optimiser steps, no evaluations."""
    quiet = ["--ckpt_every=100000", "--warmup_steps=0"]
    epochs = lambda n: f"--epochs={steps * BATCH / n:.6f}"  # noqa: E731 - steps of 8 over the rows trained on
    sft_model, rm_model = f"{root}/sft/model", f"{root}/rm/model"
    online = [f"--policy={sft_model}", f"--reward_model={rm_model}", f"--prompts={d['prompts']}", f"--total_steps={steps}",
              f"--max_new_tokens={NEW}", "--ppo_epochs=1", "--eval_every=0", "--sample_every=100000", *quiet]
    return {
        "sft": [f"--model={d['model']}", f"--data={d['sft']}", "--batch_size=8", epochs(1900), "--eval_every=100000",
                "--sample_every=100000", *quiet],
        "rm": [f"--model={sft_model}", f"--data={d['pairs']}", "--batch_groups=8", epochs(1800), "--eval_every=100000", *quiet],
        "dpo": [f"--policy={sft_model}", f"--data={d['pairs']}", "--batch_size=8", "--micro_batch_size=8", epochs(1900), "--eval_every=100000", *quiet],
        "grpo": [*online, "--estimator=grpo", "--kl_in_reward=false", "--kl_coef=0.0", f"--prompts_per_step={BATCH // K}",
                 f"--k={K}", f"--minibatch_size={BATCH}", f"--micro_batch_size={BATCH}"],
        "rloo": [*online, f"--prompts_per_step={BATCH // K}", f"--k={K}", f"--minibatch_size={BATCH}",
                 f"--micro_batch_size={BATCH}"],
        "ppo": [*online, f"--rollout_batch_size={BATCH}", f"--minibatch_size={BATCH}", f"--micro_batch_size={BATCH}"],
    }[stage]


def run_stage(stage: str, args: list[str], out: str, threads: int, code: str = REPO) -> dict:
    """Run one stage (of the checkout `code`) in its own process; its start-up, steady-state step rate and peak RSS."""
    env = {**os.environ, "RLHFKIT_NO_TENSORBOARD": "1", "PYTHONPATH": code}  # threads: the stage's --threads
    cmd = [sys.executable, "-m", "rlhfkit", stage, f"--out_dir={out}", f"--threads={threads}", *args]
    launch = time.time()
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{stage} failed:\n{output[-3000:]}")
    # run.json's started_unix is the zero of metrics.jsonl's `time`; a checkout from before it had the field wrote
    # run.json a few milliseconds after that zero: its modification time stands in
    started = json.load(open(f"{out}/run.json")).get("started_unix", os.path.getmtime(f"{out}/run.json"))
    rows = [r for r in map(json.loads, open(f"{out}/metrics.jsonl")) if r["step"] >= 1]  # RM logs a step 0 before training
    times = [r["time"] for r in rows]
    step_s = statistics.median(b - a for a, b in zip(times, times[1:]))
    return {"rows": rows, "startup_s": started - launch + times[0] - step_s, "steady_s": times[-1] - times[0],
            "steps": len(rows), "peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": time.time() - launch}


def train_tokens(stage: str, d: dict, rows: list[dict]) -> tuple[float, float, float]:
    """(sequences, train tokens, no-grad forward tokens) per optimiser step: from the data files rendered as
    the stages render them (chat template, end-of-turn token), or from the rollouts' mean response length."""
    from transformers import AutoTokenizer

    from rlhfkit.data.chat import render_example, render_prompt

    tok = AutoTokenizer.from_pretrained(f"{os.path.dirname(d['sft'])}/sft/model")  # the template the stages used
    if stage in ("grpo", "rloo", "ppo"):
        prompts = [json.loads(line)["prompt"] for line in open(d["prompts"])][:200]
        seq = statistics.mean(len(render_prompt(tok, p)) for p in prompts) + statistics.mean(
            r["rollout/response_length"] for r in rows)
        # the policy's forward + backward on BATCH sequences (PPO: the critic's too); no-grad forwards of the
        # reference and the reward model, and PPO's rollout values
        return BATCH, BATCH * seq * (2 if stage == "ppo" else 1), {"grpo": 2, "rloo": 2, "ppo": 3}[stage] * BATCH * seq
    lines = [json.loads(line) for line in open(d["sft" if stage == "sft" else "pairs"])][:200]
    length = lambda p, c: len(render_example(tok, p, c)[0])  # noqa: E731
    if stage == "sft":
        return BATCH, BATCH * statistics.mean(length(r["prompt"], r["completion"]) for r in lines), 0.0
    pair = 2 * BATCH * statistics.mean(length(r["prompt"], r[s]) for r in lines for s in ("chosen", "rejected"))
    return BATCH, pair, 0.0  # DPO's reference log-probs are computed once, before the first step (start-up)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default=",".join(ORDER))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--terms", type=int, default=2, help="numbers per sum: 2 is the reference workload (~16 tokens a "
                                                           "sequence); 17 gives the long one (~136)")
    ap.add_argument("--keep", default=None, help="run directory to keep (default: a temporary one)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--code", default=REPO, help="the checkout whose stages run (default: this one), e.g. a `git worktree` "
                                                 "of an older commit for a before/after")
    args = ap.parse_args()
    stages = [s for s in ORDER if s in args.stages.split(",")]
    root = args.keep or tempfile.mkdtemp(prefix="rlhfkit-stages-")
    os.makedirs(root, exist_ok=True)
    peak = matmul_peak(args.threads)
    d = build(root, terms=args.terms)
    results = {}
    for stage in ORDER:
        needed = stage in stages or (stage in ("sft", "rm") and any(s not in ("sft",) for s in stages))
        if not needed:
            continue
        r = run_stage(stage, stage_args(stage, d, root, args.steps), f"{root}/{stage}", args.threads, args.code)
        if stage not in stages:
            continue
        seqs, tokens, nograd = train_tokens(stage, d, r["rows"])
        rate = (r["steps"] - 1) / r["steady_s"]  # optimiser steps per second after the first
        gen_time = sum(x.get("time/generate", 0.0) for x in r["rows"][1:])
        gen_tokens = sum(x.get("rollout/response_length", 0.0) * BATCH for x in r["rows"][1:])
        flops = (6 * tokens + 2 * nograd) * d["params"] * rate
        results[stage] = {"samples_per_s": round(seqs * rate, 1), "train_tokens_per_s": round(tokens * rate),
                          "tokens_per_seq": round(tokens / seqs / (2 if stage in ("rm", "dpo", "ppo") else 1), 1),
                          "gen_tokens_per_s": round(gen_tokens / gen_time) if gen_time else None,
                          "mfu": round(flops / (peak * 1e9), 3), "startup_s": round(r["startup_s"], 2),
                          "peak_rss_mb": round(r["peak_rss_mb"]), "steps": r["steps"], "wall_s": round(r["wall_s"], 1)}
    print(f"workload: {d['params'] / 1e6:.2f}M-parameter Llama, batch {BATCH}, {args.steps} steps, {args.threads} threads; "
          f"fp32 matmul peak {peak:.0f} GFLOP/s")
    print(f"{'stage':<6} {'samples/s':>10} {'tok/seq':>8} {'train tok/s':>12} {'gen tok/s':>10} {'MFU':>6} {'start-up s':>11} "
          f"{'peak RSS MB':>12}")
    for s, m in results.items():
        gen = f"{m['gen_tokens_per_s']:,}" if m["gen_tokens_per_s"] else "-"
        print(f"{s:<6} {m['samples_per_s']:>10.1f} {m['tokens_per_seq']:>8.1f} {m['train_tokens_per_s']:>12,} {gen:>10} {m['mfu']:>6.1%} "
              f"{m['startup_s']:>11.2f} {m['peak_rss_mb']:>12,}")
    out = {"code": args.code, "params": d["params"], "terms": args.terms, "batch": BATCH, "steps": args.steps, "threads": args.threads,
           "matmul_peak_gflops": round(peak, 1), "stages": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    print("JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
