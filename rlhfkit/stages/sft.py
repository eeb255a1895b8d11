"""Stage 1: supervised fine-tuning on (prompt, ideal response) demonstrations.

Standard SFT (InstructGPT stage 1): next-token cross-entropy on the response
tokens only — prompt and padding are labelled -100 — with the chat template
rendering the prompt. Batches are right-padded per batch (padding-aware, no
cross-example attention). The loss is divided by the global number of response
tokens in the step, so any micro-batch or rank split equals one big batch.

Data: any JSONL / Parquet / HF dataset directory with `prompt`+`completion`,
`messages`, or plain `text` (trained on every token, no chat template; see rlhfkit.data.loaders). Every `sample_every` steps the model answers
a few held-out prompts, printed next to their demonstrations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from tqdm import tqdm

from rlhfkit import checkpoint, distributed
from rlhfkit.data.chat import IGNORE_INDEX, render_examples, sft_batch
from rlhfkit.data.packing import epoch_batches
from rlhfkit.data.loaders import load_sft, split_heldout
from rlhfkit.evaluation.hooks import log_samples
from rlhfkit.losses import lm_loss
from rlhfkit.models import lora, precision
from rlhfkit.models.load import load_causal_lm
from rlhfkit.models.logprobs import scored_tokens
from rlhfkit.models.packed import pack, packs, use_packing
from rlhfkit.models.lora import LoraSettings
from rlhfkit.models.precision import Precision
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
    packing: bool = True  # padding-free batches (several examples a row; rlhfkit.models.packed) when the model keeps them apart, checked at start; false: right-padded
    assistant_turns: Literal["last", "all"] = "last"  # train on the final assistant reply only, or on every assistant turn of a conversation
    batch_size: int = 32  # examples per optimiser step (global)
    micro_batch_size: int | None = None  # examples per forward/backward on a rank; gradients accumulate over the step (None: all)
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
    precision: Precision = "auto"  # fp32 | bf16-mixed | fp16-mixed (fp32 master weights, autocast) | bf16 (pure) | auto: bf16-mixed on GPU, else fp32
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~1/3 more compute
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: ddp replicates the model on every rank | fsdp shards weights, gradients and optimiser state (FSDP2)
    lora: LoraSettings = field(default_factory=LoraSettings)  # LoRA adapters (lora.r > 0) instead of full fine-tuning
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0: torch default)

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if not self.data:
            raise ConfigError("'data': give the demonstrations, e.g. data=demos.jsonl")
        distributed.check_parallel(self.parallel, self.precision)


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
    prec = precision.resolve(cfg.precision, d.device)
    load = partial(load_causal_lm, device=str(d.device), dtype=precision.weights_dtype(prec))
    model, tok = lora.trainable(partial(load, cfg.model), load, ckpt and os.path.join(ckpt, "model"), cfg.lora)
    precision.prepare(model, prec, d.device, cfg.gradient_checkpointing)
    rendered = render_examples(tok, [(e.prompt, e.completion) for e in examples], cfg.max_len, "sft", cfg.assistant_turns)
    heldout, train_rows = rendered[:n_held], rendered[n_held:]
    max_steps = max(1, int(cfg.epochs * len(train_rows) / cfg.batch_size))
    print(f"[sft] {len(train_rows)} demonstrations ({n_held} held out), {max_steps} steps of {cfg.batch_size}", flush=True)

    packed = use_packing("sft", cfg.packing, lambda: packs(model))  # checked on the model before any wrapper
    dp_model = distributed.wrap(model, d, cfg.parallel, prec)  # DDP, or FSDP2 shards (before the optimizer sees them)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay)
    start, _ = checkpoint.resume(ckpt, cfg.out_dir, optimizer, "sft", d.is_main, model)
    guard, scaler = NonFiniteGuard("sft", cfg.skip_nonfinite), precision.Scaler(prec, d.device)

    # 2. Train on response tokens only.
    model.train()
    first_loss = heldout_loss(model, heldout, tok.pad_token_id, d.device)
    if start == 0:  # a resumed run logged its steps up to `start` already
        run.log(0, {"eval/loss": first_loss})
    for step in tqdm(range(start, max_steps), desc="sft", disable=not d.is_main, initial=start, total=max_steps):
        lr = cosine_lr(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        set_lr(optimizer, lr)
        rows = [train_rows[i] for i in distributed.shard(epoch_batches(len(train_rows), cfg.batch_size, step, cfg.seed).tolist(), d)]
        n_tokens = distributed.global_sum(sum(map(scored_tokens, rows)), d)  # response tokens of the global batch
        loss = torch.zeros((), device=d.device)
        for micro in distributed.micro_batches(dp_model, rows, cfg.micro_batch_size):
            if packed:  # the examples end to end; position ids keep them apart
                ids, pos, labels = (t.to(d.device) for t in packed_sft_batch(micro, tok.pad_token_id))
                logits = dp_model(input_ids=ids, position_ids=pos, use_cache=False).logits  # (rows, T, V)
            else:
                ids, attn, labels = (t.to(d.device) for t in sft_batch(micro, tok.pad_token_id))
                logits = dp_model(input_ids=ids, attention_mask=attn).logits  # (b, T, V)
            micro_loss, _ = lm_loss(logits[:, :-1], labels[:, 1:], normalizer=n_tokens)  # a share of the global mean
            scaler.backward(micro_loss * d.world_size)  # DDP and FSDP average over ranks: undo it
            loss += micro_loss.detach()
        scaler.unscale(optimizer)
        grad_norm = distributed.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        global_loss = distributed.global_sum(loss, d)  # the same on every rank: all ranks skip or stop together
        scaler.step(optimizer, guard, step, loss=global_loss, grad_norm=grad_norm)
        optimizer.zero_grad(set_to_none=True)

        # 3. Log, evaluate, sample, checkpoint.
        metrics = {"train/loss": global_loss.item(), "train/lr": lr, "train/grad_norm": grad_norm.item(), **guard.metrics()}
        if due(step, cfg.eval_every) or step + 1 == max_steps:
            metrics["eval/loss"] = heldout_loss(model, heldout, tok.pad_token_id, d.device)
        run.log(step + 1, metrics)
        if distributed.joins(d, model) and due(step, cfg.sample_every):
            shown = [e for e in examples if e.prompt][:3]  # a plain-text row has no prompt to answer
            log_samples(run, model, tok, [e.prompt for e in shown], step + 1, [e.completion for e in shown])
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < max_steps:
            saved, optimizer_state = distributed.full_model(model, d), distributed.optimizer_state(model, optimizer, d)
            if d.is_main:
                checkpoint.save_checkpoint(cfg.out_dir, step + 1, {"model": saved}, {"optimizer": optimizer_state}, tok)
        distributed.barrier(d)

    out = os.path.join(cfg.out_dir, "model")
    guard.finish()
    saved = distributed.full_model(model, d)  # FSDP: every rank gathers, rank 0 gets the whole model
    if d.is_main:
        lora.save_final("sft", saved, tok, cfg.out_dir, cfg.lora)
        print(f"[sft] held-out loss {first_loss:.3f} -> {metrics.get('eval/loss', float('nan')):.3f}; saved {out}", flush=True)
    run.close()
    distributed.close(d)
    return out


def packed_sft_batch(examples, pad_id: int):
    """`sft_batch` without padding: `(input_ids, position_ids, labels)` of the examples packed end to end
    (`rlhfkit.models.packed.pack`); labels are IGNORE_INDEX off the trained tokens and on each example's first
    token (shifted by one, it would be the target of the previous example's last)."""
    p = pack([e[0] for e in examples], pad_id)
    trained = p.place([[False, *e[1][1:]] for e in examples], False)
    return p.input_ids, p.position_ids, torch.where(trained, p.input_ids, torch.full_like(p.input_ids, IGNORE_INDEX))


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
