"""Direct Preference Optimization: preferences -> policy, no reward model, no sampling.

DPO (Rafailov et al. 2023): loss = -log sigmoid(beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))]),
with IPO (Azar et al. 2023) and conservative DPO (label smoothing, Mitchell 2023)
selectable by `loss_type` / `label_smoothing` (a dict lookup in rlhfkit.losses), and
RPO's chosen-NLL term (Pang et al. 2024) added with weight `nll_coef`.
Sequence logprobs are summed over response tokens. The reference model is the
initial policy; its logprobs are computed once before training and cached in
`<out_dir>/ref_logprobs.pt`, so the reference need not stay in memory. The cache is keyed by
the content it depends on (the reference model's files, the rendered pairs, the precision and device
type they were computed in): other data, another reference or another precision in the same out_dir
recomputes it.
Trains on the same preference pairs (store export / JSONL) as the reward model; with
`eval_prompts` (and an `evaluator`) it also answers held-out prompts every eval_every steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm import tqdm

from rlhfkit import checkpoint, distributed
from rlhfkit.data.chat import render_examples
from rlhfkit.data.loaders import prompt_list
from rlhfkit.data.packing import epoch_batches
from rlhfkit.evaluation.hooks import make_evaluator, training_eval
from rlhfkit.files import atomic_open, content_hash
from rlhfkit.losses import PREFERENCE_LOSSES, chosen_nll_loss
from rlhfkit.models import lora, precision
from rlhfkit.models.policy import load_policy
from rlhfkit.models.lora import LoraSettings
from rlhfkit.models.precision import Precision
from rlhfkit.optim import NonFiniteGuard, adamw, cosine_lr, set_lr
from rlhfkit.models.logprobs import scored_tokens, sequence_logprobs
from rlhfkit.models.packed import packs, prompt_length, shares_prompts, use_packing
from rlhfkit.tracking import Run, due, seed_everything


@dataclass
class Config:
    out_dir: str = "runs/dpo"  # run directory; final policy in <out_dir>/model
    seed: int = 0  # seeds split and batch order
    resume: Literal["auto", "never"] = "auto"  # auto: continue out_dir's run if its settings and inputs match (else an error); never: start afresh
    policy: str = "runs/sft/model"  # initial policy and reference
    data: str = "runs/feedback/pairs.jsonl"  # preference pairs file/dir
    loss_type: str = "sigmoid"  # sigmoid (DPO) | ipo
    beta: float = 0.1  # strength of the implicit KL regularisation
    label_smoothing: float = 0.0  # conservative DPO: assumed label-noise rate (sigmoid only)
    nll_coef: float = 1.0  # RPO: weight of the chosen responses' per-token NLL added to the loss (0: plain DPO)
    epochs: float = 1.0  # passes over the training pairs
    batch_size: int = 32  # pairs per optimiser step
    micro_batch_size: int = 32  # pairs per forward/backward
    lr: float = 2e-5  # peak learning rate
    warmup_steps: int = 10  # linear warmup
    min_lr_ratio: float = 0.1  # cosine floor
    grad_clip: float = 1.0  # max gradient norm
    skip_nonfinite: int = 3  # non-finite steps in a row skipped (no update, counted) before the run stops with an error; 0: stop at the first
    max_len: int = 256  # longest rendered prompt + response
    packing: bool = True  # padding-free batches (several sequences a row; rlhfkit.models.packed) when the model keeps them apart, checked at start; false: right-padded
    share_prompts: bool = True  # with packing: a pair's chosen and rejected share one copy of the prompt's tokens (pack_shared), when the model honours the mask, checked at start
    heldout_fraction: float = 0.05  # pairs kept out for implicit-reward accuracy
    split: str = "train"  # split of a dataset folder / saved DatasetDict to train on
    eval_split: str | None = None  # split held out for evaluation (None: heldout_fraction of the training split)
    eval_every: int = 50  # held-out pair metrics (and the eval_prompts eval) every N steps
    eval_prompts: str | None = None  # held-out prompts answered greedily at each eval (None: no such eval)
    evaluator: str | None = None  # package.module:function scoring those answers (rlhfkit.evaluation.hooks)
    evaluator_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the evaluator
    ckpt_every: int = 100  # checkpoint every N steps
    precision: Precision = "auto"  # fp32 | bf16-mixed | fp16-mixed (fp32 master weights, autocast) | bf16 (pure) | auto: bf16-mixed on GPU, else fp32
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~1/3 more compute
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: ddp replicates the model on every rank | fsdp shards weights, gradients and optimiser state (FSDP2)
    lora: LoraSettings = field(default_factory=LoraSettings)  # LoRA adapters (lora.r > 0); the reference is then the policy with adapters off
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0: torch default)

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if self.loss_type not in PREFERENCE_LOSSES:
            raise ConfigError(f"'loss_type': expected one of {sorted(PREFERENCE_LOSSES)}, got {self.loss_type!r}")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"'batch_size' ({self.batch_size}) must be a multiple of 'micro_batch_size' ({self.micro_batch_size})")
        distributed.check_parallel(self.parallel, self.precision)


@torch.no_grad()
def reference_logprobs(ref, rows, pad_id: int, d: distributed.Dist, used: list[int] | None = None,
                       batch_size: int = 64, packed: bool = False, shared: bool = False) -> torch.Tensor:
    """Summed reference logprobs of the rendered examples `used` (default: all): (N,) on CPU, NaN for the rest
    (a run that read one would fail loudly). An example that repeats (pairs share responses: a ranking of 5 makes 10
    pairs from 5 answers) is computed once, in batches that keep the examples of one prompt together (with `shared`,
    its tokens computed once a batch). Each rank computes its strided share of the distinct ones and the shares are
    summed across ranks, so every rank ends with all of them."""
    ref.eval()
    used = list(range(len(rows))) if used is None else used
    first: dict[tuple, int] = {}  # rendering -> the first index holding it
    same = [first.setdefault((tuple(rows[j][0]), tuple(rows[j][1])), j) for j in used]
    prompt = lambda j: rows[j][0][: prompt_length(rows[j][1])]  # noqa: E731
    mine = distributed.shard(sorted(set(same), key=lambda j: (prompt(j), j)), d)
    out = torch.zeros(len(rows), dtype=torch.float64)
    for i in range(0, len(mine), batch_size):
        part = mine[i : i + batch_size]
        out[part] = sequence_logprobs(ref, [rows[j] for j in part], pad_id, packed, shared).double().cpu()
    out = distributed.global_sum(out, d).float().cpu()
    out[used] = out[same]
    unused = torch.ones(len(rows), dtype=torch.bool)
    unused[used] = False
    return out.masked_fill(unused, float("nan"))


def train(cfg: Config) -> str:
    from rlhfkit.data.loaders import load_preferences, split_heldout

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = distributed.init(cfg.device)  # data parallel under torchrun: each rank takes a share of every batch
    seed_everything(cfg.seed)
    run = Run(cfg.out_dir, cfg, cfg.seed, "dpo", d.rank)
    loss_fn = PREFERENCE_LOSSES[cfg.loss_type]

    # 1. Data: render (prompt, chosen) and (prompt, rejected) once.
    held, train = split_heldout(load_preferences(cfg.data, cfg.split), cfg.heldout_fraction, cfg.seed, cfg.data, "pairs",
                                load_preferences(cfg.data, cfg.eval_split) if cfg.eval_split else None)
    pairs, n_held = held + train, len(held)
    ckpt = checkpoint.latest_checkpoint(cfg.out_dir)
    policy, tok, prec, make_reference = load_policy(cfg, d.device, ckpt)
    device = d.device
    rendered = render_examples(tok, [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs],
                               cfg.max_len, "dpo")
    chosen, rejected = rendered[: len(pairs)], rendered[len(pairs) :]
    packed = use_packing("dpo", cfg.packing, lambda: packs(policy))  # checked on the model before any wrapper
    shared = packed and cfg.share_prompts and shares_prompts(policy)
    if packed and cfg.share_prompts:
        print(f"[dpo] {'each prompt once a batch (chosen and rejected share its tokens)' if shared else 'a prompt with each answer: the model does not honour a shared-prompt mask'}", flush=True)
    chosen_tokens = torch.tensor([scored_tokens(row) for row in chosen], dtype=torch.float)

    # 2. Reference logprobs of the pairs the run will read (held out, and the batches of its steps: all of them
    #    from one epoch on), computed once and cached; the reference model is then freed (with LoRA it is the
    #    policy with its adapters disabled: no second copy of the weights).
    held, train_idx = list(range(n_held)), list(range(n_held, len(pairs)))
    max_steps = max(1, int(cfg.epochs * len(train_idx) / cfg.batch_size))
    used = held + sorted({train_idx[i] for step in range(max_steps)
                          for i in epoch_batches(len(train_idx), cfg.batch_size, step, cfg.seed).tolist()})
    cache = os.path.join(cfg.out_dir, "ref_logprobs.pt")  # keyed by what the numbers depend on, precision included
    key = content_hash([cfg.policy], chosen, rejected, used, prec, str(precision.frozen_dtype(prec)), str(d.device.type), packed, shared)
    cached = torch.load(cache) if os.path.exists(cache) else None
    if isinstance(cached, dict) and cached.get("key") == key:
        ref_c, ref_r = cached["chosen"], cached["rejected"]
    else:
        if cached is not None:
            print(f"[dpo] {cache} was computed for another reference model or other pairs; recomputing", flush=True)
        ref = make_reference()
        ref_packed = packed and packs(ref)
        both = reference_logprobs(ref, chosen + rejected, tok.pad_token_id, d, used + [len(pairs) + i for i in used],
                                  packed=ref_packed, shared=ref_packed and shared and shares_prompts(ref))
        ref_c, ref_r = both[: len(pairs)], both[len(pairs) :]
        if d.is_main:
            with atomic_open(cache, "wb") as f:  # a rank reading it never sees half a file
                torch.save({"key": key, "chosen": ref_c, "rejected": ref_r}, f)
        del ref
    distributed.barrier(d)
    print(f"[dpo] {len(train_idx)} pairs (+{n_held} held out), {max_steps} steps, loss {cfg.loss_type}, beta {cfg.beta}", flush=True)

    dp_policy = distributed.wrap(policy, d, cfg.parallel, prec)  # DDP, or FSDP2 shards (before the optimizer sees them)
    optimizer = adamw(policy, cfg.lr, 0.0)
    start, _ = checkpoint.resume(ckpt, cfg.out_dir, optimizer, "dpo", d.is_main, policy)
    eval_prompts = prompt_list(cfg.eval_prompts) if cfg.eval_prompts else []
    evaluator = make_evaluator(cfg.evaluator, cfg.evaluator_args)

    def batch_loss(idx: list[int], model=dp_policy):
        # chosen and rejected in one forward: one batch of 2b rows, larger matmuls, half the per-op overhead
        logp_c, logp_r = sequence_logprobs(model, [chosen[i] for i in idx] + [rejected[i] for i in idx],
                                           tok.pad_token_id, packed, shared).split(len(idx))
        loss, metrics = loss_fn(logp_c, logp_r, ref_c[idx].to(device), ref_r[idx].to(device), cfg.beta, cfg.label_smoothing)
        if cfg.nll_coef:
            nll, nll_metrics = chosen_nll_loss(logp_c, chosen_tokens[idx].to(device))
            loss, metrics = loss + cfg.nll_coef * nll, {**metrics, **nll_metrics}
        return loss, metrics

    # 3. Train: mean loss over the pairs of a step, accumulated over micro-batches.
    policy.train()
    guard, scaler = NonFiniteGuard("dpo", cfg.skip_nonfinite), precision.Scaler(prec, d.device)
    for step in tqdm(range(start, max_steps), desc="dpo", initial=start, total=max_steps):
        lr = cosine_lr(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        set_lr(optimizer, lr)
        idx = [train_idx[i] for i in epoch_batches(len(train_idx), cfg.batch_size, step, cfg.seed)]
        mine = distributed.shard(idx, d)  # this rank's pairs; each is weighted by 1 / (the global batch)
        stats: dict[str, float] = {}
        for micro in distributed.micro_batches(dp_policy, mine, cfg.micro_batch_size):
            loss, m = batch_loss(micro)
            scaler.backward(loss * len(micro) / len(idx) * d.world_size)  # DDP and FSDP average over ranks: undo it
            for name, v in {**m, "train/loss": loss.detach()}.items():
                stats[name] = stats.get(name, 0.0) + v.item() * len(micro) / len(idx)
        stats = {name: distributed.global_sum(v, d).item() for name, v in stats.items()}  # the global batch's means
        scaler.unscale(optimizer)
        grad_norm = distributed.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        scaler.step(optimizer, guard, step, loss=stats["train/loss"], grad_norm=grad_norm)
        optimizer.zero_grad(set_to_none=True)

        metrics = {**stats, "train/lr": lr, "train/grad_norm": grad_norm.item(), **guard.metrics()}
        if distributed.joins(d, policy) and (due(step, cfg.eval_every) or step + 1 == max_steps):  # rank 0 alone logs
            with torch.no_grad():
                policy.eval()
                _, held_stats = batch_loss(held, policy)
                policy.train()
            metrics.update({f"eval/{k.split('/', 1)[1]}": v.item() for k, v in held_stats.items()})
            metrics.update(training_eval(policy, tok, eval_prompts, evaluator=evaluator))
        run.log(step + 1, metrics)
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < max_steps:
            saved, optimizer_state = distributed.full_model(policy, d), distributed.optimizer_state(policy, optimizer, d)
            if d.is_main:
                checkpoint.save_checkpoint(cfg.out_dir, step + 1, {"policy": saved}, {"optimizer": optimizer_state}, tok)
        distributed.barrier(d)

    guard.finish()
    out = os.path.join(cfg.out_dir, "model")
    saved = distributed.full_model(policy, d)  # FSDP: every rank gathers, rank 0 gets the whole model
    if d.is_main:
        lora.save_final("dpo", saved, tok, cfg.out_dir, cfg.lora)
        print(f"[dpo] held-out implicit-reward accuracy {metrics.get('eval/rewards/accuracy', float('nan')):.3f}; saved {out}", flush=True)
    run.close()
    distributed.close(d)
    return out
