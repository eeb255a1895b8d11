"""The demo's AI-feedback path (RLAIF): a judge model trained on the world's reviews labels the same
queue the simulated panel labelled; its labels train a reward model and PPO beside the panel's.
`cai_label` (label_cai) is Constitutional AI's RL-stage data: the same judge compares the CAI-SL
policy's samples to red-team prompts under harmlessness principles, mixed with the panel's pairs of
the other families; `rm_cai` / `ppo_cai` (generic `rm` and `ppo`) train on them from the CAI-SL policy.

Two pipeline stages live here (`rlhfkit pipeline --config=demo_ai`; the AI reward model and PPO are the
generic `rm` and `ppo` stages, `rm_ai` and `ppo_ai`):

`judge` (train_judge): the world writes `reviews` judging examples for training prompts only
  (rlhfkit.world.reviews: pairs of the kinds of answers the world produces, shown in the judge prompt
  of the world's constitution, with gold's verdict) and, with `sample_reviews`, reviews of the SFT
  model's own temperature-1 samples to sft prompts (the kinds of answers the judge will label, which the
  world's kinds miss; never the RL prompts of the queue it labels), and the generic SFT stage fine-tunes
  the SFT model on them -> `<out_dir>/model`, the judge. The policy itself is untouched.

`ai_label` (label): four steps.
  1. the feedback stage's store (`feedback.db`, the panel's rankings) is copied (SQLite backup), so the panel's stage
     stays as it was and the copy holds both sources;
  2. `rlhfkit judge` (rlhfkit.stages.judge) labels the feedback queue file into the copy as
     source="ai" judgements and exports the AI pairs (`pairs.jsonl`, what `rm_ai` trains on). It is
     given the judge model, the constitution and the queue's texts: nothing of gold or the panel;
  3. measurement, after the labelling, with gold (`ai_metrics.json`):
     held out: SFT samples to the world's eval prompts (never in reviews or the queue), every pair of a
       prompt's samples whose gold differs by more than 0.05, judged in both orders under a principle
       drawn per pair; accuracy against gold's order per family and per principle, from one order
       ("before": position bias included) and swap-debiased ("after"), position consistency (the share
       of pairs whose two orders agree; after averaging the label is order-free by construction), and
       the simulated panel's accuracy on the same pairs (one annotator of the panel per pair);
     queue: the AI's and the panel's labels against gold on the queue's pairs, and the AI's agreement
       with the panel's majority where the panel's rankings of a pair have one;
     cost: labels (pairwise comparisons) per second of the judge (both orders, store writes) and of
       the panel (labelling the same queue into a scratch store; a ranking of K counts K(K-1)/2).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
import tempfile
import time
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from rlhfkit.data.loaders import write_jsonl
from rlhfkit.feedback.constitution import load_constitution
from rlhfkit.files import write_atomic
from rlhfkit.stages import judge as judge_stage
from rlhfkit.stages import sft
from rlhfkit.world import WorldConfig, build_world
from rlhfkit.world.panel import PanelConfig, label_queue, make_panel, rank
from rlhfkit.world.reviews import CONSTITUTION, MIN_GAP, make_reviews, sample_reviews

JUDGE_NAME = "ai-judge:world"


@dataclass
class JudgeConfig:
    out_dir: str = "runs/judge"  # reviews.jsonl, and the judge model in <out_dir>/model
    seed: int = 0  # review draws; the SFT stage's seed
    world: WorldConfig = field(default_factory=WorldConfig)  # the world whose training prompts are reviewed
    reviews: int = 6000  # judging examples the world writes (sft and rl prompts only)
    sample_reviews: int = 0  # plus this many reviews of the SFT model's own samples to sft prompts (gold's verdict)
    sample_prompts: int = 0  # the sft prompts sampled for them: the first N of the split (0: all)
    num_samples: int = 4  # samples per prompt, at temperature 1 (as the feedback queue's)
    max_new_tokens: int = 48  # their length limit (the queue's)
    batch_size: int = 64  # sequences per generation batch
    device: str = "auto"  # where the samples are drawn
    constitution: str = ""  # the judge prompt format ("": the world's, rlhfkit/world/constitution.yaml)
    sft: sft.Config = field(default_factory=sft.Config)  # how the judge is trained (model, data, out_dir wired)


def train_judge(cfg: JudgeConfig) -> None:
    os.makedirs(cfg.out_dir, exist_ok=True)
    world = build_world(cfg.world)
    rows = make_reviews(world, cfg.reviews, cfg.seed, cfg.constitution or CONSTITUTION)
    if cfg.sample_reviews:
        rows += sample_reviews(world, own_samples(cfg, world), cfg.sample_reviews, cfg.seed, cfg.constitution or CONSTITUTION)
        random.Random(f"{cfg.seed}:judge-reviews").shuffle(rows)
    write_jsonl(cfg.sft.data, ({"prompt": r["prompt"], "completion": r["completion"], "family": r["family"]} for r in rows))
    write_jsonl(os.path.join(cfg.out_dir, "reviews_meta.jsonl"), rows)  # the same reviews with their answers and gold
    n_own = sum(r["origin"] == "sample" for r in rows)
    print(f"[judge] {len(rows)} reviews of training prompts ({n_own} of the SFT model's samples) -> {cfg.sft.data}", flush=True)
    sft.train(cfg.sft)


def own_samples(cfg: JudgeConfig, world) -> list[tuple[Any, list[tuple[str, bool]]]]:
    """`num_samples` answers of the model the judge starts from (the SFT model) to each of the first
    `sample_prompts` sft prompts, at temperature 1: (prompt, [(text, terminated)])."""
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.rollout import answer

    prompts = world.prompts("sft")[: cfg.sample_prompts or None]
    model, tok = load_causal_lm(cfg.sft.model, device=cfg.device)
    out = answer(model, tok, [p.text for p in prompts for _ in range(cfg.num_samples)], max_new_tokens=cfg.max_new_tokens,
                 temperature=1.0, batch_size=cfg.batch_size, seed=cfg.seed)
    k = cfg.num_samples
    return [(p, [(s["response"], s["terminated"]) for s in out[i * k : (i + 1) * k]]) for i, p in enumerate(prompts)]


@dataclass
class LabelConfig:
    out_dir: str = "runs/ai_label"  # feedback.db (a copy), pairs.jsonl, judge_stats.json, ai_metrics.json
    seed: int = 0  # principle draws, held-out samples, panel draws
    judge: str = "runs/judge/model"  # the judge model
    policy: str = "runs/sft/model"  # whose samples to the eval prompts make the held-out pairs
    feedback_dir: str = "runs/feedback"  # the feedback stage's queue.jsonl and feedback.db
    constitution: str = ""  # "": the world's
    world: WorldConfig = field(default_factory=WorldConfig)
    panel: PanelConfig = field(default_factory=PanelConfig)  # the feedback stage's panel (compared with, and timed)
    swap: bool = True  # position-swap debiasing of the queue labels
    margin_scale: float = 0.0  # meta.margin on the AI pairs (0: plain Bradley-Terry, like the panel's pairs)
    heldout_samples: int = 4  # SFT samples per eval prompt for the held-out pairs (0: skip that measurement)
    max_new_tokens: int = 48  # their length limit (the feedback queue's)
    batch_size: int = 64  # sequences per forward pass
    device: str = "auto"  # auto | cpu | cuda


def ai_judgements(cfg: LabelConfig) -> tuple[str, dict]:
    """Steps 1-2: copy the panel's store, then `rlhfkit judge` labels the queue file into the copy. The judge is
    given paths to its model, its constitution and the queue's texts, nothing else. Returns (store path, stats)."""
    os.makedirs(cfg.out_dir, exist_ok=True)
    db = os.path.join(cfg.out_dir, "feedback.db")
    if os.path.exists(db):
        os.unlink(db)
    # SQLite's backup API, not a file copy: the panel's rows may still sit in the source's write-ahead log
    with closing(sqlite3.connect(os.path.join(cfg.feedback_dir, "feedback.db"))) as src, closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    stats = judge_stage.main(judge_stage.Config(
        model=cfg.judge, db=f"sqlite:///{os.path.abspath(db)}", queue=os.path.join(cfg.feedback_dir, "queue.jsonl"),
        constitution=cfg.constitution or CONSTITUTION, name=JUDGE_NAME, swap=cfg.swap, margin_scale=cfg.margin_scale,
        out=os.path.join(cfg.out_dir, "pairs.jsonl"), stats=os.path.join(cfg.out_dir, "judge_stats.json"),
        batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device))
    return db, stats


