"""`rlhfkit pipeline`: the whole demo, stage after stage, with caching and resume.

Each stage runs in `<out_dir>/<stage>/` and is fingerprinted by its resolved
config plus the fingerprints of the stages it reads from. A stage whose
fingerprint matches a finished run is skipped (and says so); a stage that was
interrupted resumes from its own last checkpoint; a stage whose inputs changed
is started afresh. The pipeline wires paths between stages itself: the
`out_dir`/`model`/`policies` fields of the stage sections are overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rlhfkit.config import to_dict
from rlhfkit.stages import eval as eval_stage
from rlhfkit.stages import pretrain, sft
from rlhfkit.world import WorldConfig

# --quick: a smoke run of every stage in about a minute (tiny step counts; results are not meaningful).
QUICK = {
    "pretrain": {"max_steps": 60, "eval_every": 30, "sample_every": 60},
    "sft": {"epochs": 0.5, "eval_every": 20, "sample_every": 1000},
    "world": {"corpus_docs_scale": 0.1, "n_eval_per_family": 8},
}


@dataclass
class Config:
    out_dir: str = "runs/demo"  # one directory per stage is created inside
    seed: int = 0  # propagated to every stage
    quick: bool = False  # smoke-run profile: tiny step counts (see QUICK)
    force: list[str] = field(default_factory=list)  # stages to rerun even if cached, e.g. force=[sft]
    world: WorldConfig = field(default_factory=WorldConfig)  # the built-in world, shared by all stages
    pretrain: pretrain.Config = field(default_factory=pretrain.Config)  # stage settings (paths are wired)
    sft: sft.Config = field(default_factory=sft.Config)
    eval: eval_stage.Config = field(default_factory=lambda: eval_stage.Config(policies=["<wired>"]))

    def resolve(self) -> None:
        if self.quick:
            for section, values in QUICK.items():
                for key, value in values.items():
                    if section == "world" and key == "corpus_docs_scale":
                        self.world.corpus_docs = max(200, int(self.world.corpus_docs * value))
                    else:
                        setattr(getattr(self, section), key, value)
        out = self.out_dir
        for stage in (self.pretrain, self.sft, self.eval):
            stage.world, stage.seed = self.world, self.seed
        self.pretrain.out_dir = f"{out}/pretrain"
        self.sft.out_dir, self.sft.model = f"{out}/sft", f"{out}/pretrain/model"
        self.eval.out_dir = f"{out}/eval"
        self.eval.policies = [f"{out}/pretrain/model", f"{out}/sft/model"]
        self.eval.names = ["base", "sft"]


@dataclass
class Stage:
    name: str
    run: Callable[[], Any]
    cfg: Any
    after: tuple[str, ...] = ()


def stages(cfg: Config) -> list[Stage]:
    return [
        Stage("pretrain", lambda: pretrain.train(cfg.pretrain), cfg.pretrain),
        Stage("sft", lambda: sft.train(cfg.sft), cfg.sft, ("pretrain",)),
        Stage("eval", lambda: eval_stage.main(cfg.eval), cfg.eval, ("pretrain", "sft")),
    ]


def fingerprint(stage: Stage, upstream: dict[str, str]) -> str:
    blob = json.dumps({"cfg": to_dict(stage.cfg), "after": [upstream[a] for a in stage.after]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def main(cfg: Config) -> dict[str, str]:
    os.makedirs(cfg.out_dir, exist_ok=True)
    plan = stages(cfg)
    prints, t0 = {}, time.time()
    for i, stage in enumerate(plan, 1):
        fp = prints[stage.name] = fingerprint(stage, prints)
        stage_dir = os.path.join(cfg.out_dir, stage.name)
        marker = _read_json(os.path.join(stage_dir, "stage.json"))
        head = f"[pipeline {i}/{len(plan)} +{time.time() - t0:5.0f}s] {stage.name}"
        if marker.get("fingerprint") == fp and marker.get("done") and stage.name not in cfg.force:
            print(f"{head}: up to date, skipped", flush=True)
            continue
        if marker.get("fingerprint") == fp and stage.name not in cfg.force:
            print(f"{head}: resuming an interrupted run", flush=True)
        else:
            if os.path.exists(stage_dir):
                shutil.rmtree(stage_dir)
            print(f"{head}: running", flush=True)
        os.makedirs(stage_dir, exist_ok=True)
        _write_json(os.path.join(stage_dir, "stage.json"), {"fingerprint": fp, "done": False})
        started = time.time()
        stage.run()
        _write_json(os.path.join(stage_dir, "stage.json"),
                    {"fingerprint": fp, "done": True, "seconds": round(time.time() - started, 1)})
    print(f"[pipeline] finished in {time.time() - t0:.0f}s; results in {cfg.out_dir}", flush=True)
    return prints


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)
