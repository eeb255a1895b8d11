"""Stage 1: supervised fine-tuning on (prompt, ideal response) demonstrations.

Standard SFT (InstructGPT stage 1): next-token cross-entropy on the response
tokens only — prompt and padding are labelled -100 — with the chat template
rendering the prompt. Batches are right-padded per batch (padding-aware, no
cross-example attention). The loss is divided by the global number of response
tokens in the step, so any micro-batch or rank split equals one big batch.

Data: any JSONL / Parquet / HF dataset directory with `prompt`+`completion` or
`messages` (see rlhfkit.data.loaders). Every `sample_every` steps the model answers
a few held-out prompts, printed next to their demonstrations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm import tqdm

from rlhfkit import checkpoint, distributed
from rlhfkit.data.chat import IGNORE_INDEX, render_examples, sft_batch
from rlhfkit.data.packing import epoch_batches
from rlhfkit.data.loaders import load_sft, split_heldout
from rlhfkit.evaluation.hooks import log_samples
from rlhfkit.losses import lm_loss
from rlhfkit.models.load import load_causal_lm
from rlhfkit.optim import NonFiniteGuard, adamw, cosine_lr, set_lr
from rlhfkit.tracking import Run, due, seed_everything


@dataclass
class Config:
    out_dir: str = "runs/sft"  # run directory; the final model lands in <out_dir>/model
    seed: int = 0  # seeds data order and the held-out split
    resume: Literal["auto", "never"] = "auto"  # auto: continue out_dir's run if its settings and inputs match (else an error); never: start afresh
    model: str = "runs/pretrain/model"  # local HF causal LM directory to fine-tune
    data: str | None = None  # demonstrations file/dir (prompt+completion or messages); required
    max_len: int = 256  # longest rendered example (prompt is cut from the left)
    batch_size: int = 32  # examples per optimiser step (global)
    epochs: float = 3.0  # passes over the training demonstrations
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 20  # linear warmup
    min_lr_ratio: float = 0.1  # cosine floor
    weight_decay: float = 0.0  # AdamW decay on matrices
    grad_clip: float = 1.0  # max gradient norm
    skip_nonfinite: int = 3  # non-finite steps in a row skipped (no update, counted) before the run stops with an error; 0: stop at the first
    heldout_fraction: float = 0.05  # demonstrations kept out for the held-out loss
    split: str = "train"  # split of a dataset folder / saved DatasetDict to train on
    eval_split: str | None = None  # split held out for evaluation (None: heldout_fraction of the training split)
    eval_every: int = 50  # held-out loss every N steps
    sample_every: int = 100  # print decoded samples every N steps
    ckpt_every: int = 200  # checkpoint every N steps
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0: torch default)

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if not self.data:
            raise ConfigError("'data': give the demonstrations, e.g. data=demos.jsonl")


def train(cfg: Config) -> str:
    d = distributed.init(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    run = Run(cfg.out_dir, cfg, cfg.seed, "sft", d.rank)

    # 1. Model and data: render every demonstration once to (ids, mask).
    held, train = split_heldout(load_sft(cfg.data, cfg.split), cfg.heldout_fraction, cfg.seed, cfg.data, "demonstrations",
                                load_sft(cfg.data, cfg.eval_split) if cfg.eval_split else None)  # before any model loads
    examples, n_held = held + train, len(held)
    ckpt = checkpoint.latest_checkpoint(cfg.out_dir)
    model, tok = load_causal_lm(os.path.join(ckpt, "model") if ckpt else cfg.model, device=str(d.device))
    rendered = render_examples(tok, [(e.prompt, e.completion) for e in examples], cfg.max_len, "sft")
    heldout, train_rows = rendered[:n_held], rendered[n_held:]
    max_steps = max(1, int(cfg.epochs * len(train_rows) / cfg.batch_size))
    print(f"[sft] {len(train_rows)} demonstrations ({n_held} held out), {max_steps} steps of {cfg.batch_size}", flush=True)

    optimizer = adamw(model, cfg.lr, cfg.weight_decay)
    start, _ = checkpoint.resume(ckpt, cfg.out_dir, optimizer, "sft", d.is_main)
    ddp_model = distributed.wrap(model, d)
    guard = NonFiniteGuard("sft", cfg.skip_nonfinite)

    # 2. Train on response tokens only.
    model.train()
    first_loss = heldout_loss(model, heldout, tok.pad_token_id, d.device)
    if start == 0:  # a resumed run logged its steps up to `start` already
        run.log(0, {"eval/loss": first_loss})
    for step in tqdm(range(start, max_steps), desc="sft", disable=not d.is_main, initial=start, total=max_steps):
        lr = cosine_lr(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        set_lr(optimizer, lr)
        idx = distributed.shard(epoch_batches(len(train_rows), cfg.batch_size, step, cfg.seed).tolist(), d)
        ids, attn, labels = (t.to(d.device) for t in sft_batch([train_rows[i] for i in idx], tok.pad_token_id))
        n_tokens = distributed.global_sum((labels[:, 1:] != IGNORE_INDEX).sum(), d)
        logits = ddp_model(input_ids=ids, attention_mask=attn).logits  # (B, T, V)
        loss, _ = lm_loss(logits[:, :-1], labels[:, 1:], normalizer=n_tokens)
        (loss * d.world_size).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        global_loss = distributed.global_sum(loss.detach(), d)  # the same on every rank: all ranks skip or stop together
        if guard.ok(step, loss=global_loss, grad_norm=grad_norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        # 3. Log, evaluate, sample, checkpoint.
        metrics = {"train/loss": global_loss.item(), "train/lr": lr, "train/grad_norm": grad_norm.item(), **guard.metrics()}
        if due(step, cfg.eval_every) or step + 1 == max_steps:
            metrics["eval/loss"] = heldout_loss(model, heldout, tok.pad_token_id, d.device)
        run.log(step + 1, metrics)
        if d.is_main and due(step, cfg.sample_every):
            log_samples(run, model, tok, [e.prompt for e in examples[:3]], step + 1, [e.completion for e in examples[:3]])
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < max_steps and d.is_main:
            checkpoint.save_checkpoint(cfg.out_dir, step + 1, {"model": model}, {"optimizer": optimizer.state_dict()}, tok)
        distributed.barrier(d)

    out = os.path.join(cfg.out_dir, "model")
    guard.finish()
    if d.is_main:
        checkpoint.save_model("sft", model, tok, out)
        print(f"[sft] held-out loss {first_loss:.3f} -> {metrics.get('eval/loss', float('nan')):.3f}; saved {out}", flush=True)
    run.close()
    distributed.close(d)
    return out


@torch.no_grad()
def heldout_loss(model, rows, pad_id: int, device, batch_size: int = 64) -> float:
    """Mean response-token loss over held-out rendered examples."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        ids, attn, labels = (t.to(device) for t in sft_batch(rows[i : i + batch_size], pad_id))
        n = (labels[:, 1:] != IGNORE_INDEX).sum().item()
        loss, _ = lm_loss(model(input_ids=ids, attention_mask=attn).logits[:, :-1], labels[:, 1:])
        total, count = total + loss.item() * n, count + n
    model.train()
    return total / max(count, 1)
