"""`rlhfkit pipeline`: the demo, stage after stage, with caching and resume.

The built-in world is exported as ordinary files (`<out_dir>/world/`, see
rlhfkit.world.export) and fed into the generic stages exactly as a user's data
would be: pretrain on its corpus, SFT on its demonstrations, the simulated panel
ranks SFT samples (the demo's feedback stage), the reward model trains on the
pairs, PPO / DPO / RLOO / GRPO train on its prompts and log the world's gold on
its held-out prompts through the evaluator callable (rlhfkit.world.evaluate),
then the gold evaluation and the report.

`PLAN` below is the one table of demo stages: what each runs, which method it is
and what it reads. The pipeline writes it to `<out_dir>/manifest.json`, which the
report reads instead of knowing stage names. The demo's world-tuned settings live
in `configs/demo.yaml` (loaded under every run; `--config=demo_quick` adds the smoke
profile in `configs/demo_quick.yaml`), not in the stage defaults.

Each stage runs in `<out_dir>/<stage>/` and is fingerprinted by its resolved
config, the code version of what it runs and the fingerprints of the stages it
reads. A stage whose fingerprint matches a finished run is skipped (and says so);
a stage that was interrupted resumes from its own last checkpoint; a stage whose
config or inputs changed, or one of whose inputs was rebuilt in this invocation,
is started afresh (so `force=[sft]` reruns SFT and everything downstream of it).
The pipeline wires paths between stages itself: the `out_dir` / model / data /
prompt fields of the stage sections are overwritten.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar

from rlhfkit.config import to_dict
from rlhfkit.demo import eval as eval_stage
from rlhfkit.demo import ai_feedback as ai_path
from rlhfkit.demo import cai_sl
from rlhfkit.demo import feedback, rm_eval
from rlhfkit.demo.cache import code_version, fingerprint, inputs_in, run_cached, stage_status
from rlhfkit.demo.report import cli as report
from rlhfkit.files import write_atomic
from rlhfkit.stages import dpo, ppo, pretrain, rloo, rm, sft
from rlhfkit.world import WorldConfig, build_world
from rlhfkit.world import export as world_export

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
JUDGE = "rlhfkit.world.evaluate:judge"  # the world's gold, as the stages' evaluator callable


@dataclass
class Config:
    # `rlhfkit pipeline` loads configs/demo.yaml first (the demo's settings), then --config, then overrides;
    # `Config()` alone holds the stages' generic defaults, not the demo's.
    BASE_CONFIGS: ClassVar[tuple[str, ...]] = (os.path.join(CONFIG_DIR, "demo.yaml"),)
    CONFIG_DIR: ClassVar[str] = CONFIG_DIR

    out_dir: str = "runs/demo"  # one directory per stage is created inside
    seed: int = 0  # propagated to every stage
    force: list[str] = field(default_factory=list)  # stages to rerun even if cached, e.g. force=[sft]
    until: str | None = None  # stop after this stage (e.g. until=sft); None: run them all
    jobs: int = 1  # stages run at once when their inputs allow (e.g. RM beside DPO): >1 runs them in processes of their own, the CPU threads split among them, each logging to <out_dir>/logs/<stage>.log
    critic_free: bool = False  # also run RLOO and GRPO
    ai_feedback: bool = False  # also the AI-feedback path: judge (trained on world reviews) -> ai_label -> rm_ai -> ppo_ai; CAI-SL: sft_helpful -> cai_critic -> cai -> sft_cai; RL-CAI: cai_label -> rm_cai -> ppo_cai
    world: WorldConfig = field(default_factory=WorldConfig)  # the built-in world, shared by all stages
    prompt_repeats: dict[str, int] = field(default_factory=dict)  # PPO's prompts: world RL prompts of these families listed this many times
    pretrain: pretrain.Config = field(default_factory=pretrain.Config)  # stage settings (paths are wired)
    sft: sft.Config = field(default_factory=sft.Config)
    feedback: feedback.Config = field(default_factory=feedback.Config)
    rm: rm.Config = field(default_factory=rm.Config)
    ppo: ppo.Config = field(default_factory=ppo.Config)
    ppo_beta0: ppo.Config = field(default_factory=lambda: ppo.Config())  # the reward-hacking control (demo.yaml: no KL penalty, longer)
    dpo: dpo.Config = field(default_factory=dpo.Config)
    rloo: rloo.Config = field(default_factory=rloo.Config)
    grpo: rloo.GRPOConfig = field(default_factory=lambda: rloo.GRPOConfig())
    judge: ai_path.JudgeConfig = field(default_factory=ai_path.JudgeConfig)  # the world's AI judge: reviews + SFT
    ai_label: ai_path.LabelConfig = field(default_factory=ai_path.LabelConfig)  # the judge labels the feedback queue
    rm_ai: rm.Config = field(default_factory=lambda: rm.Config())  # reward model on the AI pairs
    ppo_ai: ppo.Config = field(default_factory=lambda: ppo.Config())  # RLAIF: PPO on rm_ai
    sft_helpful: cai_sl.HelpfulConfig = field(default_factory=cai_sl.HelpfulConfig)  # CAI's helpful-only policy (its `sft` copied from the `sft` section)
    cai_critic: cai_sl.CriticConfig = field(default_factory=cai_sl.CriticConfig)  # the world's critique chains + SFT of the pretrained model -> the critic
    cai: cai_sl.ReviseConfig = field(default_factory=cai_sl.ReviseConfig)  # `rlhfkit cai` with the critic on red-team RL prompts
    sft_cai: cai_sl.SFTCAIConfig = field(default_factory=cai_sl.SFTCAIConfig)  # CAI-SL: SFT of the pretrained model on the revisions + helpful demonstrations (its `sft` defaults: SFT's)
    cai_label: ai_path.CAILabelConfig = field(default_factory=ai_path.CAILabelConfig)  # CAI's RL data: the judge on sft_cai's red-team samples + the panel's other pairs
    rm_cai: rm.Config = field(default_factory=lambda: rm.Config())  # CAI's preference model (from sft_cai)
    ppo_cai: ppo.Config = field(default_factory=lambda: ppo.Config())  # RL-CAI: PPO from sft_cai on rm_cai
    eval: eval_stage.Config = field(default_factory=lambda: eval_stage.Config(policies=["<wired>"]))
    report: report.Config = field(default_factory=report.Config)  # HTML + Markdown report of the whole run

    def resolve(self) -> None:
        from rlhfkit.config import ConfigError

        if self.jobs < 1:
            raise ConfigError(f"'jobs': at least 1 (stages at once), got {self.jobs}")
        if unknown := sorted(set(self.force) - set(PLAN)):
            raise ConfigError(f"'force': unknown stages {unknown} (stages: {', '.join(PLAN)})")
        if self.until is not None and self.until not in PLAN:
            raise ConfigError(f"'until': unknown stage {self.until!r} (stages: {', '.join(PLAN)})")
        out = lambda *p: os.path.join(self.out_dir, *p)  # noqa: E731
        files = lambda name: out("world", name)  # noqa: E731
        self.world_export = world_export.Config(out("world"), self.world, self.prompt_repeats)
        for name in PLAN:
            stage = self.stage(name)
            if hasattr(stage, "seed"):
                stage.seed = self.seed
            stage.out_dir = out(name)
        self.pretrain.corpus, self.pretrain.eval_corpus = files("corpus.jsonl"), files("eval_corpus.jsonl")
        self.sft.model, self.sft.data = out("pretrain", "model"), files("sft.jsonl")
        self.feedback.world, self.feedback.policy = self.world, out("sft", "model")
        self.rm.model, self.rm.data, self.dpo.data = out("sft", "model"), out("feedback", "pairs.jsonl"), out("feedback", "pairs.jsonl")
        self.judge.world, self.judge.sft.seed = self.world, self.seed
        self.judge.sft.model, self.judge.sft.data, self.judge.sft.out_dir = out("sft", "model"), out("judge", "reviews.jsonl"), out("judge")
        self.ai_label.world, self.ai_label.panel, self.ai_label.constitution = self.world, self.feedback.panel, self.judge.constitution
        self.ai_label.judge, self.ai_label.policy, self.ai_label.feedback_dir = out("judge", "model"), out("sft", "model"), out("feedback")
        self.rm_ai.model, self.rm_ai.data = out("sft", "model"), out("ai_label", "pairs.jsonl")
        self.sft_helpful.world, self.cai_critic.world, self.cai.world, self.sft_cai.world = (self.world,) * 4
        # the helpful-only policy is trained as the SFT model is, on other demonstrations: its section is a copy of
        # `sft`, so a setting made there alone would be lost (a second resolve finds the copy and keeps it)
        wired = ("model", "data", "out_dir", "seed")
        mine, default, as_sft = ({k: v for k, v in to_dict(c).items() if k not in wired}
                                 for c in (self.sft_helpful.sft, type(self.sft)(), self.sft))
        if mine not in (default, as_sft):
            changed = sorted(k for k in mine if mine[k] != default[k])
            raise ConfigError(f"'sft_helpful.sft': {changed} set there would be ignored: the helpful-only policy is "
                              f"trained as the 'sft' section says (set them under 'sft', for both)")
        self.sft_helpful.sft = replace(self.sft, model=out("pretrain", "model"))
        for name in ("sft_helpful", "cai_critic", "sft_cai"):
            section = self.stage(name).sft
            section.seed, section.data, section.out_dir = self.seed, out(name, "data.jsonl"), out(name)
        self.cai_critic.sft.model = self.sft_cai.sft.model = out("pretrain", "model")
        self.cai.model, self.cai.constitution, self.sft_cai.demos = out("cai_critic", "model"), self.cai_critic.constitution, out("cai", "demos.jsonl")
        self.cai.responder, self.cai.held_for_critic = out("sft_helpful", "model"), self.cai_critic.critic_share
        self.cai.parted = list(self.cai_critic.parted)
        self.cai_label.world, self.cai_label.constitution = self.world, self.judge.constitution
        self.cai_label.judge, self.cai_label.policy = out("judge", "model"), out("sft_cai", "model")
        self.cai_label.helpful_pairs = out("feedback", "pairs.jsonl")
        self.rm_cai.model, self.rm_cai.data = out("sft_cai", "model"), out("cai_label", "pairs.jsonl")
        self.pretrain.eval_prompts = files("eval_prompts.jsonl")
        for name in ("ppo", "ppo_beta0", "ppo_ai", "ppo_cai", "dpo", "rloo", "grpo"):
            stage = self.stage(name)
            stage.policy, stage.eval_prompts = out("sft_cai" if name == "ppo_cai" else "sft", "model"), files("eval_prompts.jsonl")
            stage.evaluator, stage.evaluator_args = JUDGE, to_dict(self.world)
            if name != "dpo":
                stage.reward_model = out({"ppo_ai": "rm_ai", "ppo_cai": "rm_cai"}.get(name, "rm"), "model")
                stage.prompts = files("ppo_prompts.jsonl" if name.startswith("ppo") else "rl_prompts.jsonl")
        self.eval.world, self.eval.seed, self.eval.reward_model = self.world, self.seed, out("rm", "model")
        self.eval.names = ["base"] + [n for n in self.enabled() if PLAN[n].policy]
        self.eval.policies = [out("pretrain", "model")] + [out(n, "model") for n in self.eval.names[1:]]
        self.report.out_dir, self.report.run_dir = out("report"), self.out_dir

    def stage(self, name: str):
        """The config a stage runs with."""
        return self.world_export if name == "world" else getattr(self, name)

    def enabled(self) -> list[str]:
        names = list(PLAN)[: list(PLAN).index(self.until) + 1] if self.until else list(PLAN)
        return [s for s in names if (self.critic_free or not PLAN[s].optional) and (self.ai_feedback or not PLAN[s].ai)]


def train_rm(cfg: Config, rm_cfg: rm.Config) -> None:
    """The generic RM stage, then the diagnostics that need the world's gold (added to rm_metrics.json)."""
    rm.train(rm_cfg)
    if rm_cfg.evaluate:
        rm_eval.run(rm_cfg.out_dir, build_world(cfg.world), rm_cfg.model, cfg.seed, rm_cfg.device)


