"""Stage 2: a Bradley-Terry reward model trained on preference pairs.

P(A > B) = sigmoid(r(A) - r(B)); loss = -log sigmoid(r_chosen - r_rejected [- margin]).
The backbone is initialised from the SFT model and a scalar head is read at the
last real token (rlhfkit.models.reward). As in InstructGPT, the pairs that came
from one ranking (a `group`: K responses give K(K-1)/2 pairs) stay in one batch —
each response is then encoded once per batch and correlated pairs do not
spread over many steps, which overfits. Dropout is off. After training the
scores are shifted so their mean over the SFT samples in the training data is 0
(Ziegler et al. 2019); the offset and std are stored in the model's config.

Absolute marks: where the labellers also marked each answer acceptable or not
(`meta.chosen_acceptable` / `meta.rejected_acceptable`, as the simulated panel
does), `accept_coef` adds a logistic loss putting acceptable answers above 0
and the others below (losses.acceptability_loss). Bradley-Terry alone leaves
each prompt's offset free, so scores of answers to different prompts are not
comparable; the marks tie them to one scale. Pairs without marks train as
plain Bradley-Terry.

Data: preference JSONL / Parquet / HF dataset (`prompt`, `chosen`, `rejected`),
as exported by the feedback store (human, simulated or AI-judge labels alike).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from tqdm import tqdm

from rlhfkit import checkpoint, distributed
from rlhfkit.data.chat import render_examples
from rlhfkit.data.loaders import ACCEPTABLE_FIELDS
from rlhfkit.data.packing import epoch_batches
from rlhfkit.data.records import Comparison
from rlhfkit.losses import acceptability_loss, bradley_terry_loss
from rlhfkit.models import lora, precision
from rlhfkit.models.lora import LoraSettings
from rlhfkit.models.precision import Precision
from rlhfkit.models.packed import prompt_length, use_packing
from rlhfkit.models.reward import backbone_packs, backbone_shares, load_scalar_model, row_scores, scalar_model_from_lm
from rlhfkit.optim import NonFiniteGuard, adamw, cosine_lr, set_lr
from rlhfkit.tracking import Run, due, seed_everything


@dataclass
class Config:
    out_dir: str = "runs/rm"  # run directory; the reward model lands in <out_dir>/model
    seed: int = 0  # seeds head init, split and batch order
    resume: Literal["auto", "never"] = "auto"  # auto: continue out_dir's run if its settings and inputs match (else an error); never: start afresh
    model: str = "runs/sft/model"  # backbone initialisation (a causal LM directory)
    data: str = "runs/feedback/pairs.jsonl"  # preference pairs file/dir
    heldout_fraction: float = 0.1  # groups (rankings) kept out for held-out accuracy
    split: str = "train"  # split of a dataset folder / saved DatasetDict to train on
    eval_split: str | None = None  # split held out for evaluation (None: heldout_fraction of the training split)
    epochs: float = 4.0  # passes over the training groups
    batch_groups: int = 8  # rankings per optimiser step (all their pairs)
    micro_batch_groups: int | None = None  # rankings per forward/backward on a rank; gradients accumulate over the step (None: all)
    lr: float = 3e-4  # peak learning rate
    warmup_steps: int = 10  # linear warmup
    min_lr_ratio: float = 0.1  # cosine floor
    weight_decay: float = 0.0  # AdamW decay on matrices
    grad_clip: float = 1.0  # max gradient norm
    skip_nonfinite: int = 3  # non-finite steps in a row skipped (no update, counted) before the run stops with an error; 0: stop at the first
    margin: float | None = None  # BT margin (Llama 2 style) subtracted from r_c - r_r; a pair's own `margin` column wins
    pair_weight: Literal["pair", "ranking"] = "pair"  # pair: every pair counts once | ranking: every ranking once (its pairs 1/C(K,2), InstructGPT)
    accept_coef: float = 1.0  # weight of the acceptability loss on pairs with acceptable marks (0: off)
    max_len: int = 256  # longest rendered prompt + response
    packing: bool = True  # padding-free batches (several answers a row; rlhfkit.models.packed) when the model keeps them apart, checked at start; false: right-padded
    share_prompts: bool = True  # with packing: the answers to one prompt in a batch share one copy of its tokens (pack_shared), when the model honours the mask, checked at start
    eval_every: int = 50  # held-out accuracy every N steps
    ckpt_every: int = 200  # checkpoint (model, optimiser, RNG) every N steps; a rerun resumes from the last
    evaluate: bool = True  # after training, held-out calibration and the annotators' agreement ceiling
    precision: Precision = "auto"  # fp32 | bf16-mixed | fp16-mixed (fp32 master weights, autocast) | bf16 (pure) | auto: bf16-mixed on GPU, else fp32
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~1/3 more compute
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: ddp replicates the model on every rank | fsdp shards weights, gradients and optimiser state (FSDP2)
    lora: LoraSettings = field(default_factory=LoraSettings)  # LoRA adapters (lora.r > 0) and the score head train; saved merged
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0: torch default)

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if self.lora.r and not self.lora.merge:
            raise ConfigError("'lora.merge': a reward model is always saved merged (PPO and eval read its score "
                              "offset from its config.json); drop lora.merge=false")
        distributed.check_parallel(self.parallel, self.precision)


def group_pairs(pairs: list[Comparison]) -> list[list[Comparison]]:
    """Pairs grouped by ranking (`group`, else prompt), in first-seen order."""
    groups: dict[str, list[Comparison]] = defaultdict(list)
    for p in pairs:
        groups[p.group or p.prompt].append(p)
    return list(groups.values())


def score_pairs(model, ids_of: dict, pad_id: int, pairs: list[Comparison], device, normalized: bool = False,
                packed: bool = False, shared: bool = False):
    """Scores of chosen and rejected, (N,) each; every distinct (prompt, response) is scored once.
    `ids_of`: (prompt, response) -> its rendered token ids and prompt length (`render_all`); `packed`: padding-free;
    `shared`: packed with each prompt once."""
    texts: dict[tuple[str, str], int] = {}
    for p in pairs:
        for r in (p.chosen, p.rejected):
            texts.setdefault((p.prompt, r), len(texts))
    scores = _scores(model, ids_of, list(texts), pad_id, normalized, packed, shared)  # (U,)
    chosen = scores[[texts[(p.prompt, p.chosen)] for p in pairs]]
    rejected = scores[[texts[(p.prompt, p.rejected)] for p in pairs]]
    return chosen, rejected


def acceptable_marks(pairs: list[Comparison]) -> torch.Tensor:
    """(2N,) acceptability marks of the chosen then the rejected sides, 1. / 0., NaN where a pair has none."""
    mark = lambda v: float("nan") if v is None else float(v)  # noqa: E731
    return torch.tensor([mark(p.meta.get(name)) for name in ACCEPTABLE_FIELDS for p in pairs])


def pair_margins(pairs: list[Comparison], default: float | None, device=None) -> torch.Tensor | None:
    """(N,) Bradley-Terry margins: a pair's own `margin` column where it has one, else `default` (0 when
    unset); None when no pair has one and there is no default (the plain loss)."""
    own = [p.meta.get("margin") for p in pairs]
    if default is None and all(m is None for m in own):
        return None
    return torch.tensor([float(default or 0.0) if m is None else float(m) for m in own], device=device)


def pair_weights(groups: list[list[Comparison]], how: str) -> torch.Tensor | None:
    """Per-pair loss weights of a batch of rankings: None (pair: all 1) or 1 / (pairs in its ranking)."""
    if how == "pair":
        return None
    return torch.tensor([1.0 / len(g) for g in groups for _ in g])


def loss_weights(n_pairs: int, marks: torch.Tensor, weights=None) -> torch.Tensor:
    """(2,) float64: the total weight of the pairs and of the marked sides, the two means' denominators."""
    w = torch.ones(n_pairs, dtype=torch.float64) if weights is None else weights.double().cpu()
    return torch.stack([w.sum(), torch.cat([w, w])[~marks.isnan()].sum()])