def label(cfg: LabelConfig) -> dict:
    constitution = cfg.constitution or CONSTITUTION
    db, stats = ai_judgements(cfg)  # 1.-2. texts in, AI judgements out
    # 3. Measure, with gold.
    world = build_world(cfg.world)
    metrics: dict[str, Any] = {"judge": cfg.judge, "constitution": constitution, "min_gold_gap": MIN_GAP,
                               "queue": queue_metrics(cfg, world, db, stats)}
    if cfg.heldout_samples:
        metrics["heldout"] = heldout_metrics(cfg, world, constitution)
    write_atomic(os.path.join(cfg.out_dir, "ai_metrics.json"), json.dumps(metrics, indent=2))
    h = metrics.get("heldout", {})
    print(f"[ai_label] held out: judge accuracy {h.get('judge_accuracy')} (one order {h.get('judge_accuracy_one_order')}), "
          f"panel {h.get('panel_accuracy')}, consistency {h.get('position_consistency')}; queue: agreement with the panel "
          f"majority {metrics['queue']['agreement_with_panel_majority']}", flush=True)
    return metrics


@dataclass
class CAILabelConfig:
    out_dir: str = "runs/cai_label"  # queue.jsonl, feedback.db, ai_pairs.jsonl, pairs.jsonl, cai_label_metrics.json
    seed: int = 0  # sampling and principle draws
    judge: str = "runs/judge/model"  # the AI feedback model: the world's judge
    policy: str = "runs/sft_cai/model"  # whose samples the judge compares: the CAI-SL policy
    helpful_pairs: str = "runs/feedback/pairs.jsonl"  # the panel's pairs ("human" helpfulness labels), kept for the other families
    families: list[str] = field(default_factory=lambda: ["harmful", "benign"])  # red-team prompts: AI-labelled
    principles: list[str] = field(default_factory=lambda: ["harmless", "not_evasive"])  # drawn per AI comparison
    num_samples: int = 4  # the policy's samples per red-team RL prompt, at temperature 1
    max_new_tokens: int = 48
    constitution: str = ""  # "": the world's
    world: WorldConfig = field(default_factory=WorldConfig)
    batch_size: int = 64
    device: str = "auto"


