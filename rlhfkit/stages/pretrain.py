"""Stage 0: causal-LM pretraining (nanoGPT-style) of the built-in tiny model.

Builds a byte-level BPE tokenizer and a small Llama from scratch on a text corpus
(or continues pretraining any local HF causal LM given as `init_from`). Rows are
packed documents joined by EOS; the batch at step s is a pure function of (seed, s),
so a resumed run replays exactly the data an uninterrupted one would have seen.
The held-out loss is measured on `eval_corpus`, or, without one, on documents held
back from the end of `corpus`.

The result, `<out_dir>/model`, is a plain HF model directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import torch
from tqdm import tqdm

from rlhfkit import checkpoint, distributed
from rlhfkit.data.loaders import prompt_list
from rlhfkit.data.packing import epoch_batches, pack_documents, read_corpus
from rlhfkit.evaluation.hooks import log_samples
from rlhfkit.models import precision
from rlhfkit.models.precision import Precision
from rlhfkit.losses import lm_loss
from rlhfkit.models.tiny import TinyModelConfig, build_model, train_tokenizer
from rlhfkit.optim import NonFiniteGuard, adamw, cosine_lr, set_lr
from rlhfkit.tracking import Run, due, seed_everything


@dataclass
class Config:
    out_dir: str = "runs/pretrain"  # run directory; the final model lands in <out_dir>/model
    seed: int = 0  # seeds init, data order and sampling
    resume: Literal["auto", "never"] = "auto"  # auto: continue out_dir's run if its settings and inputs match (else an error); never: start afresh
    corpus: str | None = None  # training text: .txt (blank-line separated) or JSONL/Parquet/HF dataset with `text`; required
    eval_corpus: str | None = None  # held-out text for the eval loss (None: hold back heldout_docs documents of corpus)
    heldout_docs: int = 200  # documents held back from corpus when there is no eval_corpus
    eval_prompts: str | None = None  # a few prompts answered greedily every sample_every steps (None: none)
    model: TinyModelConfig = field(default_factory=TinyModelConfig)  # tiny model shape (ignored with init_from)
    init_from: str | None = None  # continue pretraining this local HF model dir instead of a fresh tiny model
    seq_len: int = 128  # tokens per packed row
    batch_size: int = 32  # rows per optimiser step (global, across ranks)
    micro_batch_size: int | None = None  # rows per forward/backward on a rank; gradients accumulate over the step (None: all)
    max_steps: int = 700  # optimiser steps
    lr: float = 3e-3  # peak learning rate
    warmup_steps: int = 30  # linear warmup
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    weight_decay: float = 0.1  # AdamW decay on matrices
    grad_clip: float = 1.0  # max gradient norm
    skip_nonfinite: int = 3  # non-finite steps in a row skipped (no update, counted) before the run stops with an error; 0: stop at the first
    eval_every: int = 100  # held-out loss every N steps
    sample_every: int = 200  # print decoded samples every N steps
    ckpt_every: int = 200  # checkpoint every N steps (resume with the same out_dir)
    precision: Precision = "auto"  # fp32 | bf16-mixed | fp16-mixed (fp32 master weights, autocast) | bf16 (pure) | auto: bf16-mixed on GPU, else fp32
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~1/3 more compute
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: ddp replicates the model on every rank | fsdp shards weights, gradients and optimiser state (FSDP2)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0: torch default)

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if not self.corpus:
            raise ConfigError("'corpus': give the pretraining text, e.g. corpus=corpus.jsonl")
        distributed.check_parallel(self.parallel, self.precision)


def train(cfg: Config) -> str:
    d = distributed.init(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    run = Run(cfg.out_dir, cfg, cfg.seed, "pretrain", d.rank)

    # 1. Data and tokenizer: resume from a checkpoint, continue a given model, or start fresh.
    docs = read_corpus(cfg.corpus)
    if cfg.eval_corpus:
        heldout_docs = read_corpus(cfg.eval_corpus)
    else:  # hold back the last documents (at most half of them)
        n_held = min(cfg.heldout_docs, len(docs) // 2)
        docs, heldout_docs = docs[: len(docs) - n_held], docs[len(docs) - n_held :]
    prompts = prompt_list(cfg.eval_prompts) if cfg.eval_prompts else []
    sample_prompts = prompts[:: max(1, len(prompts) // 3)][:3]  # spread over the file
    ckpt = checkpoint.latest_checkpoint(cfg.out_dir)
    prec = precision.resolve(cfg.precision, d.device)
    if ckpt or cfg.init_from:
        from rlhfkit.models.load import load_causal_lm

        model, tok = load_causal_lm(os.path.join(ckpt, "model") if ckpt else cfg.init_from, device=str(d.device),
                                    dtype=precision.weights_dtype(prec))
    else:
        tok = train_tokenizer(docs, cfg.model.vocab_size)
        model = build_model(cfg.model, tok, seed=cfg.seed).to(d.device, precision.weights_dtype(prec))
    precision.prepare(model, prec, d.device, cfg.gradient_checkpointing)
    rows = pack_documents(tok, docs, cfg.seq_len)  # (N, seq_len)
    heldout = pack_documents(tok, heldout_docs, cfg.seq_len)[:64]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[pretrain] {n_params / 1e6:.2f}M params, {rows.numel() / 1e6:.2f}M corpus tokens, "
          f"{cfg.max_steps * cfg.batch_size * cfg.seq_len / 1e6:.2f}M tokens to train on", flush=True)

    dp_model = distributed.wrap(model, d, cfg.parallel, prec)  # DDP, or FSDP2 shards (before the optimizer sees them)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay)
    start, _ = checkpoint.resume(ckpt, cfg.out_dir, optimizer, "pretrain", d.is_main, model)
    guard, scaler = NonFiniteGuard("pretrain", cfg.skip_nonfinite), precision.Scaler(prec, d.device)

    # 2. Train: one packed batch per step; every token is a target.
    model.train()
    if start == 0:
        run.log(0, {"eval/loss": heldout_loss(model, heldout.to(d.device))})
    for step in tqdm(range(start, cfg.max_steps), desc="pretrain", disable=not d.is_main, initial=start, total=cfg.max_steps):
        lr = cosine_lr(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        set_lr(optimizer, lr)
        batch = rows[distributed.shard(epoch_batches(len(rows), cfg.batch_size, step, cfg.seed).tolist(), d)].to(d.device)
        n_tokens = distributed.global_sum(batch[:, 1:].numel(), d)  # every token of the global batch is a target
        loss = torch.zeros((), device=d.device)
        for micro in distributed.micro_batches(dp_model, batch, cfg.micro_batch_size):
            logits = dp_model(input_ids=micro).logits  # (b, T, V)
            micro_loss, _ = lm_loss(logits[:, :-1], micro[:, 1:], normalizer=n_tokens)  # a share of the global mean
            scaler.backward(micro_loss * d.world_size)  # DDP and FSDP average over ranks; undo it so the loss is the global mean
            loss += micro_loss.detach()
        scaler.unscale(optimizer)
        grad_norm = distributed.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        global_loss = distributed.global_sum(loss, d)  # the same on every rank: all ranks skip or stop together
        scaler.step(optimizer, guard, step, loss=global_loss, grad_norm=grad_norm)
        optimizer.zero_grad(set_to_none=True)

        # 3. Log, evaluate, sample, checkpoint.
        metrics = {"train/loss": global_loss.item(), "train/lr": lr, "train/grad_norm": grad_norm.item(), **guard.metrics()}
        if due(step, cfg.eval_every) or step + 1 == cfg.max_steps:
            metrics["eval/loss"] = heldout_loss(model, heldout.to(d.device))
        run.log(step + 1, metrics)
        if distributed.joins(d, model) and due(step, cfg.sample_every):
            log_samples(run, model, tok, sample_prompts, step + 1)
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.max_steps:
            saved, optimizer_state = distributed.full_model(model, d), distributed.optimizer_state(model, optimizer, d)
            if d.is_main:
                checkpoint.save_checkpoint(cfg.out_dir, step + 1, {"model": saved}, {"optimizer": optimizer_state}, tok)
        distributed.barrier(d)

    out = os.path.join(cfg.out_dir, "model")
    guard.finish()
    saved = distributed.full_model(model, d)  # FSDP: every rank gathers, rank 0 gets the whole model
    if d.is_main:
        checkpoint.save_model("pretrain", saved, tok, out)
        print(f"[pretrain] saved {out}", flush=True)
    run.close()
    distributed.close(d)
    return out


@torch.no_grad()
def heldout_loss(model, rows: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token loss over held-out packed rows (B, T)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        b = rows[i : i + batch_size]
        loss, _ = lm_loss(model(input_ids=b).logits[:, :-1], b[:, 1:])
        total, count = total + loss.item() * b[:, 1:].numel(), count + b[:, 1:].numel()
    model.train()
    return total / count