@dataclass(frozen=True)
class Step:
    """One demo stage: what it runs, its method (what the report knows it by), and what it reads."""

    run: Callable[[Config], Any]
    method: str
    inputs: tuple[str, ...] = ()
    policy: bool = False  # writes <out_dir>/model, a policy the eval judges
    role: str = ""  # "control": the reward-hacking control (no KL penalty); "rlaif": PPO on the AI judge's preferences; "cai": SFT on constitutional revisions; "helpful_only": SFT without harmlessness (CAI's starting point); "cai_rl": PPO from the CAI-SL policy on AI harmlessness labels
    optional: bool = False  # runs only with critic_free=true
    ai: bool = False  # runs only with ai_feedback=true
    code: tuple[str, ...] = ()  # modules whose source is part of the stage's fingerprint
    by_content: tuple[str, ...] = ()  # inputs keyed by the content of the files the stage reads there, not their fingerprint


PLAN: dict[str, Step] = {
    "world": Step(lambda c: world_export.main(c.world_export), "world", code=("rlhfkit.world",)),
    # pretraining reads only the world's corpus: a change to the world that leaves the corpus as it was keeps it
    "pretrain": Step(lambda c: pretrain.train(c.pretrain), "pretrain", ("world",), code=("rlhfkit.stages.pretrain",),
                     by_content=("world",)),
    "sft": Step(lambda c: sft.train(c.sft), "sft", ("pretrain", "world"), policy=True, code=("rlhfkit.stages.sft",)),
    "feedback": Step(lambda c: feedback.main(c.feedback), "feedback", ("sft", "world"), code=("rlhfkit.demo.feedback", "rlhfkit.world")),
    "rm": Step(lambda c: train_rm(c, c.rm), "rm", ("sft", "feedback"), code=("rlhfkit.stages.rm", "rlhfkit.demo.rm_eval")),
    "ppo": Step(lambda c: ppo.train(c.ppo), "ppo", ("sft", "rm", "world"), policy=True, code=("rlhfkit.stages.ppo",)),
    "ppo_beta0": Step(lambda c: ppo.train(c.ppo_beta0), "ppo", ("sft", "rm", "world"), policy=True, role="control",
                      code=("rlhfkit.stages.ppo",)),
    "dpo": Step(lambda c: dpo.train(c.dpo), "dpo", ("sft", "feedback", "world"), policy=True, code=("rlhfkit.stages.dpo",)),
    "rloo": Step(lambda c: rloo.train(c.rloo), "rloo", ("sft", "rm", "world"), policy=True, optional=True, code=("rlhfkit.stages.rloo",)),
    "grpo": Step(lambda c: rloo.train(c.grpo), "grpo", ("sft", "rm", "world"), policy=True, optional=True, code=("rlhfkit.stages.rloo",)),
    "judge": Step(lambda c: ai_path.train_judge(c.judge), "judge", ("sft", "world"), ai=True,
                  code=("rlhfkit.stages.sft", "rlhfkit.world", "rlhfkit.demo.ai_feedback")),
    "ai_label": Step(lambda c: ai_path.label(c.ai_label), "ai_label", ("judge", "feedback", "sft", "world"), ai=True,
                     code=("rlhfkit.demo.ai_feedback", "rlhfkit.stages.judge", "rlhfkit.feedback", "rlhfkit.world")),
    "rm_ai": Step(lambda c: train_rm(c, c.rm_ai), "rm", ("sft", "ai_label"), ai=True, code=("rlhfkit.stages.rm", "rlhfkit.demo.rm_eval")),
    "ppo_ai": Step(lambda c: ppo.train(c.ppo_ai), "ppo", ("sft", "rm_ai", "world"), policy=True, role="rlaif", ai=True,
                   code=("rlhfkit.stages.ppo",)),
    "sft_helpful": Step(lambda c: cai_sl.train_helpful(c.sft_helpful), "sft", ("pretrain", "world"), policy=True, role="helpful_only",
                        ai=True, code=("rlhfkit.stages.sft", "rlhfkit.world", "rlhfkit.demo.cai_sl")),
    "cai_critic": Step(lambda c: cai_sl.train_critic(c.cai_critic), "cai_critic", ("pretrain", "world"), ai=True,
                       code=("rlhfkit.stages.sft", "rlhfkit.stages.cai", "rlhfkit.world", "rlhfkit.demo.cai_sl")),
    "cai": Step(lambda c: cai_sl.revise(c.cai), "cai", ("cai_critic", "sft_helpful", "world"), ai=True,
                code=("rlhfkit.stages.cai", "rlhfkit.feedback", "rlhfkit.world", "rlhfkit.demo.cai_sl")),
    "sft_cai": Step(lambda c: cai_sl.train_sft_cai(c.sft_cai), "sft", ("pretrain", "cai", "world"), policy=True, role="cai", ai=True,
                    code=("rlhfkit.stages.sft", "rlhfkit.demo.cai_sl")),
    "cai_label": Step(lambda c: ai_path.label_cai(c.cai_label), "cai_label", ("judge", "sft_cai", "feedback", "world"), ai=True,
                      code=("rlhfkit.demo.ai_feedback", "rlhfkit.stages.judge", "rlhfkit.feedback", "rlhfkit.world")),
    "rm_cai": Step(lambda c: train_rm(c, c.rm_cai), "rm", ("sft_cai", "cai_label"), ai=True, code=("rlhfkit.stages.rm", "rlhfkit.demo.rm_eval")),
    "ppo_cai": Step(lambda c: ppo.train(c.ppo_cai), "ppo", ("sft_cai", "rm_cai", "world"), policy=True, role="cai_rl", ai=True,
                    code=("rlhfkit.stages.ppo",)),
    "eval": Step(lambda c: eval_stage.main(c.eval), "eval", ("pretrain", "sft", "rm", "ppo", "ppo_beta0", "dpo", "rloo", "grpo",
                                                             "ppo_ai", "sft_helpful", "sft_cai", "ppo_cai"), code=("rlhfkit.demo.eval", "rlhfkit.world")),
    "report": Step(lambda c: report.main(c.report), "report", ("world", "pretrain", "sft", "feedback", "rm", "ppo", "ppo_beta0",
                                                                "dpo", "rloo", "grpo", "judge", "ai_label", "rm_ai", "ppo_ai", "sft_helpful", "cai_critic", "cai",
                                                                "sft_cai", "cai_label", "rm_cai", "ppo_cai", "eval"),
                   code=("rlhfkit.demo.report",)),
}


