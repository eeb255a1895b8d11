"""`rlhfkit generate` and `rlhfkit sample`: batched sampling with a KV cache.

`generate` answers prompts (from `prompt=[...]`, a prompts file, or the world's
eval split) and prints/writes them. `sample` draws K responses per prompt (the
world's RL split by default) at temperature 1 and writes the queue that the
feedback stage ranks (`prefixed_samples` of the K continue a forced `prefix`, e.g. a
refusal opener, so that every prompt's candidates -- or those of the `prefixed_families`
only -- include one for the labellers to judge); one JSONL row per prompt,
    {"prompt": str, "responses": [str] * K, "terminated": [bool] * K, "policy": str, "family": str | null}
which `rlhfkit label load` and the simulated annotators read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from rlhfkit.evaluation.gold_eval import answer
from rlhfkit.models.load import load_causal_lm
from rlhfkit.tracking import seed_everything
from rlhfkit.world import WorldConfig, build_world, check_families


REFUSAL_PREFIX = "I can't help with that."  # the default forced opening of prefixed samples


@dataclass
class Config:
    model: str = "runs/sft/model"  # local HF causal LM directory
    prompt: list[str] = field(default_factory=list)  # prompts given on the command line
    prompts: str | None = None  # file/dir of prompts (JSONL/Parquet/HF dataset with `prompt` or `messages`)
    split: str = "eval"  # world split used when no prompts are given: sft | rl | eval
    limit: int = 0  # use only the first N prompts (0: all)
    num_samples: int = 1  # responses per prompt (K)
    num_samples_by_family: dict[str, int] = field(default_factory=dict)  # K for world prompts of these families
    max_new_tokens: int = 48  # response length limit
    temperature: float = 0.7  # 0: greedy
    top_p: float = 1.0  # nucleus sampling
    batch_size: int = 64  # sequences per generation batch
    seed: int = 0  # sampling seed
    out: str | None = None  # JSONL to write (one row per prompt)
    prefix: str = REFUSAL_PREFIX  # forced opening of the prefixed samples
    prefixed_samples: int = 0  # of the K samples per prompt, this many continue `prefix` (0: none)
    prefixed_families: list[str] = field(default_factory=list)  # only world prompts of these families get them ([]: every prompt)
    world: WorldConfig = field(default_factory=WorldConfig)  # the built-in world, for default prompts
    device: str = "auto"  # auto | cpu | cuda

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        check_families("num_samples_by_family", self.num_samples_by_family)
        check_families("prefixed_families", self.prefixed_families)
        for fam in self.prefixed_families or [None, *self.num_samples_by_family]:  # the K of prompts that get prefixed samples
            name = f"num_samples_by_family.{fam}" if fam in self.num_samples_by_family else "num_samples"
            if not 0 <= self.prefixed_samples <= self.samples_for(fam):
                raise ConfigError(f"prefixed_samples ({self.prefixed_samples}) must be in [0, {name} = {self.samples_for(fam)}]")

    def samples_for(self, family: str | None) -> int:
        """K for a prompt of this family."""
        return self.num_samples_by_family.get(family, self.num_samples)

    def prefixed_for(self, family: str | None) -> int:
        """How many of a prompt's K samples continue the prefix."""
        return self.prefixed_samples if not self.prefixed_families or family in self.prefixed_families else 0


@dataclass
class SampleConfig(Config):
    split: str = "rl"
    num_samples: int = 4
    temperature: float = 1.0
    out: str | None = "runs/samples.jsonl"


def collect_prompts(cfg: Config) -> tuple[list[str], list[str | None]]:
    """Prompt texts and their world families (None for user-supplied prompts)."""
    if cfg.prompt:
        texts, families = list(cfg.prompt), [None] * len(cfg.prompt)
    elif cfg.prompts:
        from rlhfkit.data.loaders import load_prompts

        texts = [conv[-1].content for conv in load_prompts(cfg.prompts)]
        families = [None] * len(texts)
    else:
        ps = build_world(cfg.world).prompts(cfg.split)
        texts, families = [p.text for p in ps], [p.family for p in ps]
    if cfg.limit:
        texts, families = texts[: cfg.limit], families[: cfg.limit]
    return texts, families


def main(cfg: Config) -> list[dict]:
    seed_everything(cfg.seed)
    model, tok = load_causal_lm(cfg.model, device=cfg.device)
    texts, families = collect_prompts(cfg)
    # K samples per prompt: each prompt repeated K - P times in one batched call, and P times continuing the prefix.
    n_pre = [cfg.prefixed_for(fam) for fam in families]
    n_free = [cfg.samples_for(fam) - p for fam, p in zip(families, n_pre)]
    kw = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
              batch_size=cfg.batch_size, seed=cfg.seed)
    free = iter(answer(model, tok, [t for t, n in zip(texts, n_free) for _ in range(n)], **kw) if sum(n_free) else [])
    pre = iter(answer(model, tok, [t for t, p in zip(texts, n_pre) for _ in range(p)], prefix=cfg.prefix, **kw) if sum(n_pre) else [])
    rows = []
    for text, fam, n, p in zip(texts, families, n_free, n_pre):
        group = [next(free) for _ in range(n)] + [next(pre) for _ in range(p)]
        rows.append({"prompt": text, "responses": [g["response"] for g in group],
                     "terminated": [g["terminated"] for g in group], "policy": cfg.model, "family": fam})
    if cfg.out:
        from rlhfkit.data.loaders import write_jsonl

        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        write_jsonl(cfg.out, rows)
        print(f"[generate] wrote {len(rows)} prompts, {sum(len(r['responses']) for r in rows)} responses to {cfg.out}", flush=True)
    else:
        for r in rows:
            print(json.dumps({"prompt": r["prompt"], "responses": r["responses"]}, ensure_ascii=False))
    return rows
