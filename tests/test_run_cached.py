"""The pipeline's stage cache deletes only what the pipeline wrote (run_cached, no training)."""

from __future__ import annotations

import json
import os

from rlhfkit.demo.pipeline import run_cached


def write_outputs(stage_dir: str, tag: str):
    def run():
        os.makedirs(os.path.join(stage_dir, "model"), exist_ok=True)
        with open(os.path.join(stage_dir, "model", "weights"), "w") as f:
            f.write(tag)
        with open(os.path.join(stage_dir, f"log-{tag}.txt"), "w") as f:
            f.write(tag)
    return run


def test_a_rerun_removes_its_own_outputs_and_leaves_a_users_files(tmp_path):
    stage = tmp_path / "sft"
    stage.mkdir()
    (stage / "my notes.txt").write_text("do not lose me")
    (stage / "plots").mkdir()
    assert run_cached("sft", write_outputs(str(stage), "a"), str(stage), "fp-a")
    assert json.loads((stage / "stage.json").read_text())["foreign"] == ["my notes.txt", "plots"]
    assert not run_cached("sft", write_outputs(str(stage), "x"), str(stage), "fp-a")  # cached: skipped
    assert run_cached("sft", write_outputs(str(stage), "b"), str(stage), "fp-b")  # config changed: afresh
    assert sorted(os.listdir(stage)) == ["log-b.txt", "model", "my notes.txt", "plots", "stage.json"]
    assert (stage / "model" / "weights").read_text() == "b"
    assert (stage / "my notes.txt").read_text() == "do not lose me"


def test_an_interrupted_run_resumes_in_place_and_an_old_marker_owns_everything(tmp_path):
    stage = tmp_path / "rm"
    stage.mkdir()
    (stage / "checkpoints").mkdir()
    (stage / "stage.json").write_text(json.dumps({"fingerprint": "fp", "done": False}))  # written before `foreign` existed
    seen = []
    assert run_cached("rm", lambda: seen.append(sorted(os.listdir(stage))), str(stage), "fp")
    assert seen == [["checkpoints", "stage.json"]]  # same fingerprint, unfinished: resumed, nothing removed
    assert run_cached("rm", lambda: seen.append(sorted(os.listdir(stage))), str(stage), "other", stale=True)
    assert seen[-1] == ["stage.json"]  # the pipeline's own earlier run: cleared
