"""torchrun support, applied from outside the models (torchtitan's rule).

`init()` reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts
a process group: NCCL on GPUs, gloo on CPU. Without torchrun it is a no-op and
every helper below degrades to the single-process case, so stage files call them
unconditionally.

Loss normalisation across ranks: a stage divides its summed loss by the GLOBAL
number of valid tokens (`global_sum`) and multiplies by `world_size`, because
DDP averages gradients over ranks; the result equals one big batch on one rank.

`parallel` (a config field of pretrain, SFT, RM and DPO) picks how the trained model is spread:
- ddp (the default): every rank holds the whole model, DDP all-reduces gradients;
- fsdp: FSDP2 `fully_shard` (ZeRO-3) applied from outside (`shard_model`): each decoder block is
  one unit, then the root (embeddings, final norm, LM head: tied weights stay in one unit);
  parameters, gradients and AdamW moments live as 1/world_size shards (DTensors), a block's
  weights are all-gathered for its forward and backward, gradients reduce-scattered (averaged,
  as DDP does, so the world_size scaling of the losses stays). Mixed precision through
  `MixedPrecisionPolicy` (bf16 weights gathered, fp32 gradient reduction, fp32 master shards).
Every forward of a sharded model is a collective: all ranks run the same forwards (evaluations
that rank 0 alone runs under DDP run on every rank: `joins`), the same number of micro-batches
(`micro_batches` checks), and join gathering the full weights for saving (`full_model`,
`optimizer_state`), which rank 0 alone writes. Without torchrun (no process group) `fsdp` is a
no-op: one process trains the plain model (under torchrun with one process it shards over a world of 1).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str = "auto") -> Dist:
    if "RANK" not in os.environ or dist.is_initialized():
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        if dist.is_initialized():
            return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), dev)
        return Dist(device=dev)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local, torch.device("cuda", local) if use_cuda else torch.device("cpu"))


Parallel = Literal["ddp", "fsdp"]


def wrap(model, d: Dist, parallel: Parallel = "ddp", precision: str = "fp32"):
    """The module a stage calls to train: DDP around the model for multi-process runs, or the model itself
    sharded in place by FSDP2 (`shard_model`); the model's own code knows nothing of either. Build the
    optimizer AFTER this call: FSDP2 replaces the parameters by their shards."""
    if parallel == "fsdp":
        return shard_model(model, d, precision)
    if d.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def check_parallel(parallel: str, precision: str) -> None:
    """ConfigError for a `parallel` setting a stage cannot honour (called from a stage Config's `resolve`)."""
    from rlhfkit.config import ConfigError

    if parallel == "fsdp" and precision == "fp16-mixed":
        raise ConfigError("'parallel': fsdp with precision=fp16-mixed is not supported (the loss scale would be kept "
                          "per rank while FSDP reduces the scaled gradients across ranks); use precision=bf16-mixed "
                          "or fp32 with fsdp, or parallel=ddp")


def _blocks(hf) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face model: its `_no_split_modules` classes (what HF itself keeps on
    one device), else the `layers` / `h` list of its backbone."""
    names = set(getattr(hf, "_no_split_modules", None) or ())
    blocks = [m for m in hf.modules() if type(m).__name__ in names]
    if blocks:
        return blocks
    backbone = getattr(hf, getattr(hf, "base_model_prefix", ""), hf)
    return list(getattr(backbone, "layers", None) or getattr(backbone, "h", None) or [])


def shard_model(model, d: Dist, precision: str = "fp32"):
    """FSDP2 (`fully_shard`) applied from outside: each transformer block, then, for a scalar-head model (reward
    model: its forward reaches the backbone and the head directly, rlhfkit.models.reward), the backbone and the
    head, then the root (`model`, a peft wrapper included: LoRA layers shard with their blocks). Mixed precision
    (bf16-mixed) gathers bf16 weights and reduces fp32 gradients; the shards stay fp32 master weights. Returns
    `model`, sharded in place; a no-op without a process group (one process, no torchrun)."""
    if not dist.is_initialized():
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from rlhfkit.models.lora import hf_model
    from rlhfkit.models.precision import compute_dtype

    mesh = init_device_mesh(d.device.type, (d.world_size,))
    low = compute_dtype(precision)
    kw = {"mesh": mesh, "mp_policy": MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32 if low else None)}
    hf = hf_model(model)
    for block in _blocks(hf):
        fully_shard(block, **kw)
    if (head := getattr(hf, "score", None)) is not None:  # its own units: called without the root's forward
        fully_shard(getattr(hf, hf.base_model_prefix), **kw)
        fully_shard(head, **kw)
    fully_shard(model, **kw)
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def joins(d: Dist, model) -> bool:
    """Whether this rank runs what rank 0 alone runs under DDP (held-out evals, samples): rank 0, and every rank
    when `model` is sharded, since each of its forwards all-gathers weights from every rank. Only rank 0 logs."""
    return d.is_main or is_sharded(model)


def clip_grad_norm_(params, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` that also takes FSDP's DTensor gradients: returns the total norm as a plain
    tensor (the norm over the full gradients, the same on every rank), as torchtitan does."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def full_model(model, d: Dist):
    """The model to save: under FSDP every rank must call this (the shards are gathered, onto CPU) and rank 0 gets
    a plain copy holding the full weights (None on the others: they write nothing); otherwise `model` itself."""
    if not is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return _plain_copy(model, state) if d.is_main else None


def _plain_copy(model, state: dict) -> torch.nn.Module:
    """A plain (unsharded) CPU module of `model`'s architecture holding `state`: built on the meta device from the HF
    config (and peft config), then given the gathered tensors (no copy) and the buffers that are not in a state dict."""
    from torch.distributed.fsdp import FSDPModule

    from rlhfkit.models.lora import hf_model, is_peft

    hf = hf_model(model)
    cls = next(c for c in type(hf).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        plain = cls(hf.config)
        if is_peft(model):
            from peft import get_peft_model

            plain = get_peft_model(plain, copy.deepcopy(model.peft_config["default"]))
            plain.peft_config["default"].base_model_name_or_path = model.peft_config["default"].base_model_name_or_path
    plain.load_state_dict(state, assign=True)
    for name, buf in model.named_buffers():  # non-persistent buffers (rotary inv_freq): FSDP leaves them whole
        owner, _, leaf = name.rpartition(".")
        setattr(plain.get_submodule(owner), leaf, buf.detach().to("cpu", copy=True))
    hf_model(plain).tie_weights()  # load_state_dict(assign=True) gave tied weights two tensors again
    if getattr(hf, "generation_config", None) is not None:
        hf_model(plain).generation_config = copy.deepcopy(hf.generation_config)
    return plain.train(model.training)


def optimizer_state(model, optimizer, d: Dist) -> dict | None:
    """The optimizer's state to checkpoint: under FSDP every rank must call this and rank 0 gets the full state
    keyed by parameter name (None elsewhere); otherwise `optimizer.state_dict()`."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if d.is_main else None


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Restore a checkpointed optimizer state (`optimizer_state`'s); under FSDP each rank keeps its shards of it."""
    if model is None or not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def global_sum(x: torch.Tensor | float, d: Dist) -> torch.Tensor:
    """Sum of a scalar over all ranks (a float64 tensor on every rank)."""
    t = torch.as_tensor(x, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu").clone()
    if d.world_size > 1:
        dist.all_reduce(t)
    return t


def sum_gradients(params, d: Dist) -> None:
    """All-reduce (sum) the gradients of `params` across ranks, in one flat buffer: for stages whose
    per-rank losses are already shares of the global batch's (no DDP wrapper: their forward reaches
    the backbone directly). A rank that had no rows in a step (its gradients None) adds zeros."""
    if d.world_size == 1:
        return
    params = list(params)
    if any(hasattr(p.grad, "full_tensor") for p in params):  # FSDP reduce-scattered (averaged) them already:
        for p in params:  # the mean over ranks times world_size is their sum
            if p.grad is not None:
                p.grad.mul_(d.world_size)
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def shard(items: list, d: Dist) -> list:
    """This rank's strided share of a global batch."""
    return items[d.rank :: d.world_size]


def no_sync(model, last: bool):
    """DDP's `no_sync()` for every micro-batch but the `last` of an optimiser step (one gradient all-reduce
    per step); a plain context for a model that is not DDP-wrapped."""
    import contextlib

    return model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext()


def micro_batches(model, items: list, size: int | None):
    """Gradient accumulation: this rank's share of an optimiser step in micro-batches of `size` (None: one
    batch), each yielded inside DDP's `no_sync` but the last, so gradients add up locally and are all-reduced
    once a step. With each micro-batch's loss a share of the global batch's (divided by the global count),
    the accumulated gradient equals one big batch's."""
    size = size or max(1, len(items))
    if is_sharded(model) and dist.is_initialized():  # every forward/backward is a collective: the same count on every rank
        count = math.ceil(len(items) / size)
        n = torch.tensor([count, -count], device=next(model.parameters()).device)
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        if n[0] != -n[1]:
            raise RuntimeError(f"parallel=fsdp: ranks hold between {-n[1].item()} and {n[0].item()} micro-batches of this "
                               "step, but a sharded model needs every rank to run the same forwards; make the batch size "
                               "a multiple of the number of ranks x the micro-batch size")
    for k in range(0, len(items), size):
        with no_sync(model, last=k + size >= len(items)):
            yield items[k : k + size]


# ---- online RL (PPO, RLOO, GRPO): each rank generates and trains on its rows of every global rollout batch.
# The random numbers come from generators seeded by (seed, step), the same on every rank and for any number
# of ranks, so 2 ranks sample the rollouts and walk the minibatches that 1 process does.


def owned_rows(n_rows: int, d: Dist, group: int = 1) -> list[int]:
    """This rank's rows of a global batch of `n_rows`: groups of `group` consecutive rows (RLOO/GRPO keep a
    prompt's k samples together) dealt out to the ranks in turn."""
    return [g * group + j for g in range(d.rank, n_rows // group, d.world_size) for j in range(group)]


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator for one iteration's draws (`stream` 0: sampling, 1: minibatch order and PPO-ptx rows)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 8 + stream)


def local_minibatches(rows: list[int], n_rows: int, size: int, generator: torch.Generator):
    """Minibatches of a global batch shuffled by `generator`, as the local indices of this rank's `rows` in each
    (possibly none): a rank trains on its members of every global minibatch."""
    local = {g: i for i, g in enumerate(rows)}
    for mb in torch.randperm(n_rows, generator=generator).split(size):
        yield torch.tensor([local[g] for g in mb.tolist() if g in local], dtype=torch.long)


class Means:
    """Weighted means over every rank: `add(stats, weight)` per micro-batch (weight = its token count),
    `result(d)` the global sum of weight x value over the global weight, per key."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.moments: set[str] = set()  # `X_var` keys held as E[X^2]

    def add_micro(self, stats: dict, n_tokens: float, normalizer) -> None:
        """A micro-batch's loss statistics: `*_loss` values are its share of its optimiser step's loss (token sum
        / the step's `normalizer`), logged as its token mean; an `X_var` beside an `X_mean` becomes the variance
        over all tokens (kept as a second moment until `result`); the others are token means already."""
        if n_tokens:
            out = {k: float(v) * float(normalizer) / n_tokens if k.endswith("_loss") else float(v) for k, v in stats.items()}
            for k in [k for k in out if k.endswith("_var") and k[:-4] + "_mean" in out]:
                out[k] += out[k[:-4] + "_mean"] ** 2
                self.moments.add(k)
            self.add(out, n_tokens)

    def add(self, stats: dict, weight: float) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
            self.weights[k] = self.weights.get(k, 0.0) + weight

    def result(self, d: Dist) -> dict[str, float]:
        keys = sorted(self.sums)
        flat = global_sum(torch.tensor([self.sums[k] for k in keys] + [self.weights[k] for k in keys], dtype=torch.float64), d)
        out = {k: (flat[i] / flat[len(keys) + i]).item() if flat[len(keys) + i] > 0 else 0.0 for i, k in enumerate(keys)}
        for k in self.moments:
            out[k] -= out[k[:-4] + "_mean"] ** 2
        return out


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()


def close(d: Dist) -> None:
    """Tear the process group down together: every rank waits at a barrier (rank 0 may still be writing the
    model) so no rank destroys gloo's connections while a peer's collectives are in flight (a rank that did
    sometimes aborted at exit with "terminate called without an active exception")."""
    if d.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class NotDistributed(RuntimeError):
    """A stage that cannot split its work across ranks was started by torchrun with more than one process."""


DATA_PARALLEL = ("pretrain", "sft", "rm", "dpo", "ppo", "rloo", "grpo")  # the stages that shard their batches across torchrun ranks


def refuse_multi_process(what: str) -> None:
    """Raise NotDistributed when `what` runs in a torchrun job of several processes and is not data-parallel:
    each rank would run the whole job and write the same outputs (a silent duplicate, or a corrupted run dir)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and what not in DATA_PARALLEL:
        raise NotDistributed(f"{what} does not run data-parallel yet (only {', '.join(DATA_PARALLEL)} do): started with "
                             f"WORLD_SIZE={world}, every process would train the whole job and write the same files. "
                             f"Run it as one process (python -m rlhfkit {what} ...), not under torchrun.")
