"""Pretrain and SFT throughput of the built-in tiny model: tokens/s, samples/s, peak RSS.

    .venv/bin/python benchmarks/train_throughput.py [--steps 30] [--hidden 128] [--layers 4] [--threads 0]

Prints a table, then one JSON line (prefixed `JSON `) with the same figures.
Speed is measured here, never asserted in tests. Runs the same code the stages
run (packing, chat rendering, lm_loss, AdamW) on the default world.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from rlhfkit.data.chat import render_example, sft_batch
from rlhfkit.data.packing import epoch_batches, pack_documents
from rlhfkit.data.records import Message
from rlhfkit.losses import lm_loss
from rlhfkit.models.tiny import TinyModelConfig, build_model, train_tokenizer
from rlhfkit.optim import adamw
from rlhfkit.world import WorldConfig, build_world


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(model, optimizer, batches, steps: int) -> tuple[float, int, int]:
    """Seconds for `steps` optimiser steps (after 3 warm-up steps), tokens and rows processed."""
    tokens = rows = 0
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
            tokens = rows = 0
        ids, attn, labels = batches(i)
        logits = model(input_ids=ids, attention_mask=attn).logits
        loss, _ = lm_loss(logits[:, :-1], labels[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(attn.sum())
        rows += ids.shape[0]
    return time.perf_counter() - t0, tokens, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    world = build_world(WorldConfig(corpus_docs=2000))
    docs = world.corpus()
    tok = train_tokenizer(docs, 1024)
    model = build_model(TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers, intermediate_size=3 * args.hidden), tok)
    n_params = sum(p.numel() for p in model.parameters())
    opt = adamw(model, 1e-3, 0.1)
    results = []

    rows = pack_documents(tok, docs, args.seq_len)
    full = torch.ones(args.batch_size, args.seq_len, dtype=torch.bool)

    def pretrain_batch(i):
        b = rows[epoch_batches(len(rows), args.batch_size, i, 0)]
        return b, full, b

    sec, tokens, n = time_steps(model, opt, pretrain_batch, args.steps)
    results.append({"stage": "pretrain", "tokens_per_s": tokens / sec, "samples_per_s": n / sec})

    demos = [render_example(tok, (Message("user", p.text),), r) for p, r in world.sft_demos()]

    def sft(i):
        idx = epoch_batches(len(demos), args.batch_size, i, 0).tolist()
        return sft_batch([demos[j] for j in idx], tok.pad_token_id)

    sec, tokens, n = time_steps(model, opt, sft, args.steps)
    results.append({"stage": "sft", "tokens_per_s": tokens / sec, "samples_per_s": n / sec})

    print(f"tiny Llama: {n_params / 1e6:.2f}M params, hidden {args.hidden}, {args.layers} layers, "
          f"batch {args.batch_size}, threads {torch.get_num_threads()}")
    print(f"{'stage':<10}{'tokens/s':>12}{'samples/s':>12}")
    for r in results:
        print(f"{r['stage']:<10}{r['tokens_per_s']:>12.0f}{r['samples_per_s']:>12.1f}")
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    print("JSON " + json.dumps({"benchmark": "train_throughput", "params": n_params, "threads": torch.get_num_threads(),
                                "peak_rss_mb": round(peak_rss_mb(), 1),
                                **{f"{r['stage']}_{k}": round(v, 1) for r in results for k, v in r.items() if k != "stage"}}))


if __name__ == "__main__":
    main()