def manifest(cfg: Config) -> dict:
    """What the report reads: every enabled stage with its method, role and directory."""
    return {"out_dir": cfg.out_dir, "baseline": "sft", "stages": [
        {"name": n, "method": PLAN[n].method, "policy": PLAN[n].policy, "role": PLAN[n].role, "dir": n} for n in cfg.enabled()]}


def main(cfg: Config) -> dict[str, str]:
    os.makedirs(cfg.out_dir, exist_ok=True)
    write_atomic(os.path.join(cfg.out_dir, "manifest.json"), json.dumps(manifest(cfg), indent=2))
    enabled, t0 = cfg.enabled(), time.time()
    prints: dict[str, str] = {}
    ran: set[str] = set()

    def identify(name: str) -> tuple[str, str, bool]:
        """(header, fingerprint, stale) of a stage whose inputs are settled."""
        step, after = PLAN[name], [a for a in PLAN[name].inputs if a in enabled]
        upstream = [json.dumps(inputs_in(cfg.stage(name), os.path.join(cfg.out_dir, a)), sort_keys=True)
                    if a in step.by_content else prints[a] for a in after]
        fp = prints[name] = fingerprint(cfg.stage(name), upstream, code_version(step.code), cfg.out_dir)
        # forced, or an input was just rebuilt (one keyed by content only if what the stage reads of it changed)
        stale = name in cfg.force or any(a in ran for a in after if a not in step.by_content)
        return f"[pipeline {enabled.index(name) + 1}/{len(enabled)} +{time.time() - t0:5.0f}s] {name}", fp, stale

    if cfg.jobs > 1:
        _run_parallel(cfg, enabled, identify, ran, cfg.jobs)
    else:
        for name in enabled:
            head, fp, stale = identify(name)
            if run_cached(head, lambda: PLAN[name].run(cfg), os.path.join(cfg.out_dir, name), fp, stale):
                ran.add(name)
    print(f"[pipeline] finished in {time.time() - t0:.0f}s; results in {cfg.out_dir}", flush=True)
    return prints


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _run_parallel(cfg: Config, enabled: list[str], identify, ran: set[str], jobs: int) -> None:
    """Run the stages of `enabled` as their inputs finish, up to `jobs` at once, each in a process of its own.

    A stage that would run alone (nothing running, nothing else ready) runs here, on every core, as with jobs=1.
    One that starts beside others gets a process of its own with cores // jobs torch threads and its output in
    <out_dir>/logs/<stage>.log; the pipeline prints its status line as it starts and a line when it ends. A failed
    stage lets the stages already running finish (their work is kept), starts no new one, and raises with the end
    of its log."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch thread pool inherited mid-use
    logs = os.path.join(cfg.out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    cores, pending, settled = _cores(), list(enabled), set()
    running: dict[str, tuple[Any, float, str]] = {}  # name -> (process, start time, log path)
    failed: list[str] = []
    try:
        while pending or running:
            started_any = True
            while started_any and not failed and len(running) < jobs:  # start what can start (a skip may free more)
                started_any = False
                ready = [n for n in pending if all(a in settled for a in PLAN[n].inputs if a in enabled)]
                for name in ready[: jobs - len(running)]:
                    pending.remove(name)
                    started_any = True
                    head, fp, stale = identify(name)
                    stage_dir = os.path.join(cfg.out_dir, name)
                    if not running and not any(n in pending for n in ready):  # alone: here, every core, as jobs=1 runs it
                        if run_cached(head, lambda: PLAN[name].run(cfg), stage_dir, fp, stale):
                            ran.add(name)
                        settled.add(name)
                        break  # what it settles may change what is ready
                    status = stage_status(stage_dir, fp, stale)
                    print(f"{head}: {status}", flush=True)
                    if status == "up to date, skipped":
                        settled.add(name)
                        break
                    threads, log = max(1, cores // jobs), os.path.join(logs, f"{name}.log")
                    proc = ctx.Process(target=_stage_process, args=(cfg, name, head, fp, stale, threads, log), name=name)
                    proc.start()
                    running[name] = (proc, time.time(), log)
                    print(f"[pipeline] {name}: in its own process, {threads} thread{'s' if threads > 1 else ''}, log {log}",
                          flush=True)
            if not running:
                if pending and not failed:
                    raise RuntimeError(f"pipeline: no stage can start; waiting: {pending}")  # cannot happen: PLAN is ordered
                break
            wait([p.sentinel for p, _, _ in running.values()])
            for name, (proc, started, log) in list(running.items()):
                if proc.exitcode is None:
                    continue
                del running[name]
                if proc.exitcode == 0:
                    settled.add(name)
                    ran.add(name)
                    print(f"[pipeline] {name}: finished in {time.time() - started:.0f}s", flush=True)
                else:
                    failed.append(name)
                    print(f"[pipeline] {name}: failed (exit code {proc.exitcode}); "
                          + ("letting " + ", ".join(running) + " finish" if running else "stopping"), flush=True)
    except BaseException:  # Ctrl-C or an error here: stop the stages (each resumes from its last checkpoint)
        for proc, _, _ in running.values():
            proc.terminate()
        for proc, _, _ in running.values():
            proc.join()
        raise
    if failed:
        tails = "\n".join(f"--- {n} ({os.path.join(logs, n + '.log')}) ends:\n{_tail(os.path.join(logs, n + '.log'))}" for n in failed)
        raise StageFailed(f"stage{'s' if len(failed) > 1 else ''} {', '.join(failed)} failed; rerun the same command to "
                          f"resume (finished stages are kept)\n{tails}")


class StageFailed(SystemExit):
    """A stage run in its own process (`jobs` > 1) failed: exit status 1 with the end of its log as the message
    (the traceback is in the log; the pipeline's own would say nothing about the stage)."""


def _stage_process(cfg: Config, name: str, head: str, fp: str, stale: bool, threads: int, log: str) -> None:
    """A stage in a process of its own: stdout and stderr to `log`, `threads` torch threads."""
    import sys

    import torch

    with open(log, "a", buffering=1) as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        sys.stdout = sys.stderr = f
        torch.set_num_threads(threads)
        try:
            run_cached(head, lambda: PLAN[name].run(cfg), os.path.join(cfg.out_dir, name), fp, stale)
        except BaseException:
            import traceback

            traceback.print_exc()
            f.flush()
            os._exit(1)


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"