def label_cai(cfg: CAILabelConfig) -> dict:
    """Constitutional AI's RL-stage data (Bai et al. 2022, sec. 4): the CAI-SL policy's samples to the red-team RL
    prompts, compared by the AI judge under harmlessness principles (`rlhfkit judge principles=`), mixed with the
    panel's pairs of every other family (the paper mixes AI harmlessness labels with human helpfulness labels) ->
    `pairs.jsonl`, what `rm_cai` trains on. Then, with gold: the AI labels' accuracy per family."""
    from rlhfkit.data.loaders import load_preferences
    from rlhfkit.demo.feedback import first_of_each_item
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.rollout import sample_groups

    os.makedirs(cfg.out_dir, exist_ok=True)
    world = build_world(cfg.world)
    # 1. The queue: the policy's samples to the red-team RL prompts.
    prompts = [p for p in world.prompts("rl") if p.family in cfg.families]
    model, tok = load_causal_lm(cfg.policy, device=cfg.device)
    groups = sample_groups(model, tok, [p.text for p in prompts], [cfg.num_samples] * len(prompts), [0] * len(prompts),
                           max_new_tokens=cfg.max_new_tokens, temperature=1.0, batch_size=cfg.batch_size, seed=cfg.seed)
    del model
    rows = first_of_each_item([{"prompt": p.text, "responses": [g["response"] for g in group],
                                "terminated": [g["terminated"] for g in group], "policy": cfg.policy, "family": p.family}
                               for p, group in zip(prompts, groups)])
    queue = os.path.join(cfg.out_dir, "queue.jsonl")
    write_jsonl(queue, rows)
    # 2. The judge labels it (texts only), under the harmlessness principles.
    db = os.path.join(cfg.out_dir, "feedback.db")
    if os.path.exists(db):
        os.unlink(db)
    ai_pairs = os.path.join(cfg.out_dir, "ai_pairs.jsonl")
    stats = judge_stage.main(judge_stage.Config(
        model=cfg.judge, db=f"sqlite:///{os.path.abspath(db)}", queue=queue, constitution=cfg.constitution or CONSTITUTION,
        name=JUDGE_NAME, swap=True, margin_scale=0.0, out=ai_pairs, stats=os.path.join(cfg.out_dir, "judge_stats.json"),
        batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device, principles=list(cfg.principles)))
    # 3. Mix: the AI's red-team pairs and the panel's pairs of the other families.
    with open(ai_pairs) as f:
        mine = [line for line in f if line.strip()]
    with open(cfg.helpful_pairs) as f:
        panel = [line for line in f if line.strip() and json.loads(line).get("meta", {}).get("family") not in cfg.families]
    with open(os.path.join(cfg.out_dir, "pairs.jsonl"), "w") as f:
        f.writelines(mine + panel)
    # 4. Measure, with gold: the AI labels against gold's order, per family.
    right, fams = against_gold(world, load_preferences(ai_pairs), queue_gold(world, rows))
    metrics = {"queue_items": len(rows), "ai_pairs": len(mine), "panel_pairs": len(panel), "principles": list(cfg.principles),
               "judge_accuracy": _acc(right), "judge_pairs_scored": len(right), "by_family": _grouped(fams, accuracy=right),
               "position_consistency": stats.get("position_consistency"), "judge_labels_per_second": stats.get("labels_per_second")}
    write_atomic(os.path.join(cfg.out_dir, "cai_label_metrics.json"), json.dumps(metrics, indent=2))
    print(f"[cai_label] {len(mine)} AI pairs of {len(rows)} red-team items (judge right on {metrics['judge_accuracy']}) "
          f"+ {len(panel)} panel pairs of the other families -> {cfg.out_dir}/pairs.jsonl", flush=True)
    return metrics