def rm_loss(chosen, rejected, marks, margin, accept_coef, weights=None, totals=None):
    """Bradley-Terry on the pairs plus `accept_coef` x the acceptability loss on the marked sides
    (each side of a pair weighted as the pair). `totals` (`loss_weights` of the whole global batch) when
    these pairs are one rank's share: each mean becomes this share's weighted sum over the global total,
    so the ranks' losses and gradients add up to the global batch's."""
    share = loss_weights(len(chosen), marks, weights) / totals if totals is not None else torch.ones(2, dtype=torch.float64)
    loss, stats = bradley_terry_loss(chosen, rejected, margin, weights)  # weighted_mean moves weights to the scores
    loss = loss * float(share[0])
    marked = ~marks.isnan()
    if accept_coef and marked.any():
        side_weights = None if weights is None else torch.cat([weights, weights])[marked]
        accept, accept_stats = acceptability_loss(torch.cat([chosen, rejected])[marked], marks[marked].to(chosen.device),
                                                  side_weights)
        loss, stats = loss + accept_coef * accept * float(share[1]), {**stats, **accept_stats}
    return loss, stats


def _scores(model, ids_of: dict, keys: list, pad_id: int, normalized: bool, packed: bool, shared: bool) -> torch.Tensor:
    rows = [ids_of[k] for k in keys]
    return row_scores(model, [ids for ids, _ in rows], pad_id, normalized, packed,
                      [n for _, n in rows] if packed and shared else None)


