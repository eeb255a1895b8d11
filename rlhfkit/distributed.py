"""torchrun support, applied from outside the models (torchtitan's rule).

`init()` reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts
a process group: NCCL on GPUs, gloo on CPU. Without torchrun it is a no-op and
every helper below degrades to the single-process case, so stage files call them
unconditionally.

Loss normalisation across ranks: a stage divides its summed loss by the GLOBAL
number of valid tokens (`global_sum`) and multiplies by `world_size`, because
DDP averages gradients over ranks; the result equals one big batch on one rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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


def wrap(model, d: Dist):
    """DDP for multi-process runs; the model itself stays a plain HF module."""
    if d.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


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
    if d.world_size > 1 and dist.is_initialized():
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