def queue_gold(world, rows: list[dict]):
    """gold(prompt, text) -> score of a queue's answers, each scored with its own `terminated`, memoised."""
    terminated = {(r["prompt"], t): ok for r in rows for t, ok in zip(r["responses"], r.get("terminated") or [True] * len(r["responses"]))}
    cache: dict[tuple[str, str], float] = {}

    def gold(prompt: str, text: str) -> float:
        if (prompt, text) not in cache:
            cache[prompt, text] = world.gold(prompt, text, terminated.get((prompt, text), True)).score
        return cache[prompt, text]
    return gold


def against_gold(world, pairs, gold) -> tuple[list[float], list[str]]:
    """For each pair whose answers' gold differs by more than MIN_GAP: 1.0 where the chosen one is gold's better
    (else 0.0), and the prompt's family."""
    right, fams = [], []
    for c in pairs:
        gc, gr = gold(c.prompt, c.chosen), gold(c.prompt, c.rejected)
        if abs(gc - gr) > MIN_GAP:
            right.append(float(gc > gr))
            fams.append(world.parse(c.prompt)[0])
    return right, fams


def _acc(xs: list[float]) -> float | None:
    return mean(xs) if xs else None


def _grouped(keys: list[str], **series: list[float]) -> dict[str, dict]:
    """Per key: the number of pairs and the mean of each series."""
    out = {}
    for k in sorted(set(keys)):
        idx = [i for i, x in enumerate(keys) if x == k]
        out[k] = {"pairs": len(idx), **{name: _acc([s[i] for i in idx]) for name, s in series.items()}}
    return out