def render_all(tok, groups: list[list[Comparison]], max_len: int) -> dict:
    """(prompt, response) -> (token ids, how many of them are the prompt's), for every answer of `groups`, rendered
    once for the whole run (saying how many max_len cuts)."""
    distinct = list(dict.fromkeys((p.prompt, r) for g in groups for p in g for r in (p.chosen, p.rejected)))
    return dict(zip(distinct, ((ids, prompt_length(mask)) for ids, mask in render_examples(tok, distinct, max_len, "rm"))))


@torch.no_grad()
def accuracy(model, ids_of: dict, pad_id: int, groups: list[list[Comparison]], device, packed: bool = False,
             shared: bool = False) -> dict[str, float]:
    """Held-out pairwise accuracy and, over the marked answers, how often sign(raw score) matches the mark."""
    model.eval()
    right = total = accept_right = marked = 0
    for i in range(0, len(groups), 16):
        pairs = [p for g in groups[i : i + 16] for p in g]
        c, r = score_pairs(model, ids_of, pad_id, pairs, device, packed=packed, shared=shared)
        right, total = right + (c > r).sum().item(), total + len(pairs)
        marks = acceptable_marks(pairs)
        sel = ~marks.isnan()
        if sel.any():
            _, stats = acceptability_loss(torch.cat([c, r]).cpu()[sel], marks[sel])
            accept_right += stats["rm/accept_accuracy"].item() * sel.sum().item()
            marked += sel.sum().item()
    model.train()
    out = {"eval/accuracy": right / max(total, 1)}
    if marked:
        out["eval/accept_accuracy"] = accept_right / marked
    return out


