"""`rlhfkit pipeline` end to end on a tiny world: every stage runs and writes its outputs; a rerun
with nothing changed skips everything; a changed setting reruns that stage and what reads it;
a run killed inside PPO resumes PPO from its checkpoint."""

from __future__ import annotations

import json
import re

from tests.helpers import MODEL, WORLD, kill_at_first_checkpoint, rlhfkit

PPO = ["--total_steps=4", "--rollout_batch_size=8", "--minibatch_size=8", "--micro_batch_size=8",
       "--max_new_tokens=16", "--eval_every=2", "--ckpt_every=2", "--sample_every=100"]
TINY = (*WORLD, *(f"--pretrain.{a[2:]}" for a in MODEL),
        "--pretrain.max_steps=40", "--pretrain.batch_size=16", "--pretrain.seq_len=64", "--pretrain.eval_every=20",
        "--pretrain.sample_every=1000", "--sft.epochs=1", "--sft.batch_size=16", "--sft.eval_every=10",
        "--sft.sample_every=1000", "--feedback.limit=24", "--feedback.max_new_tokens=16", "--rm.epochs=1",
        "--rm.eval_every=10", *(f"--ppo.{a[2:]}" for a in PPO), *(f"--ppo_beta0.{a[2:]}" for a in PPO),
        "--dpo.epochs=0.5", "--dpo.eval_every=5", "--eval.num_samples=2", "--eval.bootstrap=100",
        "--eval.max_new_tokens=16")
STAGES = ["pretrain", "sft", "feedback", "rm", "ppo", "ppo_beta0", "dpo", "eval", "report"]


def statuses(stdout: str) -> dict[str, str]:
    """`[pipeline 3/9 +   12s] feedback: running` lines -> {stage: status}."""
    return dict(re.findall(r"^\[pipeline \d+/\d+ \+\s*\d+s\] (\w+): (.+)$", stdout, re.M))


def stage_marker(out, stage: str) -> dict | None:
    try:
        return json.loads((out / stage / "stage.json").read_text())
    except (OSError, ValueError):  # not there yet, being replaced, or deleted with the old stage directory
        return None


def stage_done(out, stage: str) -> bool:
    return bool((stage_marker(out, stage) or {}).get("done"))


def stage_started(out, stage: str) -> bool:
    """The stage's new run has begun: its marker says not done (while the old directory is being
    deleted the marker may be gone with some old checkpoints still there)."""
    marker = stage_marker(out, stage)
    return marker is not None and marker.get("done") is False


def test_pipeline_runs_caches_reruns_what_changed_and_resumes_ppo(tmp_path):
    out = tmp_path / "demo"
    args = ("pipeline", f"--out_dir={out}", *TINY)

    first = statuses(rlhfkit(*args).stdout)
    assert list(first) == STAGES and set(first.values()) == {"running"}
    evaluated = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(evaluated) == {"base", "sft", "ppo", "ppo_beta0", "dpo"}
    assert evaluated["ppo"]["baseline"] == "sft" and "gold_winrate" in evaluated["ppo"]
    assert (out / "report" / "report.html").stat().st_size > 10_000
    assert all(stage_done(out, s) for s in STAGES)

    # Nothing changed: every stage is skipped.
    assert set(statuses(rlhfkit(*args).stdout).values()) == {"up to date, skipped"}

    # One PPO setting changed: PPO and what reads it rerun, nothing else.
    changed = statuses(rlhfkit(*args, "--ppo.lr=1e-5").stdout)
    assert [s for s, v in changed.items() if v == "running"] == ["ppo", "eval", "report"]

    # Forced PPO killed once its first checkpoint lands; the plain rerun resumes it and redoes eval.
    # (the previous run's checkpoint is there until the forced run clears the stage: wait for its done=False marker)
    kill_at_first_checkpoint((*args, "--ppo.lr=1e-5", "--force=[ppo]"), str(out / "ppo" / "checkpoints" / "latest"),
                             ready=lambda: stage_started(out, "ppo"))
    assert not stage_done(out, "ppo"), "PPO finished before it could be killed"
    resumed = rlhfkit(*args, "--ppo.lr=1e-5")
    after = statuses(resumed.stdout)
    assert after["ppo"] == "resuming an interrupted run" and "[ppo] resumed from" in resumed.stdout
    assert after["eval"] == after["report"] == "running"
    assert after["sft"] == after["dpo"] == "up to date, skipped"
    assert stage_done(out, "ppo")
