"""The demo's Constitutional AI supervised stage (CAI-SL, Bai et al. 2022, sec. 3) in the built-in world.

Four pipeline stages (`rlhfkit pipeline --config=demo_ai`, beside the RLAIF path of ai_feedback.py), the
paper's setting: red-team prompts answered by a helpful-only model, revised into harmless answers, SFT on those.

`sft_helpful` (train_helpful): the helpful-only policy: the generic SFT stage from the pretrained model on
  the world's SFT demonstrations with every harmful request answered by compliance
  (rlhfkit.world.critiques.helpful_only_demos; the rest as SFT's), trained as the SFT model is. It helps
  with harmful requests, so its red-team answers are mostly harmful, as the paper's helpful-only RLHF
  model's are.
`cai_critic` (train_critic): the world's tiny model cannot critique and revise untaught, as its judge
  could not judge untaught. The world writes critique/revision chains for training prompts only
  (rlhfkit.world.critiques: red-team prompts, answers of the kinds the world produces and the helpful-only
  model gives, a principle's critique request, a critique naming what is wrong, the ideal revision), shown in
  the conversations `rlhfkit cai` builds; the generic SFT stage fine-tunes the pretrained model on them -> the
  critic (`<out_dir>/model`). Only the critique and revision turns are trained (assistant_turns=last: each
  chain is two rows), never the answer being critiqued. demo_ai parts the red-team texts of both training splits
  (`parted`, `red_team`): half of each topic's texts are the critic's (`critic_share`: chains of them; a critic
  never taught a harm revises such requests into a look-alike's help, and the sft split has 5 of the 10 harmful
  topics), `cai` revises the other half, and no chain is for a text `cai` revises (`unseen_revised`: the splits
  draw from the same few templates x actions, so texts recur). The pretrained model, not the helpful-only one, is
  the critic's base: fine-tuned from the helpful-only model, the critic revised 81% of harmful requests into
  refusals, from the pretrained model 95% (docs/results.md); its first answers are not needed (`helpful_answers`).
`cai` (revise): the library's `rlhfkit cai` with the critic on the red-team prompts (harmful requests and
  their benign look-alikes; never eval prompts) of the `parted` splits not held for the critic: the critic answers (as
  the helpful-only policy) or, with `helpful_answers`, the helpful-only model itself does (`cai responder=`: fine-tuning on
  chains moves the critic's own first answers away from the helpful-only model's); the critic critiques the
  answer under a principle drawn from `principles` and revises it, `revisions` rounds -> demos.jsonl
  (prompt, final revision) and chains.jsonl. Then, with gold, after the fact
  (`cai_metrics.json`): per prompt, does the final revision beat the original answer (win / tie / loss,
  overall and per family), behaviour rates of the originals and the revisions (harmful compliance
  included), and how often the critique's "Yes."/"No." answers its principle's question as gold would
  (did the answer help with harm / refuse a harmless request?).
`sft_cai` (train_sft_cai): the pretrained model fine-tuned on the revisions plus `sft_demos` of the SFT
  demonstrations of every family but `harmful` (with the SFT stage's defaults) -> the CAI-SL policy, evaluated
  beside SFT and the helpful-only model by the `eval` stage: it is SFT with the people's harmful demonstrations
  replaced by the critic's revisions.

Departures from the paper: the critic learns critiquing from world-written chains and is fine-tuned from the
pretrained model (the paper's critic is a helpful RLHF model prompted with few-shot critiques); the helpful-only
model is SFT on demonstrations that comply (the paper's is RLHF on helpfulness preferences); SL-CAI's helpful data
are the SFT demonstrations (the paper, helpful samples of the model).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field, replace
from statistics import mean
from typing import Any

from rlhfkit.data.loaders import write_jsonl
from rlhfkit.demo.gold import behaviour_rates
from rlhfkit.files import write_atomic
from rlhfkit.stages import cai as cai_stage
from rlhfkit.stages import sft
from rlhfkit.world import WorldConfig, build_world
from rlhfkit.world.critiques import FAMILIES, PRINCIPLES, helpful_only_demos, make_chains
from rlhfkit.world.gold import complies
from rlhfkit.world.reviews import CONSTITUTION


def red_team(world, critic_share: float, splits=("rl",)) -> tuple[list, list]:
    """The red-team prompts (harmful requests and their benign look-alikes) of the training `splits`, parted by text:
    (the critic's, those `cai` revises). Within each topic the distinct texts are ordered by hash and the first
    `critic_share` of them (rounded) are the critic's: every topic of the splits on both sides, the same parting for
    every seed, and a text that recurs (the splits share texts) on one side only."""
    prompts = [p for s in splits for p in world.prompts(s) if p.family in FAMILIES]
    texts: dict[tuple, set[str]] = {}
    for p in prompts:
        texts.setdefault((p.family, p.meta.get("topic")), set()).add(p.text)
    held = set()
    for group in texts.values():
        ordered = sorted(group, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
        held.update(ordered[: round(critic_share * len(ordered))])
    return [p for p in prompts if p.text in held], [p for p in prompts if p.text not in held]


def _demos(world, n: int, seed: int, harmful: bool = True) -> list[dict]:
    """`n` of the helpful-only demonstrations (all of them if n >= their number), drawn by `seed`; with
    `harmful=False` those of the other families only (the SFT demonstrations, nothing about harm)."""
    demos = [{"prompt": p.text, "completion": r, "family": p.family} for p, r in helpful_only_demos(world, seed)
             if harmful or p.family != "harmful"]
    return random.Random(f"{seed}:cai-mix").sample(demos, min(n, len(demos)))


@dataclass
class HelpfulConfig:
    out_dir: str = "runs/sft_helpful"  # data.jsonl, and the helpful-only policy in <out_dir>/model
    seed: int = 0  # the compliant answers' draws; the SFT stage's seed
    world: WorldConfig = field(default_factory=WorldConfig)
    sft: sft.Config = field(default_factory=sft.Config)  # how it is trained (the pipeline: as its `sft` section, from the pretrained model)


def train_helpful(cfg: HelpfulConfig) -> None:
    os.makedirs(cfg.out_dir, exist_ok=True)
    rows = _demos(build_world(cfg.world), 1 << 30, cfg.seed)
    write_jsonl(cfg.sft.data, rows)
    print(f"[sft_helpful] {len(rows)} helpful-only demonstrations ({sum(r['family'] == 'harmful' for r in rows)} harmful "
          f"requests answered by compliance) -> {cfg.sft.data}", flush=True)
    sft.train(cfg.sft)


@dataclass
class CriticConfig:
    out_dir: str = "runs/cai_critic"  # chains.jsonl (+ meta), and the critic model in <out_dir>/model
    seed: int = 0  # chain draws, the SFT demonstrations mixed in; the SFT stage's seed
    world: WorldConfig = field(default_factory=WorldConfig)  # the world whose training prompts the chains are for
    chains: int = 3000  # critique/revision chains the world writes (two SFT rows each)
    splits: list[str] = field(default_factory=lambda: ["sft", "rl"])  # the training splits whose red-team prompts they are for
    unseen_revised: bool = False  # no chain asks a question `cai` revises (an RL red-team prompt's text; sft and rl share texts)
    parted: list[str] = field(default_factory=lambda: ["rl"])  # the splits whose red-team texts are parted: the critic's share, `cai` revises the rest
    critic_share: float = 0.0  # this share of each topic's texts in `parted` is the critic's (chains, if its split is in `splits`), never revised
    sft_demos: int = 2500  # helpful-only demonstrations mixed in (the critic still answers like the helpful-only model)
    constitution: str = ""  # "": the world's, rlhfkit/world/constitution.yaml
    sft: sft.Config = field(default_factory=sft.Config)  # how the critic is trained (the pipeline: from the pretrained model; paths wired)

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if not self.splits or set(self.splits) - {"sft", "rl"}:
            raise ConfigError(f"'splits': chains are written for the training splits sft and/or rl only, got {self.splits}")
        if not self.parted or set(self.parted) - {"sft", "rl"}:
            raise ConfigError(f"'parted': `cai` revises red-team prompts of the training splits sft and/or rl only, got {self.parted}")
        if not 0.0 <= self.critic_share < 1.0:
            raise ConfigError(f"'critic_share': a share in [0, 1), got {self.critic_share}")
        if self.sft.assistant_turns != "last":  # `all` would train the critiqued answer too, flaws and all
            raise ConfigError("'sft.assistant_turns': the critic trains on the last turn of each row (the critique "
                              "or the revision) only; leave it at 'last'")


def train_critic(cfg: CriticConfig) -> None:
    os.makedirs(cfg.out_dir, exist_ok=True)
    world = build_world(cfg.world)
    revised = {p.text for p in red_team(world, cfg.critic_share, cfg.parted)[1]} if cfg.unseen_revised else set()
    pool = [p for s in cfg.splits for p in world.prompts(s) if p.family in FAMILIES and p.text not in revised]
    chains = make_chains(world, cfg.chains, cfg.seed, cfg.constitution or CONSTITUTION, prompts=pool)
    rows = [r for c in chains for r in c["rows"]] + _demos(world, cfg.sft_demos, cfg.seed)
    write_jsonl(cfg.sft.data, rows)
    write_jsonl(os.path.join(cfg.out_dir, "chains_meta.jsonl"), ({k: v for k, v in c.items() if k != "rows"} for c in chains))
    print(f"[cai_critic] {len(chains)} critique/revision chains of {'/'.join(cfg.splits)} prompts + {len(rows) - 2 * len(chains)} "
          f"helpful-only demonstrations -> {cfg.sft.data}", flush=True)
    sft.train(cfg.sft)


@dataclass
class ReviseConfig:
    out_dir: str = "runs/cai"  # prompts.jsonl, demos.jsonl, chains.jsonl, cai_metrics.json
    seed: int = 0  # sampling and principle draws
    model: str = "runs/cai_critic/model"  # the critic: critiques and revises (and answers, without helpful_answers)
    helpful_answers: bool = False  # the first answers are the helpful-only model's (`responder`), as in the paper
    responder: str = "runs/sft_helpful/model"  # the helpful-only model (wired by the pipeline)
    world: WorldConfig = field(default_factory=WorldConfig)  # whose RL prompts are revised, and gold afterwards
    repeats: int = 1  # each red-team RL prompt this many times (independent samples)
    parted: list[str] = field(default_factory=lambda: ["rl"])  # the splits whose red-team prompts it revises, less those held for the critic (the pipeline: cai_critic.parted)
    held_for_critic: float = 0.0  # the share of each topic's red-team texts kept for the critic's chains, not revised (the pipeline: cai_critic.critic_share)
    constitution: str = ""  # "": the world's
    principles: list[str] = field(default_factory=lambda: list(PRINCIPLES))  # drawn per prompt and round
    cai: cai_stage.Config = field(default_factory=lambda: cai_stage.Config(prompts="<wired>"))  # revisions, sampling (paths wired)


def revise(cfg: ReviseConfig) -> dict:
    os.makedirs(cfg.out_dir, exist_ok=True)
    world = build_world(cfg.world)
    prompts = [p for p in red_team(world, cfg.held_for_critic, cfg.parted)[1] for _ in range(cfg.repeats)]
    path = lambda name: os.path.join(cfg.out_dir, name)  # noqa: E731
    write_jsonl(path("prompts.jsonl"), ({"prompt": p.text, "family": p.family, "id": p.id} for p in prompts))
    # 1. The library's stage: texts in, chains out (nothing of gold).
    stats = cai_stage.main(replace(cfg.cai, model=cfg.model, responder=cfg.responder if cfg.helpful_answers else None,
                                   prompts=path("prompts.jsonl"), seed=cfg.seed,
                                   constitution=cfg.constitution or CONSTITUTION, principles=list(cfg.principles),
                                   out=path("demos.jsonl"), chains=path("chains.jsonl"), limit=0))
    # 2. Measure, with gold.
    with open(path("chains.jsonl")) as f:
        chains = [json.loads(line) for line in f if line.strip()]
    metrics = {"cai": stats, **revision_metrics(world, prompts, chains)}
    write_atomic(path("cai_metrics.json"), json.dumps(metrics, indent=2))
    for group, o in metrics["revision_vs_original"].items():
        print(f"[cai] revisions vs originals by gold, {group} ({o['prompts']} prompts): win {o['win']} tie {o['tie']} "
              f"loss {o['loss']}", flush=True)
    print(f"[cai] harmful compliance {metrics['compliance_harmful_original']} -> {metrics['compliance_harmful_revision']}; "
          f"critique verdicts right {metrics['critique_verdict_accuracy']}", flush=True)
    return metrics


def revision_metrics(world, prompts: list, chains: list[dict]) -> dict[str, Any]:
    """Final revision against the original answer by gold, per prompt (win / tie / loss shares, overall and per
    family), the behaviour rates of both, and the critiques' verdicts against gold's flags."""
    rows = {"initial": [], "final": []}
    for p, c in zip(prompts, chains):
        for key in rows:
            g = world.gold(p, c[key])
            rows[key].append({"family": p.family, "gold": g.score, "flags": g.flags, "criteria": g.criteria})
    outcome = ["win" if f["gold"] > i["gold"] else "loss" if f["gold"] < i["gold"] else "tie"
               for i, f in zip(rows["initial"], rows["final"])]
    groups = {"all": range(len(prompts))} | {fam: [i for i, p in enumerate(prompts) if p.family == fam] for fam in FAMILIES}
    flawed = [i for i, r in enumerate(rows["initial"]) if r["gold"] < 1.0]
    verdicts = []  # the first round's critique: does its Yes/No answer the principle's question as gold does?
    for p, c in zip(prompts, chains):
        r = c["rounds"][0]
        truth = {"harmless": complies(c["initial"]),  # harmful instructions, to a harmful request or a look-alike
                 "not_evasive": p.family == "benign" and world.gold(p, c["initial"]).flags["refused"]}.get(r["principle"])
        said = r["critique"].split(".")[0].strip().lower()
        if truth is not None and said in ("yes", "no"):
            verdicts.append(float((said == "yes") == truth))
        elif truth is not None:
            verdicts.append(0.0)  # neither "Yes." nor "No.": not an answer to the question
    share = lambda idx: {k: (sum(outcome[i] == k for i in idx) / len(idx) if idx else None)  # noqa: E731
                         for k in ("win", "tie", "loss")} | {"prompts": len(idx)}
    return {
        "prompts": len(prompts),
        "revision_vs_original": {g: share(list(idx)) for g, idx in groups.items()},
        "revision_vs_original_where_original_below_1": share(flawed),
        "gold_original": mean(r["gold"] for r in rows["initial"]) if prompts else None,
        "gold_revision": mean(r["gold"] for r in rows["final"]) if prompts else None,
        "rates_original": behaviour_rates(rows["initial"]),
        "rates_revision": behaviour_rates(rows["final"]),
        "compliance_harmful_original": _compliance(prompts, [c["initial"] for c in chains]),
        "compliance_harmful_revision": _compliance(prompts, [c["final"] for c in chains]),
        "changed": mean(float(c["final"] != c["initial"]) for c in chains) if chains else None,
        "critique_verdict_accuracy": mean(verdicts) if verdicts else None,
    }


def _compliance(prompts: list, answers: list[str]) -> float | None:
    """The share of harmful requests an answer helps with (gold's `complies`: the topic's instructions, not refused)."""
    helped = [float(complies(a)) for p, a in zip(prompts, answers) if p.family == "harmful"]
    return mean(helped) if helped else None


@dataclass
class SFTCAIConfig:
    out_dir: str = "runs/sft_cai"  # data.jsonl, and the CAI-SL policy in <out_dir>/model
    seed: int = 0  # the SFT demonstrations mixed in; the SFT stage's seed
    world: WorldConfig = field(default_factory=WorldConfig)
    demos: str = "runs/cai/demos.jsonl"  # (prompt, final revision) of the cai stage
    sft_demos: int = 1000  # helpful demonstrations mixed in (no harmful family), so the policy keeps the other families
    sft: sft.Config = field(default_factory=sft.Config)  # fine-tunes the pretrained model in the pipeline (paths wired; defaults: as SFT)


def train_sft_cai(cfg: SFTCAIConfig) -> None:
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(cfg.demos) as f:
        revisions = [json.loads(line) for line in f if line.strip()]
    rows = revisions + _demos(build_world(cfg.world), cfg.sft_demos, cfg.seed, harmful=False)
    write_jsonl(cfg.sft.data, rows)
    print(f"[sft_cai] {len(revisions)} revisions + {len(rows) - len(revisions)} helpful demonstrations -> {cfg.sft.data}", flush=True)
    sft.train(cfg.sft)
