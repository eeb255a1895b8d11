"""`rlhfkit cai`: Constitutional AI's supervised stage: the model critiques and revises its own answers.

Bai et al. (2022), "Constitutional AI", sec. 3 (SL-CAI):

1. sample: the model answers every prompt (e.g. red-team prompts); with `responder`, another model does (the
   paper's red-team answers come from a helpful-only model; a separate responder lets a critic taught to
   critique keep revising the answers of the model it was made from, or a stronger model critique a weaker one);
2. `revisions` rounds: for each prompt a principle of the constitution (of `principles`, where given) is drawn
   (seeded by `seed`, the prompt's index and the round); the conversation goes on
   with the principle's critique request about the last answer, the model writes a
   critique, then the revision request, and the model writes a revision, which is
   the answer the next round critiques;
3. write: (prompt, final revision) demonstrations to `out`, the JSONL `rlhfkit sft
   data=<out>` reads, and the whole chain (initial answer, each round's principle,
   requests, critique and revision) to `chains` for inspection.

Departures from the paper: no few-shot examples of critiques and revisions are
prepended (the requests go through the model's own chat template, so a chat model
follows them as instructions); each round shows the prompt and the latest answer
only, not the earlier rounds. A prompt whose final revision is empty is left out of
the demonstrations (its chain says `kept: false`). As in the paper, the
demonstrations are for SFT (`rlhfkit sft`), whose model then gives the samples that
`rlhfkit judge` compares by principle for the RL stage.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from rlhfkit.data.records import Message, prompt_json
from rlhfkit.feedback.constitution import Constitution, Principle, load_constitution
from rlhfkit.models.load import load_causal_lm
from rlhfkit.rollout import answer
from rlhfkit.tracking import seed_everything


@dataclass
class Config:
    model: str = "runs/sft/model"  # the model that answers, critiques and revises itself (local HF causal LM)
    responder: str | None = None  # another model writes the initial answers, `model` critiques and revises them (None: `model`)
    prompts: str | None = None  # file/dir of prompts (JSONL/Parquet/HF dataset with `prompt` or `messages`); required
    constitution: str | None = None  # principles and request templates (YAML); None: the packaged helpful/honest/harmless one
    revisions: int = 1  # critique-revision rounds per prompt
    principles: list[str] = field(default_factory=list)  # draw only these principles of the constitution (empty: all)
    limit: int = 0  # use only the first N prompts (0: all)
    out: str = "runs/cai/demos.jsonl"  # (prompt, final revision) demonstrations: `rlhfkit sft data=<out>`
    chains: str | None = None  # every step for inspection (None: <out without .jsonl>.chains.jsonl)
    max_new_tokens: int = 64  # length limit of each answer, critique and revision
    temperature: float = 0.7  # sampling temperature (0: greedy)
    top_p: float = 1.0  # nucleus sampling
    batch_size: int = 64  # sequences per generation batch
    seed: int = 0  # sampling and principle draws
    device: str = "auto"  # auto | cpu | cuda

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if not self.prompts:
            raise ConfigError("'prompts': give the prompts to answer and revise, e.g. prompts=red_team.jsonl")
        if self.revisions < 1:
            raise ConfigError(f"'revisions' must be >= 1, got {self.revisions}")
        if self.chains is None:
            self.chains = (self.out[: -len(".jsonl")] if self.out.endswith(".jsonl") else self.out) + ".chains.jsonl"


def draw(constitution: Constitution, names: list[str], seed: int, index: int, rnd: int) -> Principle:
    """The principle of prompt `index` in round `rnd`: uniform over `names` (empty: the whole constitution)."""
    rng = random.Random(f"{seed}:{index}:{rnd}")
    if not names:
        return constitution.sample(rng)
    return constitution.principle(names[rng.randrange(len(names))])


def critique_conversation(constitution: Constitution, prompt, answer: str, principle: Principle) -> tuple[Message, ...]:
    """What the model critiques from: the prompt's turns, the answer, then the principle's critique request
    (user turn). Public so that critique examples written for training show the model exactly these turns."""
    turns = (Message("user", prompt),) if isinstance(prompt, str) else tuple(prompt)
    return (*turns, Message("assistant", answer), Message("user", constitution.fill("critique", request=principle.critique)))


def revision_conversation(constitution: Constitution, critique_conv: tuple[Message, ...], critique: str,
                          principle: Principle) -> tuple[Message, ...]:
    """What the model revises from: the critique conversation, the critique, then the revision request."""
    return (*critique_conv, Message("assistant", critique), Message("user", constitution.fill("revision", request=principle.revision)))


def main(cfg: Config) -> dict:
    from rlhfkit.data.loaders import prompt_list, write_jsonl

    seed_everything(cfg.seed)
    constitution = load_constitution(cfg.constitution)  # bad input fails before any model loads
    for name in cfg.principles:
        constitution.principle(name)  # an unknown name fails here, naming the file
    prompts = prompt_list(cfg.prompts)[: cfg.limit or None]
    calls = iter(range(1, 1 << 30))  # a fresh sampling seed for every batched call

    def generate(conversations: list, model, tok) -> list[str]:
        outs = answer(model, tok, conversations, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                      top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed * 1000 + next(calls))
        return [o["response"].strip() for o in outs]

    # 1. Sample the initial answers (the responder's, where one is given).
    if cfg.responder:
        responder, rtok = load_causal_lm(cfg.responder, device=cfg.device)
        current = generate(prompts, responder, rtok)
        del responder
    model, tok = load_causal_lm(cfg.model, device=cfg.device)
    if not cfg.responder:
        current = generate(prompts, model, tok)
    chains = [{"prompt": prompt_json(p), "initial": r, "rounds": []} for p, r in zip(prompts, current)]
    print(f"[cai] {len(prompts)} prompts answered; {cfg.revisions} critique-revision round(s) follow", flush=True)

    # 2. Critique and revise, a principle drawn per prompt and round.
    for rnd in range(cfg.revisions):
        drawn = [draw(constitution, cfg.principles, cfg.seed, i, rnd) for i in range(len(prompts))]
        critique_convs = [critique_conversation(constitution, p, r, pr) for p, r, pr in zip(prompts, current, drawn)]
        critiques = generate(critique_convs, model, tok)
        revised = generate([revision_conversation(constitution, conv, c, pr)
                            for conv, c, pr in zip(critique_convs, critiques, drawn)], model, tok)
        for chain, pr, conv, c, rv in zip(chains, drawn, critique_convs, critiques, revised):
            chain["rounds"].append({"principle": pr.name, "critique_request": conv[-1].content, "critique": c,
                                    "revision_request": constitution.fill("revision", request=pr.revision), "revision": rv})
        current = revised
        print(f"[cai] round {rnd + 1}/{cfg.revisions}: {sum(map(bool, current))} non-empty revisions", flush=True)

    # 3. Write the demonstrations (non-empty final revisions) and every chain.
    demos = []
    for p, chain, final in zip(prompts, chains, current):
        chain.update(final=final, kept=bool(final))
        if final:
            demos.append({"prompt": prompt_json(p), "completion": final})
    for path in (cfg.out, cfg.chains):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_jsonl(cfg.out, demos)
    write_jsonl(cfg.chains, chains)
    stats = {"prompts": len(prompts), "demonstrations": len(demos), "dropped_empty": len(prompts) - len(demos),
             "revisions": cfg.revisions, "changed": sum(c["final"] != c["initial"] for c in chains)}
    print(f"[cai] wrote {len(demos)} demonstrations to {cfg.out} (train with: rlhfkit sft data={cfg.out}) "
          f"and {len(chains)} chains to {cfg.chains}", flush=True)
    return stats
