"""The demo's stage cache: a stage's fingerprint (its config, its code, the stages it reads and the files it names
outside the run) and `run_cached`, which skips a finished stage with the same fingerprint, resumes an interrupted
one and otherwise starts afresh, never deleting what it did not write. Used by `rlhfkit pipeline`
(rlhfkit.demo.pipeline) and `rlhfkit seeds` (rlhfkit.demo.seeds)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Sequence

from rlhfkit.config import to_dict
from rlhfkit.files import file_digest, write_atomic


def code_version(modules: Sequence[str]) -> str:
    """Hash of the source of `modules` (a package: every .py file in it, and the .yaml files it ships and reads, such
    as the world's constitution) and of the library they run on: a cached stage reruns when the code that made it
    changed, not only its config."""
    import importlib

    h = hashlib.sha256()
    for name in (*modules, "rlhfkit.losses", "rlhfkit.rl", "rlhfkit.rollout", "rlhfkit.models", "rlhfkit.data"):
        mod = importlib.import_module(name)
        root = os.path.dirname(mod.__file__) if mod.__file__.endswith("__init__.py") else None
        paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                       if f.endswith((".py", ".yaml"))) if root else [mod.__file__]
        for path in paths:
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def _strings(cfg: Any) -> list[str]:
    """Every string value of a config, nested sections and lists included, once each, in order."""
    strings: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, str):
            strings.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(to_dict(cfg))
    return list(dict.fromkeys(strings))


def _digest(path: str) -> str:
    """A file by its content; a folder by every file in it (relative names and contents)."""
    if os.path.isfile(path):
        return file_digest(path)
    h = hashlib.sha256()
    for f in sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs):
        h.update(f"{os.path.relpath(f, path)}\0{file_digest(f)}\0".encode())
    return h.hexdigest()


def named_inputs(cfg: Any, run_dir: str) -> dict[str, str]:
    """Digests of the files and folders a config names outside `run_dir` (a user's data, model, constitution): a
    cached stage reruns when what it reads changed in place, not only when its path did. What lies inside `run_dir`
    is the output of upstream stages, whose fingerprints already stand for it. A file is digested by its content
    (a big one read once, until it is written: `rlhfkit.files.file_digest`); a folder by every file in it."""
    run = os.path.realpath(run_dir)
    out: dict[str, str] = {}
    for s in _strings(cfg):
        if not s or not os.path.exists(s):
            continue
        path = os.path.realpath(s)
        # inside the run (upstream outputs), or the run's own parents, or the working folder: not an input to digest
        if os.path.commonpath([path, run]) in (run, path) or path == os.path.realpath(os.getcwd()):
            continue
        out[s] = _digest(path)
    return out


def inputs_in(cfg: Any, folder: str) -> dict[str, str]:
    """Digests of the files and folders inside `folder` (an upstream stage's output) that a config names, by their
    name relative to it: what a stage keyed by content, not by its upstream's fingerprint, reads of it. A ValueError
    if the config names nothing there (the stage would then be keyed by nothing of its input)."""
    root = os.path.realpath(folder)
    out: dict[str, str] = {}
    for s in _strings(cfg):
        path = os.path.realpath(s) if s and os.path.exists(s) else None
        if path and path != root and os.path.commonpath([path, root]) == root:
            out[os.path.relpath(path, root)] = _digest(path)
    if not out:
        raise ValueError(f"the config names no file in {folder}: a stage keyed by its content needs one")
    return out


def fingerprint(cfg: Any, upstream: Sequence[str] = (), code: str = "", run_dir: str | None = None) -> str:
    """A stage's identity: its resolved config, its code version, the fingerprints of the stages it reads and, given
    the `run_dir` its upstream stages write to, the digests of the files the config names outside it (`named_inputs`)."""
    parts: dict[str, Any] = {"cfg": to_dict(cfg), "after": list(upstream), "code": code}
    if run_dir is not None and (inputs := named_inputs(cfg, run_dir)):
        parts["inputs"] = inputs
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_status(stage_dir: str, fp: str, stale: bool = False, marker: dict | None = None) -> str:
    """What `run_cached` will do in `stage_dir`: "up to date, skipped" (a finished run with fingerprint `fp`, not
    `stale`), "resuming an interrupted run" (an unfinished one with `fp`) or "running" (afresh). `marker`: its
    `stage.json`, when the caller has read it."""
    marker = _read_json(os.path.join(stage_dir, "stage.json")) if marker is None else marker
    if marker.get("fingerprint") == fp and not stale:
        return "up to date, skipped" if marker.get("done") else "resuming an interrupted run"
    return "running"


def run_cached(head: str, run: Callable[[], Any], stage_dir: str, fp: str, stale: bool = False) -> bool:
    """Run a stage in `stage_dir` unless a finished run with fingerprint `fp` is there (and it is not
    `stale`); resume an interrupted run with the same fingerprint; otherwise clear what earlier runs
    wrote there and start afresh. `stage_dir/stage.json` records the fingerprint, whether the run
    finished, when it started and how long it took, and the entries that were in the folder before the
    pipeline first ran there (`foreign`): those are never deleted, so a user's notes in a stage folder
    survive a rerun. Prints `<head>: <what happened>`; returns whether the stage ran."""
    marker = _read_json(os.path.join(stage_dir, "stage.json"))
    status = stage_status(stage_dir, fp, stale, marker)
    if status == "up to date, skipped":
        print(f"{head}: {status}", flush=True)
        return False
    present = set(os.listdir(stage_dir)) - {"stage.json"} if os.path.isdir(stage_dir) else set()
    # no marker: the pipeline never ran here, none of it is ours; an older marker without the list: all of it was
    foreign = set(marker.get("foreign", ())) & present if marker else present
    if status == "running":
        for entry in present - foreign:
            path = os.path.join(stage_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    print(f"{head}: {status}" + (f" (leaving {len(foreign)} entries it did not write)" if foreign and status == "running" else ""),
          flush=True)
    os.makedirs(stage_dir, exist_ok=True)
    started = time.time()
    record = {"fingerprint": fp, "foreign": sorted(foreign), "started_unix": round(started, 3)}
    write_atomic(os.path.join(stage_dir, "stage.json"), json.dumps({**record, "done": False}))
    run()
    write_atomic(os.path.join(stage_dir, "stage.json"), json.dumps({**record, "done": True, "seconds": round(time.time() - started, 1)}))
    return True


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}

