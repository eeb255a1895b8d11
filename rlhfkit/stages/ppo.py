"""Stage 3: PPO against a frozen reward model with a per-token KL penalty to the frozen SFT model.

The RLHF PPO of Ziegler et al. (2019) and InstructGPT (Ouyang et al. 2022), with
the implementation details that Huang et al. (2024, "The N+ implementation
details of RLHF with PPO") found to matter, each a default and configurable:
- four models: policy and reference (both from SFT), frozen reward model, and a
  critic initialised from the reward model (or, `value_head=policy`, a value
  head on the policy's backbone to save memory); dropout off everywhere;
- rollouts sampled at temperature T and logprobs recomputed with logits / T;
  responses truncated after the first EOS; a penalty for responses without EOS;
- reward = RM score at the last response token - beta * KL per token (k1 by
  default), beta adapted towards a target KL (Ziegler et al.; the default) or fixed;
- GAE with masked advantage whitening; clipped surrogate and clipped value loss;
  several epochs over shuffled minibatches; token-level losses divided by the
  global count of response tokens so gradient accumulation equals a big batch;
  gradient norms clipped per network (policy, critic), as separate optimisers
  would: with one joint norm the critic's early value gradients, 2-4x the
  policy's on the demo, shrank every policy step;
- optional PPO-ptx: the pretraining LM loss mixed in (InstructGPT).
Departures: the critic is a separate network by default (no shared trunk), and the reward
is not whitened by default (the RM is already normalised to mean 0 on SFT samples).

Inputs are plain files: `prompts` (the RL prompts, one rollout each per pass; list a prompt
twice to sample it twice as often), optional `eval_prompts` with an `evaluator` callable
for the periodic held-out evaluation (rlhfkit.evaluation.hooks), optional `ptx_data`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
from tqdm import tqdm

from rlhfkit import checkpoint, distributed
from rlhfkit.data.loaders import prompt_list, prompts_and_columns
from rlhfkit.data.packing import epoch_batches, pack_documents, read_corpus
from rlhfkit.evaluation.hooks import make_evaluator, training_eval
from rlhfkit.losses import explained_variance, lm_loss, ppo_policy_loss, ppo_value_loss
from rlhfkit.models import lora, precision
from rlhfkit.models.policy import load_policy
from rlhfkit.models.lora import LoraSettings
from rlhfkit.models.precision import Precision
from rlhfkit.models.logprobs import response_logprobs
from rlhfkit.models.packed import packs, use_packing
from rlhfkit.models.reward import (ValueHeadOnPolicy, backbone_packs, load_scalar_model, make_reward_fn, response_values,
                                   scalar_model_from_lm)
from rlhfkit.ops import masked_mean, masked_sum, masked_whiten
from rlhfkit.optim import NonFiniteGuard, clip_grad_norms, make_adamw, set_lr
from rlhfkit.rl import AdaptiveKLController, FixedKLController, KL_ESTIMATORS, gae, kl_penalized_rewards
from rlhfkit.rollout import collect_experience
from rlhfkit.tracking import Run, Stopwatch, due, seed_everything


@dataclass
class Config:
    out_dir: str = "runs/ppo"  # run directory; final policy in <out_dir>/model
    seed: int = 0  # seeds sampling and minibatch order
    resume: Literal["auto", "never"] = "auto"  # auto: continue out_dir's run if its settings and inputs match (else an error); never: start afresh
    policy: str = "runs/sft/model"  # initial policy, also the frozen reference
    reward: str = "rm"  # rm | package.module:function | http(s)://endpoint, or several joined by + (models.reward.make_reward_fn)
    reward_weights: list[float] = field(default_factory=list)  # one weight per reward of a "+" list (default: 1 each)
    reward_model: str = "runs/rm/model"  # frozen reward model (reward=rm)
    reward_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of a reward callable
    value_model: str | None = None  # critic init (None: the reward model, or the policy when reward != rm)
    value_head: str = "separate"  # separate: a critic network | policy: a head on the policy's backbone (less memory)
    prompts: str | None = None  # RL prompts file/dir (JSONL/Parquet/HF dataset with `prompt` or `messages`); required
    eval_prompts: str | None = None  # held-out prompts answered greedily every eval_every iterations (None: no such eval)
    evaluator: str | None = None  # package.module:function scoring those answers (rlhfkit.evaluation.hooks)
    evaluator_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the evaluator
    total_steps: int = 60  # PPO iterations (one rollout batch each)
    rollout_batch_size: int = 64  # prompts sampled per iteration
    minibatch_size: int = 32  # sequences per optimiser step
    micro_batch_size: int = 32  # sequences per forward/backward (grad accumulation = minibatch / micro)
    ppo_epochs: int = 2  # passes over each rollout batch
    max_new_tokens: int = 40  # response length limit
    packing: bool = True  # forwards over rollouts on their real tokens packed end to end (rlhfkit.models.packed) when the models keep packed sequences apart, checked at start; false: padded
    temperature: float = 1.0  # sampling temperature (logprobs recomputed with the same T)
    missing_eos_penalty: float | None = -1.0  # added to the score of a response without EOS (None: off)
    kl_coef: float = 0.5  # beta, the KL penalty coefficient (initial value if adaptive)
    kl_estimator: str = "k1"  # per-token KL in the reward: k1 | k2 | k3
    adaptive_kl: bool = True  # adapt beta towards kl_target (Ziegler et al. 2019); false: beta fixed at kl_coef
    kl_target: float = 0.5  # target KL per sequence (nats) for the adaptive controller
    kl_horizon: int = 2000  # controller horizon, in sequences
    score_clip: float | None = None  # clip RM scores to +-this (None: off)
    whiten_scores: bool = False  # whiten scores per rollout batch
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    clip_range: float = 0.2  # policy ratio clip
    clip_range_value: float = 0.2  # value clip around the rollout-time values
    vf_coef: float = 0.1  # value loss weight
    whiten_advantages: bool = True  # masked whitening of advantages per rollout batch
    lr: float = 2e-5  # Adam learning rate (constant after warmup)
    warmup_steps: int = 5  # iterations of linear warmup
    grad_clip: float = 1.0  # max gradient norm
    skip_nonfinite: int = 3  # non-finite steps in a row skipped (no update, counted) before the run stops with an error; 0: stop at the first
    clip_per_network: bool = True  # separate critic: clip its gradient norm and the policy's each on its own (false: jointly)
    ptx_coef: float = 0.0  # PPO-ptx: weight of the pretraining LM loss (0: off)
    ptx_data: str | None = None  # PPO-ptx text corpus (.txt, or JSONL/Parquet/HF dataset with `text`)
    ptx_batch_size: int = 8  # pretraining rows per minibatch when ptx_coef > 0
    eval_every: int = 20  # held-out eval (eval_prompts) every N iterations (0: off)
    sample_every: int = 20  # print decoded samples every N iterations
    ckpt_every: int = 20  # checkpoint every N iterations
    precision: Precision = "auto"  # fp32 | bf16-mixed | fp16-mixed (fp32 master weights, autocast) | bf16 (pure) | auto: bf16-mixed on GPU, else fp32
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~1/3 more compute
    parallel: Literal["ddp", "fsdp"] = "ddp"  # ddp only: fsdp is refused here (rollouts decode with the policy's weights read directly)
    lora: LoraSettings = field(default_factory=LoraSettings)  # LoRA adapters (lora.r > 0) on the policy and a separate critic; the reference is the policy with adapters off
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0: torch default)

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if self.rollout_batch_size % self.minibatch_size or self.minibatch_size % self.micro_batch_size:
            raise ConfigError(f"batch sizes must nest: rollout_batch_size ({self.rollout_batch_size}) % minibatch_size "
                              f"({self.minibatch_size}) and minibatch_size % micro_batch_size ({self.micro_batch_size}) must be 0")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"'kl_estimator': expected one of {sorted(KL_ESTIMATORS)}, got {self.kl_estimator!r}")
        if self.value_head not in ("separate", "policy"):
            raise ConfigError(f"'value_head': expected separate or policy, got {self.value_head!r}")
        if not self.prompts:
            raise ConfigError("'prompts': give the RL prompts, e.g. prompts=prompts.jsonl")
        if self.ptx_coef > 0 and not self.ptx_data:
            raise ConfigError("'ptx_data': PPO-ptx (ptx_coef > 0) needs a pretraining text corpus")
        if self.parallel == "fsdp":
            raise ConfigError("'parallel': fsdp is not supported by ppo: it samples rollouts with a decoder that reads "
                              "the policy's weights directly, which FSDP keeps as shards; use parallel=ddp (with lora.r, "
                              "gradient_checkpointing and value_head=policy to save memory)")
        if self.value_head == "policy" and self.value_model:
            raise ConfigError("'value_model': a value head on the policy starts from the policy; drop value_model "
                              "or set value_head=separate")


def batch_plan(cfg: Config) -> str:
    """The whole batch vocabulary, derived once."""
    n_mb = cfg.rollout_batch_size // cfg.minibatch_size
    accum = cfg.minibatch_size // cfg.micro_batch_size
    return (f"rollout {cfg.rollout_batch_size} seqs -> {cfg.ppo_epochs} epochs x {n_mb} minibatches of {cfg.minibatch_size} "
            f"(= {accum} micro-batches of {cfg.micro_batch_size}) = {cfg.ppo_epochs * n_mb} optimiser steps per iteration")


def train(cfg: Config) -> str:
    d = distributed.init(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    run = Run(cfg.out_dir, cfg, cfg.seed, "ppo", d.rank)
    prompts, columns = prompts_and_columns(cfg.prompts)
    eval_prompts = prompt_list(cfg.eval_prompts) if cfg.eval_prompts else []
    evaluator = make_evaluator(cfg.evaluator, cfg.evaluator_args)
    if d.is_main:
        print(f"[ppo] {len(prompts)} prompts; {batch_plan(cfg)}"
              f"{f'; {d.world_size} ranks' if d.world_size > 1 else ''}", flush=True)

    # Models: policy + frozen reference (SFT), frozen reward model, critic (from the RM). With LoRA, the policy
    # and a separate critic train adapters, and the reference is the policy with its adapters disabled.
    ckpt = checkpoint.latest_checkpoint(cfg.out_dir)
    device = d.device
    policy, tok, prec, make_reference = load_policy(cfg, device, ckpt)
    ref = make_reference()
    reward_fn = make_reward_fn(cfg.reward, cfg.reward_model, device, cfg.reward_args, cfg.reward_weights)
    if cfg.value_head == "policy":  # one network: a value head on the policy's backbone
        critic = ValueHeadOnPolicy(policy, seed=cfg.seed)
    else:  # from the value model or the RM; with neither, the policy's backbone with a fresh head
        dtype, init = precision.weights_dtype(prec), cfg.value_model or (cfg.reward_model if cfg.reward == "rm" else None)
        load_base = partial(load_scalar_model, init, device=device, dtype=dtype) if init else \
            partial(scalar_model_from_lm, cfg.policy, device=device, dtype=dtype, seed=cfg.seed)
        critic, _ = lora.trainable(load_base, partial(load_scalar_model, device=device, dtype=dtype),
                                   ckpt and os.path.join(ckpt, "critic"), cfg.lora, "SEQ_CLS")
        precision.prepare(critic, prec, device, cfg.gradient_checkpointing)
    packed = use_packing("ppo", cfg.packing, lambda: packs(policy), lambda: packs(ref), lambda: backbone_packs(critic))
    params = list({id(p): p for p in (*policy.parameters(), *critic.parameters()) if p.requires_grad}.values())  # shared backbone once
    optimizer = make_adamw(params, lr=cfg.lr, eps=1e-5, weight_decay=0.0)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl else FixedKLController(cfg.kl_coef)
    ptx_rows = pack_documents(tok, read_corpus(cfg.ptx_data), 128) if cfg.ptx_coef > 0 else None
    start, state = checkpoint.resume(ckpt, cfg.out_dir, optimizer, "ppo", d.is_main)
    if start:
        kl_ctl.load_state_dict(state["kl_ctl"])
        if cfg.value_head == "policy":
            critic.score.load_state_dict(state["value_head"])

    sw = Stopwatch()
    guard, scaler = NonFiniteGuard("ppo", cfg.skip_nonfinite), precision.Scaler(prec, device)
    rm_fn = reward_fn if cfg.reward == "rm" else None
    total = partial(distributed.global_sum, d=d) if d.world_size > 1 else None  # statistics of the global batch
    if start == 0 and cfg.eval_every and eval_prompts and d.is_main:  # the SFT starting point: KL 0 on the over-optimisation curve
        run.log(0, training_eval(policy, tok, eval_prompts, rm_fn, evaluator))
    for step in tqdm(range(start, cfg.total_steps), desc="ppo", initial=start, total=cfg.total_steps, disable=not d.is_main):
        set_lr(optimizer, cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps)))
        batch = epoch_batches(len(prompts), cfg.rollout_batch_size, step, cfg.seed).tolist()
        rows = distributed.owned_rows(len(batch), d)  # this rank's rows of the rollout batch
        idx = [batch[r] for r in rows]
        batch_prompts = [prompts[i] for i in idx]

        # 1. Generate responses and 2. score them; 3. logprobs of policy and reference (no grad).
        exp = collect_experience(policy, ref, tok, batch_prompts, reward_fn, max_new_tokens=cfg.max_new_tokens,
                                 temperature=cfg.temperature, missing_eos_penalty=cfg.missing_eos_penalty, stopwatch=sw,
                                 columns={k: [v[i] for i in idx] for k, v in columns.items()},
                                 generator=distributed.step_generator(cfg.seed, step, 0), rows=rows, n_rows=len(batch),
                                 packed=packed)
        mask = exp.mask  # (B, R)
        scores = exp.scores
        if cfg.score_clip is not None:
            scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
        if cfg.whiten_scores:
            scores = masked_whiten(scores, torch.ones_like(mask[:, 0]), total=total)

        # 4. Values of the critic at rollout time, and KL-penalised per-token rewards.
        with torch.no_grad(), sw("value"):
            critic.eval()
            values = response_values(critic, exp.input_ids, exp.attention_mask, exp.prompt_len, exp.packed)  # (B, R)
            values = values.masked_fill(~mask, 0.0)
            rewards, kl = kl_penalized_rewards(scores, exp.logprobs, exp.ref_logprobs, mask, kl_ctl.value, cfg.kl_estimator)

            # 5. Advantages (GAE) and returns; advantages whitened over the global batch's response tokens.
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask, total=total)

        # 6. PPO epochs over shuffled minibatches, with gradient accumulation over micro-batches.
        with sw("train"):
            stats = ppo_epochs(cfg, d, (step, rows, len(batch)), policy, critic, optimizer, (guard, scaler), exp, values,
                               advantages, returns, ptx_rows)

        # 7. Log the RLHF dashboard (global means); adapt beta; evaluate, sample, checkpoint.
        seq_kl = masked_sum(kl, mask, dim=1)  # (B,) KL of each sequence to the reference
        n_seq = mask.shape[0]
        means = distributed.Means()
        means.add({"objective/scores": exp.scores.mean(), "objective/kl": seq_kl.mean(),
                   "objective/rlhf_reward": (exp.scores - kl_ctl.value * seq_kl).mean(),
                   "rollout/response_length": mask.sum(1).float().mean(), "rollout/eos_rate": exp.terminated.float().mean()}, n_seq)
        means.add({"ppo/returns/mean": masked_mean(returns, mask)}, mask.sum().item())  # a token mean
        metrics = stats | means.result(d) | guard.metrics() | sw.pop()
        metrics.update({
            "objective/non_score_reward": -kl_ctl.value * metrics["objective/kl"],
            "objective/kl_coef": kl_ctl.value,
            "ppo/val/explained_variance": explained_variance(values, returns, mask, total).item(),
            "objective/entropy": metrics.pop("objective/entropy_token") * metrics["rollout/response_length"],
        })
        kl_ctl.update(metrics["objective/kl"], len(batch))
        if cfg.eval_every and (due(step, cfg.eval_every) or step + 1 == cfg.total_steps) and d.is_main:
            metrics.update(training_eval(policy, tok, eval_prompts, rm_fn, evaluator))
        run.log(step + 1, metrics)
        if due(step, cfg.sample_every) and d.is_main:
            run.log_samples(step + 1, [{"prompt": p, "response": r, "score": float(s), "kl": float(k)}
                                       for p, r, s, k in zip(exp.prompts[:4], exp.responses[:4], exp.scores[:4], seq_kl[:4])])
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.total_steps and d.is_main:
            shared = cfg.value_head == "policy"  # the head is a tensor in the state, the backbone is the policy's
            checkpoint.save_checkpoint(cfg.out_dir, step + 1, {"policy": policy} if shared else {"policy": policy, "critic": critic},
                                       {"optimizer": optimizer.state_dict(), "kl_ctl": kl_ctl.state_dict(),
                                        **({"value_head": critic.score.state_dict()} if shared else {})}, tok)
        distributed.barrier(d)

    guard.finish()
    out = os.path.join(cfg.out_dir, "model")
    if d.is_main:
        lora.save_final("ppo", policy, tok, cfg.out_dir, cfg.lora)
        if start < cfg.total_steps:
            target = f" (target {cfg.kl_target:g}, beta now {kl_ctl.value:.3f})" if cfg.adaptive_kl else f" (fixed beta {kl_ctl.value:g})"
            print(f"[ppo] final KL to the reference {metrics['objective/kl']:.3f} nats/sequence{target}", flush=True)
        print(f"[ppo] saved {out}", flush=True)
    run.close()
    distributed.close(d)
    return out


def ppo_epochs(cfg: Config, d, where: tuple, policy, critic, optimizer, guards, exp, values, advantages, returns,
               ptx_rows) -> dict[str, float]:
    """Step 6: `ppo_epochs` passes of clipped policy + value updates over one rollout batch; `where` is
    `(step, this rank's rows of the rollout batch, its size)`, `guards` `(NonFiniteGuard, precision.Scaler)`. Returns the token-weighted means of the loss statistics and the mean
    gradient norms.

    Each optimiser step covers a minibatch of the global rollout batch (this rank trains on its members of
    it); its micro-batches accumulate gradients, with token losses divided by the minibatch's total response
    tokens on all ranks, and the gradients are summed over ranks: neither the micro-batch size nor the number
    of ranks changes the update.
    """
    policy.train(), critic.train()
    guard, scaler = guards
    own = {id(p) for p in policy.parameters()}
    groups = [[p for p in policy.parameters() if p.requires_grad],  # a shared trunk counts once
              [p for p in critic.parameters() if id(p) not in own and p.requires_grad]]
    separately = cfg.clip_per_network and cfg.value_head == "separate"  # a head on the policy: one network, one norm
    mask, P, means, norms = exp.mask, exp.prompt_len, distributed.Means(), distributed.Means()
    step, rows, n_rows = where
    order = distributed.step_generator(cfg.seed, step, 1)  # minibatch order and PPO-ptx rows, the same on every rank
    for _ in range(cfg.ppo_epochs):
        for mb in distributed.local_minibatches(rows, n_rows, cfg.minibatch_size, order):
            normalizer = distributed.global_sum(mask[mb].sum(), d).to(advantages.dtype)  # response tokens in this optimiser step
            for micro in mb.split(cfg.micro_batch_size):
                ids, attn = exp.input_ids[micro], exp.attention_mask[micro]
                new_logprobs, entropy = response_logprobs(policy, ids, attn, P, cfg.temperature, with_entropy=True, packed=exp.packed)
                new_values = response_values(critic, ids, attn, P, exp.packed)  # (b, R)
                pg_loss, pg_stats = ppo_policy_loss(new_logprobs, exp.logprobs[micro], advantages[micro], mask[micro],
                                                    cfg.clip_range, normalizer)
                vf_loss, vf_stats = ppo_value_loss(new_values, values[micro], returns[micro], mask[micro],
                                                   cfg.clip_range_value, normalizer)
                scaler.backward(pg_loss + cfg.vf_coef * vf_loss)
                pg_stats["objective/entropy_token"] = masked_mean(entropy.detach(), mask[micro])
                means.add_micro({**pg_stats, **vf_stats}, mask[micro].sum().item(), normalizer)
            if ptx_rows is not None:  # PPO-ptx (InstructGPT): keep the pretraining distribution; rows shared out to ranks
                picked = torch.randint(len(ptx_rows), (cfg.ptx_batch_size,), generator=order)[d.rank :: d.world_size]
                ptx, n_ptx = ptx_loss(policy, ptx_rows[picked], distributed.global_sum(len(picked), d))
                scaler.backward(cfg.ptx_coef * ptx)
                means.add({"ppo/ptx_loss": ptx.detach() * cfg.ptx_batch_size / max(len(picked), 1)}, len(picked))
            distributed.sum_gradients(params_of(groups), d)
            scaler.unscale(optimizer)
            policy_norm, critic_norm = clip_grad_norms(groups, cfg.grad_clip, separately)
            norms.add({"ppo/policy/grad_norm": policy_norm, "ppo/val/grad_norm": critic_norm}, 1.0 / d.world_size)
            scaler.step(optimizer, guard, None, policy_grad_norm=policy_norm, critic_grad_norm=critic_norm)
            optimizer.zero_grad(set_to_none=True)
    return means.result(d) | norms.result(d)  # value_head=policy: ppo/val/grad_norm is the head's alone


def params_of(groups) -> list:
    return [p for g in groups for p in g]


def ptx_loss(policy, rows: torch.Tensor, n_rows) -> tuple[torch.Tensor, int]:
    """Pretraining LM loss (PPO-ptx) on these packed rows, as this rank's share of a batch of `n_rows` rows of
    equal length: the sum of its rows' mean token losses divided by `n_rows` (summed over ranks: the batch mean)."""
    if not len(rows):
        return torch.zeros((), device=next(policy.parameters()).device), 0
    b = rows.to(next(policy.parameters()).device)
    loss, _ = lm_loss(policy(input_ids=b).logits[:, :-1], b[:, 1:])
    return loss * len(rows) / float(n_rows), len(rows)