def train(cfg: Config) -> str:
    from rlhfkit.data.loaders import load_preferences, split_heldout

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = distributed.init(cfg.device)  # data parallel under torchrun: each rank scores a share of every step's rankings
    seed_everything(cfg.seed)
    run = Run(cfg.out_dir, cfg, cfg.seed, "rm", d.rank)

    # 1. Data: pairs grouped by ranking; held-out split by group.
    heldout, train_groups = split_heldout(group_pairs(load_preferences(cfg.data, cfg.split)), cfg.heldout_fraction, cfg.seed,
                                          cfg.data, "rankings (pair groups)",
                                          group_pairs(load_preferences(cfg.data, cfg.eval_split)) if cfg.eval_split else None)
    n_held = len(heldout)
    max_steps = max(1, int(cfg.epochs * len(train_groups) / cfg.batch_groups))
    n_pairs = sum(map(len, train_groups))
    print(f"[rm] {n_pairs} pairs in {len(train_groups)} rankings (+{n_held} held out), {max_steps} steps", flush=True)

    # 2. Model: SFT backbone + fresh scalar head (or the last checkpoint's, when resuming).
    ckpt = checkpoint.latest_checkpoint(cfg.out_dir)
    device, prec = d.device, precision.resolve(cfg.precision, d.device)
    dtype = precision.weights_dtype(prec)
    model, tok = lora.trainable(partial(scalar_model_from_lm, cfg.model, device=device, dtype=dtype, seed=cfg.seed),
                                partial(load_scalar_model, device=device, dtype=dtype), ckpt and os.path.join(ckpt, "rm"),
                                cfg.lora, "SEQ_CLS")
    precision.prepare(model, prec, device, cfg.gradient_checkpointing)
    ids_of, pad_id = render_all(tok, heldout + train_groups, cfg.max_len), tok.pad_token_id
    packed = use_packing("rm", cfg.packing, lambda: backbone_packs(model))  # checked before any wrapper or sharding
    shared = packed and cfg.share_prompts and backbone_shares(model)
    if packed and cfg.share_prompts:
        print(f"[rm] {'each prompt once a batch (its answers share its tokens)' if shared else 'a prompt with each answer: the model does not honour a shared-prompt mask'}", flush=True)
    if cfg.parallel == "fsdp":  # FSDP2 shards (before the optimizer sees them); under DDP the stage sums gradients itself
        distributed.shard_model(model, d, prec)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay)
    start, _ = checkpoint.resume(ckpt, cfg.out_dir, optimizer, "rm", d.is_main, model)
    if not start and distributed.joins(d, model):
        run.log(0, accuracy(model, ids_of, pad_id, heldout, device, packed, shared))

    # 3. Train: all pairs of a few rankings per step.
    model.train()
    guard, scaler = NonFiniteGuard("rm", cfg.skip_nonfinite), precision.Scaler(prec, device)
    for step in tqdm(range(start, max_steps), desc="rm", initial=start, total=max_steps):
        lr = cosine_lr(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        set_lr(optimizer, lr)
        batch = [train_groups[i] for i in epoch_batches(len(train_groups), cfg.batch_groups, step, cfg.seed)]
        every = [p for g in batch for p in g]
        totals = loss_weights(len(every), acceptable_marks(every), pair_weights(batch, cfg.pair_weight))
        sums: dict[str, torch.Tensor] = {}  # the global batch's loss and pair-weighted means, this rank's shares
        for micro in distributed.micro_batches(model, distributed.shard(batch, d), cfg.micro_batch_groups):  # whole rankings
            pairs = [p for g in micro for p in g]
            chosen, rejected = score_pairs(model, ids_of, pad_id, pairs, device, packed=packed, shared=shared)
            loss, stats = rm_loss(chosen, rejected, acceptable_marks(pairs), pair_margins(pairs, cfg.margin, device),
                                  cfg.accept_coef, pair_weights(micro, cfg.pair_weight), totals)
            scaler.backward(loss)  # each share's loss is already over the global total
            share = len(pairs) / len(every)
            for name, v in (("loss", loss.detach()), ("accuracy", stats["rm/accuracy"] * share), ("margin", stats["rm/margin"] * share)):
                sums[name] = sums.get(name, 0.0) + v
        distributed.sum_gradients(model.parameters(), d)
        scaler.unscale(optimizer)
        grad_norm = distributed.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        loss = distributed.global_sum(sums["loss"], d)  # the global batch's loss
        scaler.step(optimizer, guard, step, loss=loss, grad_norm=grad_norm)
        optimizer.zero_grad(set_to_none=True)
        metrics = {"train/loss": loss.item(), "train/accuracy": distributed.global_sum(sums["accuracy"], d).item(),
                   "train/margin": distributed.global_sum(sums["margin"], d).item(), "train/lr": lr,
                   "train/grad_norm": grad_norm.item(), **guard.metrics()}
        if d.world_size == 1 and not cfg.micro_batch_groups and "rm/accept_loss" in stats:
            metrics["train/accept_loss"] = stats["rm/accept_loss"].item()
        if distributed.joins(d, model) and (due(step, cfg.eval_every) or step + 1 == max_steps):
            metrics.update(accuracy(model, ids_of, pad_id, heldout, device, packed, shared))
        run.log(step + 1, metrics)
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < max_steps:
            saved, optimizer_state = distributed.full_model(model, d), distributed.optimizer_state(model, optimizer, d)
            if d.is_main:
                checkpoint.save_checkpoint(cfg.out_dir, step + 1, {"rm": saved}, {"optimizer": optimizer_state}, tok)
        distributed.barrier(d)

    guard.finish()
    model = distributed.full_model(model, d)  # FSDP: every rank gathers, rank 0 gets the whole model (on CPU)
    device = next(model.parameters()).device if d.is_main else device
    if not d.is_main:  # rank 0 alone normalises, evaluates and saves
        run.close()
        distributed.close(d)
        return os.path.join(cfg.out_dir, "model")
    # 4. Normalise: mean score 0 over the (SFT-sampled) responses of the training data.
    offset, std = normalisation(model, ids_of, pad_id, [p for g in train_groups for p in g], device, packed, shared)
    model.config.rlhfkit_score_offset, model.config.rlhfkit_score_std = offset, std
    out = os.path.join(cfg.out_dir, "model")
    model = lora.save_final("rm", model, tok, cfg.out_dir, cfg.lora)  # with LoRA, merged (evaluated below as saved)
    final = {"heldout_accuracy": metrics["eval/accuracy"], "heldout_accept_accuracy": metrics.get("eval/accept_accuracy"),
             "score_offset": offset, "score_std": std,
             "train_pairs": n_pairs, "heldout_pairs": sum(map(len, heldout))}
    print(f"[rm] held-out accuracy {final['heldout_accuracy']:.3f}; offset {offset:.3f}, std {std:.3f}; saved {out}", flush=True)
    if cfg.evaluate:
        from rlhfkit.evaluation.rm_eval import evaluate_reward_model

        final.update(evaluate_reward_model(model, tok, heldout, load_preferences(cfg.data)))
    with open(os.path.join(cfg.out_dir, "rm_metrics.json"), "w") as f:
        json.dump(final, f, indent=2)
    run.close()
    distributed.close(d)
    return out


@torch.no_grad()
def normalisation(model, ids_of: dict, pad_id: int, pairs: list[Comparison], device, packed: bool = False,
                  shared: bool = False) -> tuple[float, float]:
    """Mean and std of raw scores over the distinct responses in `pairs`."""
    model.eval()
    seen = list(dict.fromkeys((p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)))
    scores = []
    for i in range(0, len(seen), 64):
        scores.append(_scores(model, ids_of, seen[i : i + 64], pad_id, False, packed, shared))
    s = torch.cat(scores)
    return s.mean().item(), s.std().item()
