"""`rlhfkit pipeline`: the whole demo, stage after stage, with caching and resume.

Each stage runs in `<out_dir>/<stage>/` and is fingerprinted by its resolved
config plus the fingerprints of the stages it reads from. A stage whose
fingerprint matches a finished run is skipped (and says so); a stage that was
interrupted resumes from its own last checkpoint; a stage whose config or inputs
changed, or one of whose inputs was rebuilt in this invocation, is started
afresh (so `force=[sft]` reruns SFT and everything downstream of it). The
pipeline wires paths between stages itself: the `out_dir`/`model`/`policies`
fields of the stage sections are overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from rlhfkit.config import to_dict
from rlhfkit.stages import eval as eval_stage
from rlhfkit.stages import dpo, feedback, grpo, ppo, pretrain, report, rloo, rm, sft
from rlhfkit.world import WorldConfig

# --quick: a smoke run of every stage in a couple of minutes (tiny step counts; results are not meaningful).
QUICK = {
    "pretrain": {"max_steps": 60, "eval_every": 30, "sample_every": 60},
    "sft": {"epochs": 0.5, "eval_every": 20, "sample_every": 1000},
    "feedback": {"limit": 48},
    "rm": {"epochs": 1.0, "eval_every": 10},
    "ppo": {"total_steps": 4, "eval_every": 2, "sample_every": 2, "ckpt_every": 2},
    "ppo_beta0": {"total_steps": 2, "eval_every": 2, "sample_every": 2, "ckpt_every": 2},
    "dpo": {"epochs": 0.2, "eval_every": 5},
    "rloo": {"total_steps": 2, "eval_every": 2},
    "grpo": {"total_steps": 2, "eval_every": 2},
    "world": {"corpus_docs": 900, "n_eval_per_family": 8, "n_sft": 600, "n_rl": 200},
}


@dataclass
class Config:
    out_dir: str = "runs/demo"  # one directory per stage is created inside
    seed: int = 0  # propagated to every stage
    quick: bool = False  # smoke-run profile: tiny step counts (see QUICK)
    force: list[str] = field(default_factory=list)  # stages to rerun even if cached, e.g. force=[sft]
    critic_free: bool = False  # also run RLOO and GRPO
    world: WorldConfig = field(default_factory=WorldConfig)  # the built-in world, shared by all stages
    pretrain: pretrain.Config = field(default_factory=pretrain.Config)  # stage settings (paths are wired)
    sft: sft.Config = field(default_factory=sft.Config)
    feedback: feedback.Config = field(default_factory=feedback.Config)
    rm: rm.Config = field(default_factory=rm.Config)
    ppo: ppo.Config = field(default_factory=ppo.Config)
    # The reward-hacking control: no KL penalty, and 2.5x PPO's iterations, which is when its hack shows in
    # gold and length (README); its training evals every 30 iterations trace the proxy rising as gold falls.
    ppo_beta0: ppo.Config = field(default_factory=lambda: ppo.Config(kl_coef=0.0, adaptive_kl=False, total_steps=150, eval_every=30))
    dpo: dpo.Config = field(default_factory=dpo.Config)
    rloo: rloo.Config = field(default_factory=rloo.Config)
    grpo: grpo.Config = field(default_factory=grpo.Config)
    eval: eval_stage.Config = field(default_factory=lambda: eval_stage.Config(policies=["<wired>"]))
    report: report.Config = field(default_factory=report.Config)  # HTML + Markdown report of the whole run

    def resolve(self) -> None:
        if self.quick and not getattr(self, "_quick_applied", False):
            defaults = Config()
            for section, values in QUICK.items():
                for key, value in values.items():  # settings given explicitly win over the profile
                    if getattr(getattr(self, section), key) == getattr(getattr(defaults, section), key):
                        setattr(getattr(self, section), key, value)
            self._quick_applied = True
        out = f"{self.out_dir}/{{}}"
        sft_model, rm_model, pairs = out.format("sft/model"), out.format("rm/model"), out.format("feedback/pairs.jsonl")
        for name in WORLD_STAGES:
            stage = getattr(self, name)
            stage.world, stage.seed, stage.out_dir = self.world, self.seed, out.format(name)
        self.sft.model = out.format("pretrain/model")
        self.feedback.policy = self.rm.model = sft_model
        self.rm.data = self.dpo.data = pairs
        for rl in (self.ppo, self.ppo_beta0, self.dpo, self.rloo, self.grpo):
            rl.policy = sft_model
        for rl in (self.ppo, self.ppo_beta0, self.rloo, self.grpo, self.eval):
            rl.reward_model = rm_model
        self.report.out_dir, self.report.run_dir = out.format("report"), self.out_dir
        self.eval.names = ["base"] + [n for n in POLICY_STAGES if n in self.enabled()]
        self.eval.policies = [out.format("pretrain/model")] + [out.format(f"{n}/model") for n in self.eval.names[1:]]

    def enabled(self) -> list[str]:
        return [s for s in STAGES if self.critic_free or s not in ("rloo", "grpo")]


STAGES = ("pretrain", "sft", "feedback", "rm", "ppo", "ppo_beta0", "dpo", "rloo", "grpo", "eval", "report")
WORLD_STAGES = STAGES[:-1]  # the stages that take the world and the seed: all but the report, which only reads files
POLICY_STAGES = ("sft", "ppo", "ppo_beta0", "dpo", "rloo", "grpo")
RUNNERS = {"pretrain": pretrain.train, "sft": sft.train, "feedback": feedback.main, "rm": rm.train, "ppo": ppo.train,
           "ppo_beta0": ppo.train, "dpo": dpo.train, "rloo": rloo.train, "grpo": grpo.train, "eval": eval_stage.main, "report": report.main}
INPUTS = {"sft": ("pretrain",), "feedback": ("sft",), "rm": ("sft", "feedback"), "ppo": ("sft", "rm"),
          "ppo_beta0": ("sft", "rm"), "dpo": ("sft", "feedback"), "rloo": ("sft", "rm"), "grpo": ("sft", "rm"),
          "eval": ("pretrain", "sft", "rm", "ppo", "ppo_beta0", "dpo", "rloo", "grpo"), "report": WORLD_STAGES}


@dataclass
class Stage:
    name: str
    run: Callable[[], Any]
    cfg: Any
    after: tuple[str, ...] = ()


def stages(cfg: Config) -> list[Stage]:
    enabled = cfg.enabled()
    return [Stage(n, lambda n=n: RUNNERS[n](getattr(cfg, n)), getattr(cfg, n), tuple(a for a in INPUTS.get(n, ()) if a in enabled))
            for n in enabled]


def fingerprint(cfg: Any, upstream: Sequence[str] = ()) -> str:
    """A stage's identity: its resolved config plus the fingerprints of the stages it reads from."""
    blob = json.dumps({"cfg": to_dict(cfg), "after": list(upstream)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_cached(head: str, run: Callable[[], Any], stage_dir: str, fp: str, stale: bool = False) -> bool:
    """Run a stage in `stage_dir` unless a finished run with fingerprint `fp` is there (and it is not
    `stale`); resume an interrupted run with the same fingerprint; otherwise clear the directory and
    start afresh. `stage_dir/stage.json` records the fingerprint and whether the run finished.
    Prints `<head>: <what happened>`; returns whether the stage ran."""
    marker = _read_json(os.path.join(stage_dir, "stage.json"))
    if marker.get("fingerprint") == fp and marker.get("done") and not stale:
        print(f"{head}: up to date, skipped", flush=True)
        return False
    if marker.get("fingerprint") == fp and not stale:
        print(f"{head}: resuming an interrupted run", flush=True)
    else:
        if os.path.exists(stage_dir):
            shutil.rmtree(stage_dir)
        print(f"{head}: running", flush=True)
    os.makedirs(stage_dir, exist_ok=True)
    _write_json(os.path.join(stage_dir, "stage.json"), {"fingerprint": fp, "done": False})
    started = time.time()
    run()
    _write_json(os.path.join(stage_dir, "stage.json"), {"fingerprint": fp, "done": True, "seconds": round(time.time() - started, 1)})
    return True


def main(cfg: Config) -> dict[str, str]:
    os.makedirs(cfg.out_dir, exist_ok=True)
    plan = stages(cfg)
    prints, ran, t0 = {}, set(), time.time()
    for i, stage in enumerate(plan, 1):
        fp = prints[stage.name] = fingerprint(stage.cfg, [prints[a] for a in stage.after])
        head = f"[pipeline {i}/{len(plan)} +{time.time() - t0:5.0f}s] {stage.name}"
        stale = stage.name in cfg.force or any(a in ran for a in stage.after)  # forced, or an input was just rebuilt
        if run_cached(head, stage.run, os.path.join(cfg.out_dir, stage.name), fp, stale):
            ran.add(stage.name)
    print(f"[pipeline] finished in {time.time() - t0:.0f}s; results in {cfg.out_dir}", flush=True)
    return prints


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` via a temp file and a rename: readers see the old file or the whole new one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_json(path: str, obj: dict) -> None:
    write_atomic(path, json.dumps(obj))
