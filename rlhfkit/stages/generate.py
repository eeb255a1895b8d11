"""`rlhfkit generate` and `rlhfkit sample`: batched sampling with a KV cache.

`generate` answers prompts (from `prompt=[...]` or a prompts file) and prints or
writes them. `sample` draws K responses per prompt at temperature 1 and writes the
queue that people (`rlhfkit label load`) or an annotator rank; `prefixed_samples`
of the K continue a forced `prefix` (e.g. a refusal opener), so every prompt's
candidates include one for the labellers to judge. One JSONL row per prompt:
    {"prompt": str, "responses": [str] * K, "terminated": [bool] * K, "policy": str}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from rlhfkit.data.records import Prompt, prompt_json
from rlhfkit.models.load import load_causal_lm
from rlhfkit.rollout import sample_groups
from rlhfkit.tracking import seed_everything

REFUSAL_PREFIX = "I can't help with that."  # the default forced opening of prefixed samples


@dataclass
class Config:
    model: str = "runs/sft/model"  # local HF causal LM directory
    prompt: list[str] = field(default_factory=list)  # prompts given on the command line
    prompts: str | None = None  # file/dir of prompts (JSONL/Parquet/HF dataset with `prompt` or `messages`)
    limit: int = 0  # use only the first N prompts (0: all)
    num_samples: int = 1  # responses per prompt (K)
    max_new_tokens: int = 48  # response length limit
    temperature: float = 0.7  # 0: greedy
    top_p: float = 1.0  # nucleus sampling
    batch_size: int = 64  # sequences per generation batch
    seed: int = 0  # sampling seed
    out: str | None = None  # JSONL to write (one row per prompt)
    prefix: str = REFUSAL_PREFIX  # forced opening of the prefixed samples
    prefixed_samples: int = 0  # of the K samples per prompt, this many continue `prefix` (0: none)
    device: str = "auto"  # auto | cpu | cuda

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if not self.prompt and not self.prompts:
            raise ConfigError("give prompts: prompts=FILE or prompt='[\"...\"]'")
        if not 0 <= self.prefixed_samples <= self.num_samples:
            raise ConfigError(f"prefixed_samples ({self.prefixed_samples}) must be in [0, num_samples = {self.num_samples}]")


@dataclass
class SampleConfig(Config):
    num_samples: int = 4
    temperature: float = 1.0
    out: str | None = "runs/samples.jsonl"


def collect_prompts(cfg: Config) -> list[Prompt]:
    if cfg.prompt:
        texts = list(cfg.prompt)
    else:
        from rlhfkit.data.loaders import prompt_list

        texts = prompt_list(cfg.prompts)
    return texts[: cfg.limit] if cfg.limit else texts


def main(cfg: Config) -> list[dict]:
    seed_everything(cfg.seed)
    texts = collect_prompts(cfg)  # validate the prompts before loading a model
    model, tok = load_causal_lm(cfg.model, device=cfg.device)
    groups = sample_groups(model, tok, texts, [cfg.num_samples - cfg.prefixed_samples] * len(texts),
                           [cfg.prefixed_samples] * len(texts), cfg.prefix, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed)
    rows = [{"prompt": prompt_json(t), "responses": [g["response"] for g in group], "terminated": [g["terminated"] for g in group],
             "policy": cfg.model} for t, group in zip(texts, groups)]
    if cfg.out:
        from rlhfkit.data.loaders import write_jsonl

        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        write_jsonl(cfg.out, rows)
        print(f"[generate] wrote {len(rows)} prompts, {sum(len(r['responses']) for r in rows)} responses to {cfg.out}", flush=True)
    else:
        for r in rows:
            print(json.dumps({"prompt": r["prompt"], "responses": r["responses"]}, ensure_ascii=False))
    return rows