def queue_metrics(cfg: LabelConfig, world, db: str, stats: dict) -> dict:
    """The AI's and the panel's labels of the queue against gold, and the AI's agreement with the panel's majority."""
    from rlhfkit.feedback.store import FeedbackStore
    from rlhfkit.demo.feedback import first_of_each_item

    with open(os.path.join(cfg.feedback_dir, "queue.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    gold = queue_gold(world, rows)
    store = FeedbackStore(f"sqlite:///{os.path.abspath(db)}")
    votes: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    panel = store.preference_pairs("simulated")
    for c in panel:
        votes[c.prompt, frozenset((c.chosen, c.rejected))][c.chosen] += 1
    panel_right, panel_fam = against_gold(world, panel, gold)
    ai_pairs = store.preference_pairs("ai")
    ai_right, ai_fam = against_gold(world, ai_pairs, gold)
    agree, majority_right = [], []
    for c in ai_pairs:
        gc, gr = gold(c.prompt, c.chosen), gold(c.prompt, c.rejected)
        v = votes.get((c.prompt, frozenset((c.chosen, c.rejected))), {})
        yes, no = v.get(c.chosen, 0), v.get(c.rejected, 0)
        if yes != no:
            agree.append(float(yes > no))
            if abs(gc - gr) > MIN_GAP:
                majority_right.append(float((gc > gr) == (yes > no)))
    # The panel's cost: the same queue labelled again into a scratch store, timed.
    with tempfile.TemporaryDirectory() as tmp:
        scratch = FeedbackStore(f"sqlite:///{os.path.join(tmp, 'panel.db')}")
        start = time.perf_counter()
        label_queue(scratch, world, first_of_each_item(rows), cfg.panel)
        seconds = time.perf_counter() - start
        rankings = len(scratch.judgements("simulated"))
        n_pairs = len(scratch.preference_pairs("simulated"))
    fam = {"judge": _grouped(ai_fam, accuracy=ai_right), "panel": _grouped(panel_fam, accuracy=panel_right)}
    return {"ai_pairs": len(ai_pairs), "ties": stats.get("ties"), "judge_accuracy": _acc(ai_right), "judge_pairs_scored": len(ai_right),
            "panel_accuracy": _acc(panel_right), "panel_pairs_scored": len(panel_right),
            "by_family": {f: {"pairs_judge": fam["judge"].get(f, {}).get("pairs", 0), "judge": fam["judge"].get(f, {}).get("accuracy"),
                              "pairs_panel": fam["panel"].get(f, {}).get("pairs", 0), "panel": fam["panel"].get(f, {}).get("accuracy")}
                          for f in sorted(set(ai_fam) | set(panel_fam))},
            "agreement_with_panel_majority": _acc(agree), "pairs_with_panel_majority": len(agree),
            "panel_majority_accuracy_there": _acc(majority_right),
            "position_consistency": stats.get("position_consistency"),
            "judge_labels_per_second": stats.get("labels_per_second"), "judge_seconds": stats.get("seconds"),
            "panel_labels_per_second": n_pairs / seconds if seconds > 0 else None, "panel_seconds": seconds,
            "panel_rankings": rankings, "panel_pair_labels": n_pairs}


def heldout_metrics(cfg: LabelConfig, world, constitution: str) -> dict:
    """Judge and panel against gold on pairs of SFT samples to the held-out eval prompts (module docstring, 3)."""
    import torch

    from rlhfkit.feedback.judge import Judge
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.rollout import answer

    prompts = [p for p in world.prompts("eval") for _ in range(cfg.heldout_samples)]
    policy, ptok = load_causal_lm(cfg.policy, device=cfg.device)
    samples = answer(policy, ptok, [p.text for p in prompts], max_new_tokens=cfg.max_new_tokens, temperature=1.0,
                     batch_size=cfg.batch_size, seed=cfg.seed)
    del policy
    by_prompt: dict[str, dict[str, tuple[float, bool]]] = defaultdict(dict)
    for p, s in zip(prompts, samples):
        by_prompt[p.text].setdefault(s["response"], (world.gold(p, s["response"], s["terminated"]).score, s["terminated"]))
    c = load_constitution(constitution)
    pairs = []  # (prompt, family, a, b, gold_a, gold_b, principle)
    for p in world.prompts("eval"):
        for (a, (ga, _)), (b, (gb, _)) in itertools.combinations(by_prompt[p.text].items(), 2):
            if abs(ga - gb) > MIN_GAP:
                pairs.append((p.text, p.family, a, b, ga, gb, c.sample(random.Random(f"{cfg.seed}:heldout:{len(pairs)}"))))
    if not pairs:
        return {"pairs": 0}

    # The judge: texts only.
    model, tok = load_causal_lm(cfg.judge, device=cfg.device)
    judge = Judge(model, tok, c, cfg.batch_size)
    start = time.perf_counter()
    got = judge.compare([x[0] for x in pairs], [x[2] for x in pairs], [x[3] for x in pairs], [x[6].comparison for x in pairs])
    judge_seconds = time.perf_counter() - start
    a_better = torch.tensor([x[4] > x[5] for x in pairs])
    right = lambda p: torch.where(p == 0.5, 0.5, ((p > 0.5) == a_better).double())  # noqa: E731  a tie counts half
    debiased, first, second = right(got["p"]), right(got["p_orders"][:, 0]), right(got["p_orders"][:, 1])
    one_order = (first + second) / 2  # each order's own verdict, averaged over the two orders shown
    picks_first = ((got["p_orders"][:, 0] > 0.5).double() + (got["p_orders"][:, 1] < 0.5).double()) / 2

    # The panel: one annotator per pair ranks the two answers in a random display order.
    panel, rng = make_panel(cfg.panel), random.Random(f"{cfg.seed}:heldout-panel")
    start = time.perf_counter()
    panel_right = []
    for prompt, _, a, b, _, _, _ in pairs:
        shown = [a, b] if rng.random() < 0.5 else [b, a]
        golds = [world.gold(prompt, t, by_prompt[prompt][t][1]) for t in shown]
        order = rank(rng.choice(panel), [g.score for g in golds], [len(t.split()) for t in shown],
                     [bool(g.flags.get("agrees_with_user", False)) for g in golds], rng)
        winner = shown[order[0]]
        panel_right.append(float((winner == a) == (by_prompt[prompt][a][0] > by_prompt[prompt][b][0])))
    panel_seconds = time.perf_counter() - start

    series = {"judge": debiased.tolist(), "judge_one_order": one_order.tolist(), "panel": panel_right,
              "consistency": got["consistent"].double().tolist()}
    return {"pairs": len(pairs), "prompts": len({x[0] for x in pairs}),
            "judge_accuracy": float(debiased.mean()), "judge_accuracy_one_order": float(one_order.mean()),
            "judge_accuracy_first_order": float(first.mean()), "judge_accuracy_second_order": float(second.mean()),
            "panel_accuracy": mean(panel_right),
            "position_consistency": float(got["consistent"].double().mean()), "position_consistency_debiased": 1.0,
            "first_position_rate": float(picks_first.mean()),
            "by_family": _grouped([x[1] for x in pairs], **series),
            "by_principle": _grouped([x[6].name for x in pairs], **series),
            "judge_labels_per_second": len(pairs) / judge_seconds, "panel_labels_per_second": len(pairs) / panel_seconds}
