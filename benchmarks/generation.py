"""Decode throughput: rlhfkit's generation loop with its lean Llama decoder, the same loop on the
Hugging Face forward, and transformers' own `model.generate`, on the same model and prompts.

    .venv/bin/python benchmarks/generation.py [--hidden 128] [--layers 4] [--batch 8 64] [--new 40] [--repeats 5]
                                              [--threads N]

A freshly initialised Llama (speed does not depend on what it learned); every response runs to
`--new` tokens (no EOS), sampled at temperature 1. Runs alternate between engines and the median of
`--repeats` is reported, as wall time and as process CPU time (a last row times only each step's weight
matmuls, the floor no decoder doing this arithmetic goes below): on a machine shared with other jobs the
wall time of a 1-thread run swings with the load while its CPU time stays close to the idle wall time
(with 2+ threads CPU time also counts threads waiting on each other). Before timing, the lean decoder's
greedy tokens are checked against `model.generate`'s on the same prompts. Prints a table, then one JSON
line prefixed `JSON `.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rlhfkit.rollout import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--prompt-len", type=int, default=20)
    ap.add_argument("--new", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 32),
                                         max_position_embeddings=512, pad_token_id=0)).eval()
    pad, no_eos = 0, -1  # no sampled token equals -1: every row runs to --new tokens

    def rlhfkit_loop(engine, temperature=1.0):
        return lambda prompts: generate(model, prompts, eos_id=no_eos, pad_id=pad, max_new_tokens=args.new,
                                        temperature=temperature, engine=engine)

    def hf_generate(prompts, do_sample=True):
        ids = torch.tensor(prompts)
        with torch.no_grad():
            return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=do_sample, max_new_tokens=args.new,
                                  min_new_tokens=args.new, pad_token_id=pad, eos_token_id=None, top_k=0)

    def matmuls_alone(prompts):
        """--new steps of only a decode step's weight matmuls on the model's own weights (q/k/v and gate/up fused,
        as the lean decoder runs them), no attention, norms or sampling: the floor any decoder that does this
        arithmetic stays above. For a model whose weights outgrow the CPU's caches it is the memory traffic of
        reading every weight once per step, which `generate` pays too."""
        x = {d: torch.randn(len(prompts), d) for d in (args.hidden, 3 * args.hidden)}
        for _ in range(args.new):
            for w in weights:
                torch.nn.functional.linear(x[w.shape[1]], w)

    with torch.no_grad():
        weights = [w for layer in model.model.layers for w in (
            torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight]),
            layer.self_attn.o_proj.weight, torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]),
            layer.mlp.down_proj.weight)] + [model.lm_head.weight]
    engines = {"rlhfkit (lean decoder)": rlhfkit_loop("auto"), "rlhfkit loop, HF forward": rlhfkit_loop("hf"),
               "transformers generate": hf_generate, "floor: the matmuls alone": matmuls_alone}
    rows, greedy_equal = [], {}
    for batch in args.batch:
        prompts = torch.randint(1, args.vocab, (batch, args.prompt_len)).tolist()
        ours = rlhfkit_loop("auto", temperature=0.0)(prompts).response_ids
        greedy_equal[batch] = torch.equal(ours, hf_generate(prompts, do_sample=False)[:, args.prompt_len:])
        wall, cpu = {name: [] for name in engines}, {name: [] for name in engines}
        for name, fn in engines.items():  # warm-up
            fn(prompts[:2])
        for _ in range(args.repeats):
            for name, fn in engines.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn(prompts)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        base_wall, base_cpu = statistics.median(wall["transformers generate"]), statistics.median(cpu["transformers generate"])
        for name in engines:
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            rows.append({"engine": name, "batch": batch, "seconds": round(w, 4), "cpu_seconds": round(c, 4),
                         "tokens_per_s": round(batch * args.new / w, 1), "ms_per_step": round(1000 * w / args.new, 2),
                         "cpu_ms_per_step": round(1000 * c / args.new, 2), "speedup_vs_generate": round(base_wall / w, 2),
                         "cpu_speedup_vs_generate": round(base_cpu / c, 2)})
    print(f"{'engine':<26} {'batch':>5} {'tokens/s':>9} {'ms/step':>8} {'x generate':>10} {'cpu ms/step':>11} {'x (cpu)':>8}")
    for r in rows:
        print(f"{r['engine']:<26} {r['batch']:>5} {r['tokens_per_s']:>9} {r['ms_per_step']:>8} {r['speedup_vs_generate']:>10}"
              f" {r['cpu_ms_per_step']:>11} {r['cpu_speedup_vs_generate']:>8}")
    print("x generate of the floor row: the most any decoder doing this arithmetic could reach on this machine")
    print("greedy tokens equal to model.generate's: " + ", ".join(f"batch {b}: {ok}" for b, ok in greedy_equal.items()))
    params = sum(p.numel() for p in model.parameters())
    print("JSON " + json.dumps({"params": params, "threads": torch.get_num_threads(), "new_tokens": args.new,
                                "greedy_equal": greedy_equal, "rows": rows}))


if __name__ == "__main__":
    main()
