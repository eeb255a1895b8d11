"""Critic-free online RL: RLOO (`Config`) and GRPO (`GRPOConfig`), one loop.

Both sample k responses per prompt and replace PPO's learned critic with a
baseline computed from the other samples of the same prompt:
- RLOO (Ahmadian et al. 2024, "Back to Basics"): A_i = R_i - mean_{j != i} R_j,
  with the KL penalty inside the sequence reward R = score - beta * KL(seq);
- GRPO (Shao et al. 2024, DeepSeekMath): A_i = (s_i - mean s) / std s over the
  group (0 for a group with no variance), KL to the reference as a k3 loss term.
The advantage estimator is a dict lookup; the loss is `policy_gradient_loss`
(clipped surrogate, token sum / global token count). Rewards come from the
reward model or from any Python callable `fn(prompts, responses, terminated)`,
e.g. a verifiable reward, `reward=my.module:fn`. `rlhfkit grpo` runs this file
with `GRPOConfig`, whose defaults differ only in the estimator and where the KL goes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm import tqdm

from rlhfkit import checkpoint, distributed
from rlhfkit.data.loaders import prompt_list, prompts_and_columns
from rlhfkit.data.packing import epoch_batches
from rlhfkit.evaluation.hooks import make_evaluator, training_eval
from rlhfkit.losses import policy_gradient_loss
from rlhfkit.models import lora, precision
from rlhfkit.models.policy import load_policy
from rlhfkit.models.lora import LoraSettings
from rlhfkit.models.precision import Precision
from rlhfkit.models.logprobs import response_logprobs
from rlhfkit.models.packed import packs, use_packing
from rlhfkit.models.reward import make_reward_fn
from rlhfkit.ops import masked_sum
from rlhfkit.optim import NonFiniteGuard, make_adamw, set_lr
from rlhfkit.rl import grpo_advantages, kl_k1, rloo_advantages
from rlhfkit.rollout import collect_experience
from rlhfkit.tracking import Run, Stopwatch, due, seed_everything

ADVANTAGES = {"rloo": rloo_advantages, "grpo": grpo_advantages}


@dataclass
class Config:
    out_dir: str = "runs/rloo"  # run directory; final policy in <out_dir>/model
    seed: int = 0  # seeds sampling and minibatch order
    resume: Literal["auto", "never"] = "auto"  # auto: continue out_dir's run if its settings and inputs match (else an error); never: start afresh
    estimator: str = "rloo"  # advantage baseline: rloo | grpo
    policy: str = "runs/sft/model"  # initial policy, also the frozen reference
    reward: str = "rm"  # rm | package.module:function | http(s)://endpoint, or several joined by + (models.reward.make_reward_fn)
    reward_weights: list[float] = field(default_factory=list)  # one weight per reward of a "+" list (default: 1 each)
    reward_model: str = "runs/rm/model"  # used when reward=rm
    reward_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of a reward callable
    prompts: str | None = None  # RL prompts file/dir (JSONL/Parquet/HF dataset with `prompt` or `messages`); required
    eval_prompts: str | None = None  # held-out prompts answered greedily every eval_every iterations (None: no such eval)
    evaluator: str | None = None  # package.module:function scoring those answers (rlhfkit.evaluation.hooks)
    evaluator_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the evaluator
    total_steps: int = 60  # iterations (one rollout batch each)
    prompts_per_step: int = 16  # prompts per iteration
    k: int = 4  # samples per prompt
    minibatch_size: int = 32  # sequences per optimiser step
    micro_batch_size: int = 32  # sequences per forward/backward
    ppo_epochs: int = 2  # passes over each rollout batch (1 = pure on-policy REINFORCE)
    max_new_tokens: int = 40  # response length limit
    packing: bool = True  # forwards over rollouts on their real tokens packed end to end (rlhfkit.models.packed) when the models keep packed sequences apart, checked at start; false: padded
    temperature: float = 1.0  # sampling temperature (docs/results.md: the demo's choice)
    missing_eos_penalty: float | None = -1.0  # added to the score of a response without EOS
    kl_coef: float = 0.1  # beta
    kl_in_reward: bool = True  # True: R = score - beta*KL(seq) (RLOO); False: k3 KL loss term (GRPO)
    clip_range: float = 0.2  # ratio clip
    lr: float = 2e-5  # Adam learning rate (constant after warmup)
    warmup_steps: int = 5  # iterations of linear warmup
    grad_clip: float = 1.0  # max gradient norm
    skip_nonfinite: int = 3  # non-finite steps in a row skipped (no update, counted) before the run stops with an error; 0: stop at the first
    eval_every: int = 20  # held-out eval (eval_prompts) every N iterations (0: off)
    sample_every: int = 20  # print samples every N iterations
    ckpt_every: int = 20  # checkpoint every N iterations
    precision: Precision = "auto"  # fp32 | bf16-mixed | fp16-mixed (fp32 master weights, autocast) | bf16 (pure) | auto: bf16-mixed on GPU, else fp32
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~1/3 more compute
    parallel: Literal["ddp", "fsdp"] = "ddp"  # ddp only: fsdp is refused here (rollouts decode with the policy's weights read directly)
    lora: LoraSettings = field(default_factory=LoraSettings)  # LoRA adapters (lora.r > 0); the reference is then the policy with adapters off
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0: torch default)

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if not self.prompts:
            raise ConfigError("'prompts': give the RL prompts, e.g. prompts=prompts.jsonl")
        if self.estimator not in ADVANTAGES:
            raise ConfigError(f"'estimator': expected one of {sorted(ADVANTAGES)}, got {self.estimator!r}")
        if self.parallel == "fsdp":
            raise ConfigError(f"'parallel': fsdp is not supported by {self.estimator}: it samples rollouts with a decoder that reads "
                              "the policy's weights directly, which FSDP keeps as shards; use parallel=ddp (with lora.r, "
                              "gradient_checkpointing to save memory)")
        n = self.prompts_per_step * self.k
        if n % self.minibatch_size or self.minibatch_size % self.micro_batch_size:
            raise ConfigError(f"batch sizes must nest: prompts_per_step*k ({n}) % minibatch_size ({self.minibatch_size}) "
                              f"and minibatch_size % micro_batch_size ({self.micro_batch_size}) must be 0")



@dataclass
class GRPOConfig(Config):
    """GRPO (Shao et al. 2024, DeepSeekMath): the same loop, group-normalised advantages, KL as a k3 loss term."""

    out_dir: str = "runs/grpo"  # run directory; final policy in <out_dir>/model
    estimator: str = "grpo"  # (A - mean) / std within each prompt's group
    kl_in_reward: bool = False  # KL as a k3 loss term (GRPO eq. 3)
    kl_coef: float = 0.1  # beta of the k3 term (DeepSeekMath used 0.04; docs/results.md: the demo's choice)
    temperature: float = 0.7  # sampling temperature (docs/results.md: the demo's choice)

def train(cfg: Config) -> str:
    d = distributed.init(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    run = Run(cfg.out_dir, cfg, cfg.seed, cfg.estimator, d.rank)
    prompts, columns = prompts_and_columns(cfg.prompts)
    eval_prompts = prompt_list(cfg.eval_prompts) if cfg.eval_prompts else []
    evaluator = make_evaluator(cfg.evaluator, cfg.evaluator_args)
    ckpt = checkpoint.latest_checkpoint(cfg.out_dir)
    device = d.device
    policy, tok, prec, make_reference = load_policy(cfg, device, ckpt)
    ref = make_reference() if cfg.kl_coef else None  # beta 0: no KL anywhere, no reference to load or run (as TRL)
    reward_fn = make_reward_fn(cfg.reward, cfg.reward_model, device, cfg.reward_args, cfg.reward_weights)
    rm_fn = reward_fn if cfg.reward == "rm" else None
    packed = use_packing(cfg.estimator, cfg.packing, lambda: packs(policy), lambda: ref is None or packs(ref))
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = make_adamw(params, lr=cfg.lr, eps=1e-5, weight_decay=0.0)
    start, _ = checkpoint.resume(ckpt, cfg.out_dir, optimizer, cfg.estimator, d.is_main)
    if d.is_main:
        print(f"[{cfg.estimator}] {len(prompts)} prompts; {cfg.prompts_per_step} prompts x k={cfg.k} per iteration, "
              f"{cfg.ppo_epochs} epochs of minibatch {cfg.minibatch_size}{f'; {d.world_size} ranks' if d.world_size > 1 else ''}",
              flush=True)

    if start == 0 and cfg.eval_every and eval_prompts and d.is_main:
        run.log(0, training_eval(policy, tok, eval_prompts, rm_fn, evaluator))
    guard, scaler = NonFiniteGuard(cfg.estimator, cfg.skip_nonfinite), precision.Scaler(prec, device)
    # On-policy (one epoch of one minibatch): the update's own forward runs the policy that sampled, so the rollout's
    # logprobs can be taken from it (ratio exactly 1, as TRL's num_iterations=1); they are needed before the update
    # only when the KL goes into the reward (collect_experience then takes the sampler's own in fp32, with no forward)
    sw = Stopwatch()  # time/generate, time/score, ... per iteration, as PPO logs them
    on_policy = cfg.ppo_epochs == 1 and cfg.minibatch_size == cfg.prompts_per_step * cfg.k
    kl_reward = cfg.kl_in_reward and bool(cfg.kl_coef)
    for step in tqdm(range(start, cfg.total_steps), desc=cfg.estimator, initial=start, total=cfg.total_steps, disable=not d.is_main):
        set_lr(optimizer, cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps)))
        batch = epoch_batches(len(prompts), cfg.prompts_per_step, step, cfg.seed).tolist()
        n_rows = len(batch) * cfg.k
        rows = distributed.owned_rows(n_rows, d, group=cfg.k)  # this rank's prompts, each with its k samples
        idx = [batch[r // cfg.k] for r in rows]

        # 1. Generate k responses per prompt (contiguous), score them, logprobs of policy and reference.
        exp = collect_experience(policy, ref, tok, [prompts[i] for i in idx], reward_fn,
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 missing_eos_penalty=cfg.missing_eos_penalty, columns={k: [v[i] for i in idx] for k, v in columns.items()},
                                 generator=distributed.step_generator(cfg.seed, step, 0), rows=rows, n_rows=n_rows,
                                 policy_logprobs=kl_reward or not on_policy, stopwatch=sw, packed=packed)
        mask = exp.mask

        # 2. Sequence advantages from the group baseline (a group never spans ranks).
        rewards = exp.scores - cfg.kl_coef * seq_kl_of(exp) if kl_reward else exp.scores
        advantages = ADVANTAGES[cfg.estimator](rewards, cfg.k)  # (B,)

        # 3. Clipped policy-gradient epochs over minibatches of the global batch (KL as a loss term unless in the
        #    reward); each rank trains on its members of a minibatch, gradients summed over ranks.
        with sw("train"):
            stats = pg_epochs(cfg, d, (step, rows, n_rows), policy, params, optimizer, (guard, scaler), exp, advantages)
        # (B,) sequence KL to the reference; beta 0 has no reference: no KL measured, the reward is the score
        seq_kl = seq_kl_of(exp) if ref is not None else torch.zeros_like(exp.scores)
        kl = {"objective/kl": seq_kl.mean()} if ref is not None else {}

        # 4. Log (global means), evaluate, checkpoint.
        seqs = distributed.Means()
        seqs.add({"objective/scores": exp.scores.mean(), **kl, "objective/rlhf_reward": (exp.scores - cfg.kl_coef * seq_kl).mean(),
                  "rollout/response_length": mask.sum(1).float().mean(), "rollout/eos_rate": exp.terminated.float().mean(),
                  "rollout/zero_advantage_frac": (advantages == 0).float().mean()}, len(rows))
        # (the loss's k3 `objective/kl` token mean is replaced by the sequence KL, as before)
        metrics = stats | seqs.result(d) | guard.metrics() | sw.pop()
        if cfg.eval_every and (due(step, cfg.eval_every) or step + 1 == cfg.total_steps) and d.is_main:
            metrics.update(training_eval(policy, tok, eval_prompts, rm_fn, evaluator))
        run.log(step + 1, metrics)
        if due(step, cfg.sample_every) and d.is_main:
            run.log_samples(step + 1, [{"prompt": p, "response": r, "score": float(s)}
                                       for p, r, s in zip(exp.prompts[:: cfg.k][:3], exp.responses[:: cfg.k][:3], exp.scores[:: cfg.k][:3])])
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.total_steps and d.is_main:
            checkpoint.save_checkpoint(cfg.out_dir, step + 1, {"policy": policy}, {"optimizer": optimizer.state_dict()}, tok)
        distributed.barrier(d)

    guard.finish()
    out = os.path.join(cfg.out_dir, "model")
    if d.is_main:
        lora.save_final(cfg.estimator, policy, tok, cfg.out_dir, cfg.lora)
        print(f"[{cfg.estimator}] saved {out}", flush=True)
    run.close()
    distributed.close(d)
    return out


def seq_kl_of(exp) -> torch.Tensor:
    """KL (k1) of each sequence to the reference, summed over its response tokens: (B,)."""
    return masked_sum(kl_k1(exp.logprobs, exp.ref_logprobs), exp.mask, dim=1)


def pg_epochs(cfg: Config, d, where: tuple, policy, params, optimizer, guards, exp, advantages) -> dict[str, float]:
    """Step 3: `ppo_epochs` passes of the clipped policy-gradient loss over one rollout batch; `where` is
    `(step, this rank's rows of the batch, its size)`, `guards` `(NonFiniteGuard, precision.Scaler)`. Each optimiser
    step is a minibatch of the global batch (this rank's members of it, in micro-batches), token losses divided by
    the minibatch's response tokens on all ranks, gradients summed over ranks. Returns the global means of the
    loss statistics and of the gradient norm. Without rollout logprobs (`exp.logprobs` None: on-policy, one epoch of
    one minibatch) they are filled in from the loss's own forward, before the update."""
    step, rows, n_rows = where
    guard, scaler = guards
    mask, means, norms = exp.mask, distributed.Means(), distributed.Means()
    fill = exp.logprobs is None
    if fill:
        exp.logprobs = torch.zeros(mask.shape, device=mask.device)  # (B, R) float32, as response_logprobs gives
    order = distributed.step_generator(cfg.seed, step, 1)  # minibatch order, the same on every rank
    policy.train()
    for _ in range(cfg.ppo_epochs):
        for mb in distributed.local_minibatches(rows, n_rows, cfg.minibatch_size, order):
            normalizer = distributed.global_sum(mask[mb].sum(), d).to(exp.logprobs.dtype)
            for micro in mb.split(cfg.micro_batch_size):
                logprobs, _ = response_logprobs(policy, exp.input_ids[micro], exp.attention_mask[micro], exp.prompt_len, cfg.temperature,
                                                packed=exp.packed)
                if fill:  # the policy that sampled: old logprobs = these, the ratio exactly 1
                    exp.logprobs[micro] = logprobs.detach().masked_fill(~mask[micro], 0.0)
                loss, m = policy_gradient_loss(logprobs, exp.logprobs[micro], advantages[micro], mask[micro], cfg.clip_range,
                                               normalizer, kl_coef=0.0 if cfg.kl_in_reward else cfg.kl_coef,
                                               ref_logprobs=None if exp.ref_logprobs is None else exp.ref_logprobs[micro])
                scaler.backward(loss)
                means.add_micro(m, mask[micro].sum().item(), normalizer)
            distributed.sum_gradients(params, d)
            scaler.unscale(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            norms.add({"ppo/policy/grad_norm": grad_norm}, 1.0)
            scaler.step(optimizer, guard, step, grad_norm=grad_norm)
            optimizer.zero_grad(set_to_none=True)
    return means.result(d) | norms.result(d)
