"""Small, fast stand-ins used by the stage tests: a tiny world, a tiny model, and rewards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A world small enough to pretrain on in seconds; every family is still present.
WORLD = ["--world.corpus_docs=300", "--world.n_sft=240", "--world.n_rl=48", "--world.n_eval_per_family=3"]
WORLD_ARGS = {"corpus_docs": 300, "n_sft": 240, "n_rl": 48, "n_eval_per_family": 3}  # the same, as evaluator_args
MODEL = ["--model.hidden_size=48", "--model.num_layers=2", "--model.num_heads=2", "--model.intermediate_size=96",
         "--model.vocab_size=400"]


def rlhfkit(*args: str, check: bool = True, env: dict | None = None,
            launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run the CLI exactly as a user would (`python [launcher...] -m rlhfkit ...`).

    `launcher` goes between the interpreter and `-m rlhfkit`, e.g. `("-m", "torch.distributed.run", ...)`.
    """
    full_env = {**os.environ, "RLHFKIT_NO_TENSORBOARD": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, *launcher, "-m", "rlhfkit", *args], cwd=REPO, capture_output=True, text=True,
                          env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"rlhfkit {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def kill_at_first_checkpoint(args: tuple[str, ...], latest: str, ready=lambda: True,
                             launcher: tuple[str, ...] = ()) -> None:
    """Start `rlhfkit *args` (under `launcher`, e.g. torchrun), SIGKILL it and every process it started as soon
    as the checkpoint pointer `latest` exists (and `ready()`), and wait for it to die: a crash at the worst
    moment, for the resume tests."""
    import signal
    import time

    env = {**os.environ, "RLHFKIT_NO_TENSORBOARD": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *launcher, "-m", "rlhfkit", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (os.path.exists(latest) and ready()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers alike
    except ProcessLookupError:
        pass
    proc.wait()


def assert_same_metrics(full: list[dict], resumed: list[dict]) -> None:
    """An interrupted-and-resumed run logged the same steps and values as an uninterrupted one
    (wall-clock timings and memory aside)."""
    import pytest

    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    for a, b in zip(full, resumed):
        for k in a:
            if not k.startswith(("time", "sys/")):
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (a["step"], k)


def assert_only_rank_zero_wrote(one, two) -> None:
    """A 2-rank run directory `two` holds the same files as the 1-process run's `one`, and no step twice (a second
    writer would append its own rows to metrics.jsonl)."""
    assert sorted(p.relative_to(two) for p in two.rglob("*")) == sorted(p.relative_to(one) for p in one.rglob("*"))
    steps = [r["step"] for r in metrics(str(two))]
    assert len(steps) == len(set(steps))


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def short_reward(prompts, responses, terminated=None):
    """Reward short answers: -(words), a signal any policy can climb in a few steps."""
    return [-float(len(r.split())) for r in responses]


def exact_sum(prompts, responses, terminated=None, **_):
    """An evaluator for 'what is A plus B ?' prompts: per response `score` (1.0 if its first number is A + B) and
    `format` (1.0 if the response ends with a full stop, as every demonstration does)."""
    import re

    return [{"score": s, "format": float(re.search(r"\.\s*$", r) is not None)}
            for s, r in zip(exact_sum_reward(prompts, responses), responses)]


def exact_sum_reward(prompts, responses, terminated=None, **_):
    """The same check as a verifiable reward: one number per response."""
    import re

    out = []
    for p, r in zip(prompts, responses):
        a, b = map(int, re.findall(r"\d+", p)[:2])
        got = re.findall(r"\d+", r)
        out.append(float(bool(got) and int(got[0]) == a + b))
    return out


def answer_reward(prompts, responses, terminated, answer):
    """A verifiable reward that reads the dataset's `answer` column: 1.0 where a word of the response is it."""
    return [float(str(a) in r.replace(".", " ").split()) for r, a in zip(responses, answer)]


def wrong_length_reward(prompts, responses, terminated=None):
    return [1.0]


def response_logits(model, gen):
    """One forward pass over a generation's prompt + response sequences -> the logits that predict each response
    token (B, R, V): position t predicts token t + 1, so the response is predicted by columns P-1 .. end-1."""
    import torch

    from rlhfkit.models.logprobs import position_ids_from_mask

    seq, attn = gen.sequences()
    with torch.no_grad():
        logits = model(input_ids=seq, attention_mask=attn.long(), position_ids=position_ids_from_mask(attn)).logits
    return logits[:, gen.prompt_ids.shape[1] - 1 : -1]
