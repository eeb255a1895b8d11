"""`rlhfkit pipeline` end to end on a tiny world: every stage runs and writes its outputs; a rerun
with nothing changed skips everything; a changed setting reruns that stage and what reads it;
a run killed inside PPO resumes PPO from its checkpoint; pretraining reruns only when its corpus changes."""

from __future__ import annotations

import json
import re

import torch

import pytest

from tests.helpers import MODEL, WORLD, kill_at_first_checkpoint, rlhfkit

pytestmark = pytest.mark.slow

PPO = ["--total_steps=4", "--rollout_batch_size=8", "--minibatch_size=8", "--micro_batch_size=8",
       "--max_new_tokens=16", "--eval_every=2", "--ckpt_every=2", "--sample_every=100"]
TINY = (*WORLD, *(f"--pretrain.{a[2:]}" for a in MODEL),
        "--pretrain.max_steps=40", "--pretrain.batch_size=16", "--pretrain.seq_len=64", "--pretrain.eval_every=20",
        "--pretrain.sample_every=1000", "--sft.epochs=1", "--sft.batch_size=16", "--sft.eval_every=10",
        "--sft.sample_every=1000", "--feedback.limit=24", "--feedback.max_new_tokens=16", "--rm.epochs=1",
        "--rm.eval_every=10", *(f"--ppo.{a[2:]}" for a in PPO), *(f"--ppo_beta0.{a[2:]}" for a in PPO),
        "--dpo.epochs=0.5", "--dpo.eval_every=5", "--eval.num_samples=2", "--eval.bootstrap=100",
        "--eval.max_new_tokens=16")
STAGES = ["world", "pretrain", "sft", "feedback", "rm", "ppo", "ppo_beta0", "dpo", "eval", "report"]


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
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == STAGES
    assert {s["name"]: s["role"] for s in manifest["stages"]}["ppo_beta0"] == "control"
    assert "kl_coef: 0.0" in (out / "ppo_beta0" / "config.yaml").read_text()  # demo.yaml's control, under the overrides
    assert any("eval/gold" in r for r in map(json.loads, (out / "ppo" / "metrics.jsonl").read_text().splitlines()))
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

    # Pretraining is keyed by the content of the corpus it reads, not by the world's fingerprint: a world change
    # that leaves the corpus as it was keeps it; one that changes the corpus reruns it.
    kept = statuses(rlhfkit(*args, "--world.careless_rate=0.5", "--until=pretrain").stdout)
    assert kept == {"world": "running", "pretrain": "up to date, skipped"}
    redone = statuses(rlhfkit(*args, "--world.careless_rate=0.5", "--world.corpus_docs=280", "--until=pretrain").stdout)
    assert redone == {"world": "running", "pretrain": "running"}


def test_world_export_and_the_generic_stages_by_hand_reproduce_the_pipelines_sft_model(tmp_path):
    """The demo feeds the world into the generic stages through ordinary files only: exporting the world and
    running pretrain and SFT by hand on those files (same seed, one thread) gives the pipeline's SFT weights
    bit for bit."""
    from safetensors.torch import load_file

    stage_args = ["--max_steps=30", "--batch_size=16", "--seq_len=64", "--eval_every=10", "--sample_every=1000",
                  *(f"--{a[2:]}" for a in MODEL)]
    sft_args = ["--epochs=1", "--batch_size=16", "--eval_every=10", "--sample_every=1000"]
    rlhfkit("pipeline", f"--out_dir={tmp_path}/demo", "--until=sft", *WORLD, *(f"--pretrain.{a[2:]}" for a in stage_args),
            *(f"--sft.{a[2:]}" for a in sft_args))
    world = tmp_path / "world"
    rlhfkit("world", "export", f"--out_dir={world}", *WORLD, "--prompt_repeats={false_premise: 3}")
    rlhfkit("pretrain", f"--out_dir={tmp_path}/pretrain", f"--corpus={world}/corpus.jsonl",
            f"--eval_corpus={world}/eval_corpus.jsonl", *stage_args)
    rlhfkit("sft", f"--out_dir={tmp_path}/sft", f"--model={tmp_path}/pretrain/model", f"--data={world}/sft.jsonl", *sft_args)
    assert not (tmp_path / "demo" / "feedback").exists()  # --until stopped after SFT
    for name in ("corpus.jsonl", "sft.jsonl", "ppo_prompts.jsonl", "eval_prompts.jsonl"):
        assert (world / name).read_bytes() == (tmp_path / "demo" / "world" / name).read_bytes(), name
    by_hand, piped = load_file(f"{tmp_path}/sft/model/model.safetensors"), load_file(f"{tmp_path}/demo/sft/model/model.safetensors")
    assert by_hand.keys() == piped.keys()
    assert all(torch.equal(by_hand[k], piped[k]) for k in by_hand)
    base = load_file(f"{tmp_path}/pretrain/model/model.safetensors")
    assert any(not torch.equal(base[k], by_hand[k]) for k in base)  # SFT changed the weights: the comparison can fail


def test_pipeline_rejects_an_unknown_stage_in_force(tmp_path):
    proc = rlhfkit("pipeline", f"--out_dir={tmp_path}", "--force=[sfft]", check=False)
    assert proc.returncode == 2 and "unknown stages ['sfft']" in proc.stderr


def test_jobs_runs_independent_stages_at_once_lets_them_finish_when_one_fails_and_resumes(tmp_path):
    """jobs=2: once feedback is done, RM and DPO (which read only its pairs) run at the same time, each in a
    process of its own with a log. DPO made to diverge fails the run with its log's end, while RM, already
    running, finishes and is kept; the rerun with DPO fixed runs DPO (and whichever PPO stage had not run) and
    skips the rest; a sequential run afterwards finds every stage up to date (jobs is not part of what a stage is)."""
    out = tmp_path / "demo"
    args = ("pipeline", f"--out_dir={out}", "--until=dpo", *TINY)

    failed = rlhfkit(*args, "--jobs=2", "--dpo.lr=1e9", check=False)
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert "stage dpo failed" in failed.stderr and "non-finite" in failed.stderr  # the end of its log, in the message
    assert "[pipeline] dpo: in its own process, 1 thread" in failed.stdout and "[pipeline] rm: in its own process" in failed.stdout
    assert stage_done(out, "rm") and not stage_done(out, "dpo")
    rm, dpo = stage_marker(out, "rm"), stage_marker(out, "dpo")
    assert dpo["started_unix"] < rm["started_unix"] + rm["seconds"]  # DPO began while RM ran
    assert "[dpo]" in (out / "logs" / "dpo.log").read_text() and "[rm]" in (out / "logs" / "rm.log").read_text()

    # PPO needs RM: it started only if RM finished before DPO failed (then it was let finish)
    ppo_done = {s: stage_done(out, s) for s in ("ppo", "ppo_beta0")}
    rerun = statuses(rlhfkit(*args, "--jobs=2").stdout)
    assert rerun["dpo"] == "running"
    assert all(rerun[s] == ("up to date, skipped" if done else "running") for s, done in ppo_done.items())
    assert {rerun[s] for s in ("world", "pretrain", "sft", "feedback", "rm")} == {"up to date, skipped"}
    assert all(stage_done(out, s) for s in STAGES[: STAGES.index("dpo") + 1])
    assert set(statuses(rlhfkit(*args).stdout).values()) == {"up to date, skipped"}
