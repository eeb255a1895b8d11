"""Peak memory and step time of one PPO iteration: full fine-tuning vs LoRA vs a value head on the policy vs
gradient checkpointing, on a Llama-shaped model built locally (~55M parameters by default, no download).

    .venv/bin/python benchmarks/memory.py [--hidden 640 --layers 10] [--rollout 16] [--max-new-tokens 32]
                                          [--configs full,lora,...] [--json memory.json]

Each configuration runs the real `ppo` stage (2 iterations; the second is timed) in a subprocess of its own,
so its peak resident memory (and, on a GPU, torch.cuda.max_memory_allocated) is that configuration's alone.
`rss_base_mb` is the subprocess's memory before the stage starts (Python, torch, transformers), so
`peak - base` is what the four PPO models, their gradients, optimiser state and activations add. The reward
is the reward model (a fresh head on the policy's backbone), the critic starts from it. Prints a table,
then one JSON line prefixed `JSON ` (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

CONFIGS = {  # name -> ppo overrides
    "full": [],
    "full+value_head": ["value_head=policy"],
    "full+checkpointing": ["gradient_checkpointing=true"],
    "lora": ["lora.r=16", "lora.alpha=32"],
    "lora+value_head": ["lora.r=16", "lora.alpha=32", "value_head=policy"],
    "lora+checkpointing": ["lora.r=16", "lora.alpha=32", "gradient_checkpointing=true"],
}


def build(root: str, hidden: int, layers: int) -> tuple[str, str, str, int]:
    """A fresh Llama-shaped policy, a reward model on its backbone, and the world's RL prompts, under `root`."""
    from rlhfkit.models.reward import scalar_model_from_lm
    from rlhfkit.models.tiny import TinyModelConfig, build_model, train_tokenizer
    from rlhfkit.world import WorldConfig, build_world, export

    docs = build_world(WorldConfig(corpus_docs=1000)).corpus()
    tok = train_tokenizer(docs, 8192)
    shape = TinyModelConfig(vocab_size=8192, hidden_size=hidden, num_layers=layers, num_heads=max(1, hidden // 64),
                            intermediate_size=int(2.7 * hidden) // 64 * 64, tie_embeddings=False)
    model = build_model(shape, tok)
    n_params = sum(p.numel() for p in model.parameters())
    policy, rm_dir = os.path.join(root, "policy"), os.path.join(root, "rm")
    model.save_pretrained(policy)
    tok.save_pretrained(policy)
    rm, _ = scalar_model_from_lm(policy)
    rm.save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    export.main(export.Config(f"{root}/world", WorldConfig(corpus_docs=100)))
    return policy, rm_dir, f"{root}/world/rl_prompts.jsonl", n_params


def one(args) -> None:
    """In the subprocess: run PPO for one configuration, print its measurements as one JSON line."""
    import torch

    from rlhfkit.config import load_config
    from rlhfkit.stages import ppo
    from rlhfkit.tracking import memory_mb, read_metrics

    base = memory_mb()["sys/rss_mb"]
    cfg = load_config(ppo.Config, overrides=[
        f"out_dir={args.root}/{args.one}", f"policy={args.root}/policy", f"reward_model={args.root}/rm",
        f"prompts={args.root}/world/rl_prompts.jsonl", "total_steps=2", f"rollout_batch_size={args.rollout}",
        f"minibatch_size={args.rollout}", f"micro_batch_size={args.micro}", "ppo_epochs=1",
        f"max_new_tokens={args.max_new_tokens}", "missing_eos_penalty=null", "eval_every=0", "sample_every=100000",
        "ckpt_every=100000", *CONFIGS[args.one]])
    ppo.train(cfg)
    last = read_metrics(cfg.out_dir)[-1]
    step_s = sum(v for k, v in last.items() if k.startswith("time/"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"config": args.one, "rss_base_mb": round(base, 1), "rss_peak_mb": round(peak, 1), "step_s": round(step_s, 3),
           "train_s": round(last.get("time/train", 0.0), 3),
           "phases_s": {k[5:]: round(v, 3) for k, v in last.items() if k.startswith("time/")}}
    if torch.cuda.is_available():
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=640)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--rollout", type=int, default=16)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: the subprocess's configuration
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("RLHFKIT_NO_TENSORBOARD", "1")
    if args.one:
        return one(args)

    with tempfile.TemporaryDirectory() as root:
        t0 = time.time()
        *_, n_params = build(root, args.hidden, args.layers)
        print(f"model: {n_params / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} layers), built in "
              f"{time.time() - t0:.0f} s; PPO iteration of {args.rollout} rollouts x {args.max_new_tokens} new tokens, "
              f"micro-batch {args.micro}", flush=True)
        rows = []
        for name in args.configs.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--root", root, "--rollout", str(args.rollout),
                   "--micro", str(args.micro), "--max-new-tokens", str(args.max_new_tokens)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
            rows.append(json.loads(lines[-1][7:]))
            print(f"  {name}: done", flush=True)
    full = next((r for r in rows if r["config"] == "full"), rows[0])
    cuda = "cuda_peak_mb" in full
    print(f"\n{'config':<22}{'peak RSS MB':>12}{'- base':>9}{'vs full':>9}" + (f"{'CUDA peak MB':>14}" if cuda else "")
          + f"{'step s':>9}{'train s':>9}")
    for r in rows:
        added, full_added = r["rss_peak_mb"] - r["rss_base_mb"], full["rss_peak_mb"] - full["rss_base_mb"]
        print(f"{r['config']:<22}{r['rss_peak_mb']:>12.0f}{added:>9.0f}{added / full_added:>9.2f}"
              + (f"{r['cuda_peak_mb']:>14.0f}" if cuda else "") + f"{r['step_s']:>9.2f}{r['train_s']:>9.2f}")
    result = {"benchmark": "memory", "params": n_params, "hidden": args.hidden, "layers": args.layers,
              "rollout": args.rollout, "max_new_tokens": args.max_new_tokens, "micro_batch": args.micro, "rows": rows}
    print("JSON " + json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
