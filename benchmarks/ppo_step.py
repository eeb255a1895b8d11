"""PPO iteration time split into generate / score / policy logprobs / reference / value / train,
plus tokens/s and peak RSS, on the built-in tiny model.

    .venv/bin/python benchmarks/ppo_step.py [--steps 6] [--rollout 64] [--hidden 128] [--layers 4] [--policy DIR --reward-model DIR]

Without --policy, a freshly initialised tiny policy and reward model are built (their speed is
what matters here, not their quality; responses run to max_new_tokens). Runs the real `ppo`
stage and reads its `time/*` metrics. Prints a table, then one JSON line prefixed `JSON `.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile

import torch

from rlhfkit.config import load_config
from rlhfkit.stages import ppo
from rlhfkit.tracking import read_metrics

PHASES = ("generate", "score", "policy_logprobs", "reference", "value", "train")


def build_tiny(root: str, hidden: int, layers: int) -> tuple[str, str]:
    from rlhfkit.models.reward import scalar_model_from_lm
    from rlhfkit.models.tiny import TinyModelConfig, build_model, train_tokenizer
    from rlhfkit.world import WorldConfig, build_world

    docs = build_world(WorldConfig(corpus_docs=1000)).corpus()
    tok = train_tokenizer(docs, 1024)
    model = build_model(TinyModelConfig(hidden_size=hidden, num_layers=layers, intermediate_size=3 * hidden), tok)
    policy_dir, rm_dir = os.path.join(root, "policy"), os.path.join(root, "rm")
    model.save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    rm, _ = scalar_model_from_lm(policy_dir)
    rm.save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    return policy_dir, rm_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rollout", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--policy", default=None)
    ap.add_argument("--reward-model", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RLHFKIT_NO_TENSORBOARD", "1")

    with tempfile.TemporaryDirectory() as root:
        policy, rm = (args.policy, args.reward_model) if args.policy else build_tiny(root, args.hidden, args.layers)
        from rlhfkit.world import WorldConfig, export

        export.main(export.Config(f"{root}/world", WorldConfig(corpus_docs=100)))  # the world's RL prompts, as a file
        cfg = load_config(ppo.Config, overrides=[f"prompts={root}/world/rl_prompts.jsonl",
            f"out_dir={root}/ppo", f"policy={policy}", f"reward_model={rm}", f"total_steps={args.steps}",
            f"rollout_batch_size={args.rollout}", f"max_new_tokens={args.max_new_tokens}", "eval_every=0",
            "sample_every=100000", "ckpt_every=100000"])
        ppo.train(cfg)
        rows = read_metrics(f"{root}/ppo")[1:]  # the first iteration includes warm-up
    n = len(rows)
    phase = {p: sum(r.get(f"time/{p}", 0.0) for r in rows) / n for p in PHASES}
    total = sum(phase.values())
    tokens = sum(r["rollout/response_length"] * args.rollout for r in rows) / n
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"PPO iteration ({args.rollout} rollouts, up to {args.max_new_tokens} new tokens, {cfg.ppo_epochs} epochs, "
          f"threads {torch.get_num_threads()}), mean over {n} iterations")
    print(f"{'phase':<18}{'seconds':>10}{'share':>8}")
    for p in PHASES:
        print(f"{p:<18}{phase[p]:>10.3f}{phase[p] / total:>8.1%}")
    print(f"{'total':<18}{total:>10.3f}\nresponse tokens/s (whole iteration) {tokens / total:.0f}; "
          f"generation tokens/s {tokens / phase['generate']:.0f}; peak RSS {rss:.0f} MB")
    print("JSON " + json.dumps({"benchmark": "ppo_step", "rollout": args.rollout, "iterations": n, "peak_rss_mb": round(rss, 1),
                                "seconds": {p: round(v, 4) for p, v in phase.items()}, "total_s": round(total, 4),
                                "tokens_per_s": round(tokens / total, 1), "generate_tokens_per_s": round(tokens / phase["generate"], 1)}))


if __name__ == "__main__":
    main()
