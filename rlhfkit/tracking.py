"""The run directory every stage writes, and its metrics log.

    <out_dir>/
      config.yaml      resolved config (load it back with --config to rerun)
      run.json         seed, git SHA, command line, library versions, start time
      metrics.jsonl    one JSON object per logged step: {"step": n, "time": s, <name>: value, ...}
      tb/              TensorBoard events with the same names
      samples.jsonl    decoded samples logged during training
      checkpoints/     see rlhfkit.checkpoint
      identity.json    the settings and the inputs' content hashes the run started with

A run directory resumes only the run that made it: starting a stage in an `out_dir` that already holds a run
(checkpoints, a model or logs) compares the new settings and the content of every input file or folder named
in them with `identity.json`; any difference is an error naming it, unless `resume=never`, which clears the
old run's checkpoints, model and logs and starts afresh. Only `IDENTITY_FREE` fields may differ on resume.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from typing import Any


def git_sha() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


IDENTITY_FREE = ("out_dir", "threads", "device", "resume")  # may change between a run and its resumption
RUN_OUTPUTS = ("checkpoints", "model", "metrics.jsonl", "samples.jsonl", "tb")  # what `resume=never` clears


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return []


def run_identity(cfg: Any) -> dict[str, Any]:
    """What a run is: its settings (all but IDENTITY_FREE) and the content hash of every existing path they name."""
    from rlhfkit.config import to_dict
    from rlhfkit.files import content_hash

    settings = {k: v for k, v in to_dict(cfg).items() if k not in IDENTITY_FREE}
    inputs = sorted({p for p in _strings(settings) if p and os.path.exists(p)})
    return {"settings": settings, "inputs": {p: content_hash([p]) for p in inputs}}


def _differences(old: dict, new: dict) -> list[str]:
    out = [f"{k}: {old['settings'].get(k)!r} -> {new['settings'].get(k)!r}"
           for k in sorted(set(old["settings"]) | set(new["settings"])) if old["settings"].get(k) != new["settings"].get(k)]
    out += [f"content of {p} changed" for p in sorted(set(old["inputs"]) & set(new["inputs"])) if old["inputs"][p] != new["inputs"][p]]
    return out


def claim_run_dir(out_dir: str, cfg: Any, stage: str) -> None:
    """Check that `out_dir` holds no run or this very run (see the module docstring); record the identity."""
    from rlhfkit.config import ConfigError
    from rlhfkit.files import write_atomic

    path, new = os.path.join(out_dir, "identity.json"), run_identity(cfg)
    started = [x for x in RUN_OUTPUTS if os.path.exists(os.path.join(out_dir, x))]
    if started and getattr(cfg, "resume", "auto") == "never":
        import shutil

        for x in started:
            target = os.path.join(out_dir, x)
            shutil.rmtree(target) if os.path.isdir(target) else os.unlink(target)
        print(f"[{stage}] resume=never: cleared the earlier run's {', '.join(started)} in {out_dir}", flush=True)
    elif started:
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            raise ConfigError(f"out_dir {out_dir} holds a run ({', '.join(started)}) with no readable identity.json: cannot "
                              "tell whether it is this one. Use a new out_dir, or resume=never to start afresh.") from None
        if diff := _differences(old, new) if old.get("stage", stage) == stage else [f"stage: {old.get('stage')} -> {stage}"]:
            raise ConfigError(f"out_dir {out_dir} holds another run ({'; '.join(diff[:5])}{'; ...' if len(diff) > 5 else ''}). "
                              "Rerun with its settings to resume it, use a new out_dir, or resume=never to start afresh.")
        return
    write_atomic(path, json.dumps({"stage": stage, **new}, indent=1, default=str))


def due(step: int, every: int) -> bool:
    """Whether the periodic action of a loop at 0-based `step` is due: every `every` steps; never if `every` is 0."""
    return every > 0 and (step + 1) % every == 0


class Run:
    """Opens (or reopens, when resuming) a run directory and logs metrics to JSONL + TensorBoard."""

    def __init__(self, out_dir: str, cfg: Any, seed: int, stage: str, rank: int = 0):
        from rlhfkit.config import dump_yaml

        self.dir, self.rank, self.t0 = out_dir, rank, time.time()
        self._tb = None
        if rank != 0:
            return
        os.makedirs(out_dir, exist_ok=True)
        if hasattr(cfg, "resume"):  # a resumable training stage (an eval rewrites its outputs whole)
            claim_run_dir(out_dir, cfg, stage)
        dump_yaml(cfg, os.path.join(out_dir, "config.yaml"))
        import torch
        import transformers

        meta = {
            "stage": stage,
            "seed": seed,
            "git_sha": git_sha(),
            "argv": sys.argv,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "started_unix": round(self.t0, 3),  # the zero of metrics.jsonl's `time` (benchmarks read start-up from it)
        }
        with open(os.path.join(out_dir, "run.json"), "w") as f:
            json.dump(meta, f, indent=2)
        print(f"[{stage}] run dir {out_dir}  seed={seed}  git={meta['git_sha'][:12]}", flush=True)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        row = {"step": step, "time": round(time.time() - self.t0, 3)}
        row.update({k: _scalar(v) for k, v in metrics.items()})
        row.update(memory_mb())
        with open(os.path.join(self.dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        tb = self.tensorboard()
        if tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    tb.add_scalar(k, v, step)

    def log_samples(self, step: int, samples: list[dict[str, Any]], show: int = 2) -> None:
        """Append decoded samples to samples.jsonl and print the first few."""
        if self.rank != 0:
            return
        with open(os.path.join(self.dir, "samples.jsonl"), "a") as f:
            for s in samples:
                f.write(json.dumps({"step": step, **s}, default=_plain) + "\n")  # a conversation prompt holds Messages
        for s in samples[:show]:
            extra = "  ".join(f"{k}={v:.3f}" for k, v in s.items() if isinstance(v, float))
            print(f"  step {step} | {s.get('prompt', '')!r} -> {s.get('response', '')!r}  {extra}", flush=True)

    def tensorboard(self):
        if self._tb is None and os.environ.get("RLHFKIT_NO_TENSORBOARD") != "1":
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(self.dir, "tb"))
            except ImportError:  # tensorboard is a declared dependency, but don't die for a log
                self._tb = False
        return self._tb or None

    def close(self) -> None:
        if self._tb:
            self._tb.close()


def memory_mb() -> dict[str, float]:
    """`sys/rss_mb`: this process's resident memory now; `sys/cuda_peak_mb`: peak CUDA memory allocated so far."""
    out = {}
    try:
        with open("/proc/self/statm") as f:
            out["sys/rss_mb"] = round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):  # not Linux: the lifetime peak is the best we have
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["sys/rss_mb"] = round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["sys/cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _scalar(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6)
    return v


def read_metrics(out_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Stopwatch:
    """Accumulates wall time per named phase: `with sw("generate"): ...`; `sw.pop()` -> {"time/generate": s}."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def __call__(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

        return timed()

    def pop(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self.totals.items()}
        self.totals = {}
        return out


def _plain(value):
    """JSON form of record dataclasses (a conversation's Messages)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
