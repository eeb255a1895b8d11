"""`rlhfkit judge`: an AI judge labels the feedback store's queue (RLAIF, Constitutional AI's preference model data).

Any local Hugging Face causal LM labels the same queue items that people label in
`rlhfkit label serve` and a simulated panel labels, into the same store, as
`source="ai"` judgements (rlhfkit.feedback.judge has the mechanism):

1. queue: a queue file (`rlhfkit sample` output) is loaded into the store first if
   given (as `rlhfkit label load`); then every queue item is judged;
2. pairs: an item of K responses is judged as its K(K-1)/2 pairs (Bai et al. and
   Lee et al. judge pairs); a principle of the constitution (of `principles`, where
   given: e.g. harmlessness only, for Constitutional AI's red-team comparisons) is
   drawn per pair, seeded by `seed` and the pair;
3. judge: batched forward passes in both orders (position-swap debiasing), an
   optional rationale first (`cot`); the label is P(a better than b);
4. write: one pairwise judgement per pair, the choice being the side with P > 0.5
   (exactly 0.5: a tie, which exports no pair), with the judge, the principle and
   P in their columns; the pairs of one item share a `group`, as a ranking's do, and
   `meta.margin` = margin_scale * logit(P(chosen)) is Llama 2's per-pair margin for `rm`;
5. export (`out`) and statistics (`stats`): the position-consistency rate, labels per second.

Pairs this judge (`name`) already labelled under this seed are skipped, so a rerun
continues where a stopped one ended. The AI never takes a person's queue slot: its
judgements name the item in `meta.item`, not as a queue assignment.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field

from rlhfkit.feedback.constitution import load_constitution
from rlhfkit.feedback.judge import Judge
from rlhfkit.models.load import load_causal_lm
from rlhfkit.tracking import seed_everything


@dataclass
class Config:
    model: str = "runs/sft/model"  # the judge: a local HF causal (chat) LM directory
    db: str = "sqlite:///feedback.db"  # SQLAlchemy URL (or file path) of the feedback store
    queue: str | None = None  # a queue file (`rlhfkit sample` JSONL) to load into the store first; None: the store's queue
    constitution: str | None = None  # principles and judge prompts (YAML); None: the packaged helpful/honest/harmless one
    name: str = ""  # the judge's annotator name in the store ("": ai-judge:<last two parts of the model path>)
    swap: bool = True  # judge both orders and average (position-swap debiasing)
    cot: bool = False  # the judge writes a rationale before the verdict is read
    cot_tokens: int = 64  # rationale length limit
    margin_scale: float = 1.0  # meta.margin = margin_scale * logit(P(chosen)) on each exported pair (0: no margin)
    limit: int = 0  # judge only the first N queue items (0: all)
    out: str | None = None  # export every AI pair of the store here (JSONL), for `rm` / `dpo`
    stats: str | None = None  # write this run's statistics here (JSON): consistency, labels per second, ...
    batch_size: int = 16  # sequences per forward pass
    chunk: int = 256  # pairs judged between writes to the store
    seed: int = 0  # principle draws
    principles: list[str] = field(default_factory=list)  # draw only these principles of the constitution (empty: all)
    device: str = "auto"  # auto | cpu | cuda

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if self.margin_scale < 0:
            raise ConfigError(f"'margin_scale' must be >= 0, got {self.margin_scale}")
        if self.chunk < 1 or self.cot_tokens < 1:
            raise ConfigError("'chunk' and 'cot_tokens' must be >= 1")

    def judge_name(self) -> str:
        parts = os.path.normpath(os.path.abspath(self.model)).split(os.sep)
        return (self.name or "ai-judge:" + "/".join(parts[-2:]))[:128]


def main(cfg: Config) -> dict:
    from rlhfkit.feedback.store import FeedbackStore

    seed_everything(cfg.seed)
    constitution = load_constitution(cfg.constitution)  # a bad constitution fails before any model loads
    pool = [constitution.principle(n) for n in cfg.principles] or constitution.principles  # an unknown name fails here
    store = FeedbackStore(cfg.db)

    # 1. The queue: load a file into the store if given, then every item (none already judged by this judge).
    loaded = store.load_queue_jsonl(cfg.queue) if cfg.queue else None
    items = [store.item(i) for i in store.item_ids()[: cfg.limit or None]]
    name = cfg.judge_name()
    annotator, _ = store.add_annotator(name, "ai", meta={"model": cfg.model, "constitution": constitution.path,
                                                         "swap": cfg.swap, "cot": cfg.cot})
    done = {j.key for j in store.judgements("ai") if j.annotator_id == annotator}

    # 2. Pairs of every item, a principle drawn for each.
    todo = []
    for item in items:
        for a, b in itertools.combinations(item.responses, 2):
            key = "ai:" + hashlib.sha256(json.dumps([name, cfg.seed, a.id, b.id]).encode()).hexdigest()[:48]
            if a.text != b.text and key not in done:
                principle = pool[random.Random(f"{cfg.seed}:{a.id}:{b.id}").randrange(len(pool))]  # Constitution.sample's draw
                todo.append((item, a, b, principle, key))
    print(f"[judge] {name}: {len(items)} queue items, {len(todo)} pairs to judge "
          f"({'both orders' if cfg.swap else 'one order'}{', chain of thought' if cfg.cot else ''})", flush=True)

    # 3.-4. Judge in chunks (batched inside), write each chunk's judgements.
    if todo:
        model, tok = load_causal_lm(cfg.model, device=cfg.device)
        judge = Judge(model, tok, constitution, cfg.batch_size, cfg.cot, cfg.cot_tokens)
    start, probs, consistent, ties = time.perf_counter(), [], [], 0
    for lo in range(0, len(todo), cfg.chunk):
        part = todo[lo: lo + cfg.chunk]
        got = judge.compare([it.prompt for it, *_ in part], [a.text for _, a, *_ in part], [b.text for _, _, b, *_ in part],
                            [pr.comparison for *_, pr, _ in part], swap=cfg.swap)
        for i, (item, a, b, principle, key) in enumerate(part):
            p = float(got["p"][i])
            choice = "a" if p > 0.5 else "b" if p < 0.5 else "tie"
            meta = {"item": item.id, "p_orders": [float(x) for x in got["p_orders"][i]]}
            if got["consistent"] is not None:
                meta["consistent"] = bool(got["consistent"][i])
                consistent.append(meta["consistent"])
            if cfg.margin_scale and choice != "tie":
                q = min(max(max(p, 1.0 - p), 1e-3), 1.0 - 1e-3)  # P(chosen), kept off 1 so the margin is finite
                meta["margin"] = cfg.margin_scale * math.log(q / (1.0 - q))
            if got["rationales"] is not None:
                meta["rationales"] = got["rationales"][i]
            store.add_pairwise(item.prompt_id, a.id, b.id, choice, annotator, source="ai", key=key, meta=meta,
                               group=f"ai:{annotator}:{item.id}", judge=cfg.model, principle=principle.name, prob=p)
            probs.append(p)
            ties += choice == "tie"
        print(f"[judge] {min(lo + cfg.chunk, len(todo))}/{len(todo)} pairs", flush=True)
    seconds = time.perf_counter() - start

    # 5. Export and statistics.
    stats = {"judge": name, "model": cfg.model, "constitution": constitution.path, "items": len(items),
             "pairs_judged": len(probs), "already_judged": len(done), "ties": ties,
             "position_consistency": sum(consistent) / len(consistent) if consistent else None,
             "mean_confidence": sum(max(p, 1 - p) for p in probs) / len(probs) if probs else None,
             "seconds": seconds, "labels_per_second": len(probs) / seconds if probs and seconds > 0 else None,
             "queue_loaded": loaded}
    print(f"[judge] {len(probs)} pairs in {seconds:.1f} s; position consistency {stats['position_consistency']}; "
          f"{ties} ties", flush=True)
    if cfg.out:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        stats["pairs_exported"] = store.export_jsonl(cfg.out, source="ai")
        print(f"[judge] exported {stats['pairs_exported']} AI pairs to {cfg.out}", flush=True)
    if cfg.stats:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.stats)), exist_ok=True)
        with open(cfg.stats, "w") as f:
            json.dump(stats, f, indent=2)
    return stats
