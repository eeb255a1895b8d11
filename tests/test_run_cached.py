"""The pipeline's stage cache deletes only what the pipeline wrote (run_cached, no training)."""

from __future__ import annotations

import json
import os

import pytest

from rlhfkit.demo.cache import run_cached


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


def test_a_fingerprint_follows_the_content_of_files_the_config_names_outside_the_run(tmp_path, monkeypatch):
    """A user's data file, model folder or constitution changed in place changes the fingerprint; files inside the
    run (upstream outputs, covered by upstream fingerprints) do not; without outside inputs it is the config's alone."""
    from dataclasses import dataclass, field

    from rlhfkit import files
    from rlhfkit.demo.cache import fingerprint, named_inputs

    @dataclass
    class Cfg:
        data: str = ""
        model: str = ""
        extra: list = field(default_factory=list)

    run, user = tmp_path / "run", tmp_path / "user"
    (run / "world").mkdir(parents=True)
    (user / "model").mkdir(parents=True)
    (user / "pairs.jsonl").write_text('{"prompt": "a"}\n')
    (user / "model" / "weights").write_bytes(b"\x00" * 10)
    (run / "world" / "sft.jsonl").write_text("x\n")
    cfg = Cfg(data=str(user / "pairs.jsonl"), model=str(user / "model"), extra=[str(run / "world" / "sft.jsonl"), "cpu"])
    fp = fingerprint(cfg, run_dir=str(run))
    assert set(named_inputs(cfg, str(run))) == {str(user / "pairs.jsonl"), str(user / "model")}
    assert fingerprint(cfg, run_dir=str(run)) == fp  # nothing changed
    (run / "world" / "sft.jsonl").write_text("y\n")  # an upstream output: its stage's fingerprint covers it
    assert fingerprint(cfg, run_dir=str(run)) == fp
    (user / "pairs.jsonl").write_text('{"prompt": "b"}\n')  # same path, same size, new content
    fp_data = fingerprint(cfg, run_dir=str(run))
    assert fp_data != fp
    (user / "model" / "weights").write_bytes(b"\x01" * 10)  # a model retrained in place
    assert fingerprint(cfg, run_dir=str(run)) != fp_data
    # big files too are digested by content (read once while unchanged): a rewrite of the same bytes keeps the key
    monkeypatch.setattr(files, "MEMO_MIN", 4)
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path / "cache"))
    big = fingerprint(cfg, run_dir=str(run))
    (user / "model" / "weights").write_bytes(b"\x01" * 10)
    os.utime(user / "model" / "weights", ns=(1, 1))
    assert fingerprint(cfg, run_dir=str(run)) == big
    (user / "model" / "weights").write_bytes(b"\x02" * 10)
    assert fingerprint(cfg, run_dir=str(run)) != big
    # no outside inputs: the same fingerprint as before inputs were digested (the config, upstream and code alone)
    inside = Cfg(data=str(run / "world" / "sft.jsonl"))
    assert fingerprint(inside, ["u"], "c", run_dir=str(run)) == fingerprint(inside, ["u"], "c")


def test_code_version_covers_the_yaml_a_package_ships(tmp_path, monkeypatch):
    """The world's constitution (a .yaml beside its code) is part of the code version of the stages that read it."""
    import importlib
    import sys

    from rlhfkit.demo.cache import code_version

    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "constitution.yaml").write_text("principles: [a]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    before = code_version(["fakepkg"])
    (pkg / "constitution.yaml").write_text("principles: [b]\n")
    assert code_version(["fakepkg"]) != before
    sys.modules.pop("fakepkg", None)


def test_inputs_in_keys_a_stage_by_the_upstream_files_it_names(tmp_path):
    """`inputs_in`: the digests of the files a config names inside an upstream stage's folder, by relative name; the
    same content gives the same digests wherever it lies; a config naming nothing there is an error."""
    from dataclasses import dataclass

    from rlhfkit.demo.cache import inputs_in

    @dataclass
    class Cfg:
        corpus: str
        other: str = ""

    for run in ("a", "b"):
        (tmp_path / run / "world").mkdir(parents=True)
        (tmp_path / run / "world" / "corpus.jsonl").write_text('{"text": "x"}\n')
        (tmp_path / run / "world" / "sft.jsonl").write_text(f'{{"run": "{run}"}}\n')  # not named: not part of the key
    digests = [inputs_in(Cfg(str(tmp_path / r / "world" / "corpus.jsonl")), str(tmp_path / r / "world")) for r in "ab"]
    assert digests[0] == digests[1] and list(digests[0]) == ["corpus.jsonl"]
    (tmp_path / "b" / "world" / "corpus.jsonl").write_text('{"text": "y"}\n')
    assert inputs_in(Cfg(str(tmp_path / "b" / "world" / "corpus.jsonl")), str(tmp_path / "b" / "world")) != digests[0]
    with pytest.raises(ValueError, match="names no file in"):
        inputs_in(Cfg(str(tmp_path / "a" / "elsewhere.jsonl"), other="world"), str(tmp_path / "a" / "world"))
