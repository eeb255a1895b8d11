"""What a training stage evaluates while it trains, from plain inputs: held-out prompts, a reward
function and an optional evaluator callable.

A stage never knows where its prompts came from. Every N steps it answers its
`eval_prompts` greedily and logs, under `eval/`:
  - `response_words`: mean answer length;
  - `rm_score`: the reward model's mean score of the answers (the proxy), when
    the stage has a reward model;
  - every key the evaluator returns, averaged over the answers that have it.

An evaluator is any Python callable named `package.module:function` (the same
convention as a custom reward), called as

    fn(prompts: list[Prompt], responses: list[str], terminated: list[bool], **evaluator_args) -> list[dict]

(a prompt is its user string, or a tuple of `Message(role, content)` for a conversation of more
than one user turn or with a system turn: `rlhfkit.data.records.Prompt`)

with one dict per answer of numbers / booleans / None (None: not applicable to
this answer, left out of that key's mean). Key `score` is the answer's overall
quality: `rlhfkit eval` measures win-rates on it. Logged next to `rm_score`,
it shows over-optimisation as it happens (proxy up, true quality down).
"""

from __future__ import annotations

import importlib
from statistics import mean
from typing import Any, Callable, Sequence

import torch

from rlhfkit.data.records import prompt_json
from rlhfkit.rollout import answer

Evaluator = Callable[[list[str], list[str], list[bool]], list[dict[str, Any]]]


def load_callable(spec: str, what: str) -> Callable:
    """`package.module:function` -> the function; a ConfigError naming `what` (the config field) otherwise.

    Modules are found on `sys.path` and, as `python -m` would, in the current directory (the `rlhfkit`
    console script does not put it there itself)."""
    import os
    import sys

    from rlhfkit.config import ConfigError

    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"{what} {spec!r}: expected 'package.module:function'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{what} {spec!r}: cannot import it ({e}); is its module importable from here?") from None
    if not callable(fn):
        raise ConfigError(f"{what} {spec!r} is not callable")
    return fn


def make_evaluator(spec: str | None, args: dict[str, Any] | None = None) -> Evaluator | None:
    """The evaluator named by a config's `evaluator` field (None: no evaluator), with `evaluator_args` bound."""
    if not spec:
        return None
    fn, kwargs = load_callable(spec, "evaluator"), dict(args or {})

    def evaluate(prompts: list[str], responses: list[str], terminated: list[bool]) -> list[dict[str, Any]]:
        rows = list(fn(list(prompts), list(responses), list(terminated), **kwargs))
        if len(rows) != len(responses) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"evaluator {spec!r} must return one dict per response "
                             f"({len(responses)}), got {type(rows).__name__} of {len(rows)}")
        return rows

    return evaluate


def averages(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean of every key over the rows where it is a number or bool (None: not applicable), keys in first-seen order."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = {}
    for k in keys:
        vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float, bool))]
        if vals:
            out[k] = mean(vals)
    return out


@torch.no_grad()
def training_eval(policy, tok, prompts: Sequence[str], reward_fn=None, evaluator: Evaluator | None = None,
                  max_new_tokens: int = 48) -> dict[str, float]:
    """Greedy answers to held-out prompts -> `eval/response_words`, `eval/rm_score` (with a reward
    function) and `eval/<key>` for every key of the evaluator's rows. Empty without prompts."""
    if not prompts:
        return {}
    prompts = list(prompts)
    answers = answer(policy, tok, prompts, max_new_tokens=max_new_tokens)
    responses = [a["response"] for a in answers]
    out = {"eval/response_words": mean(len(r.split()) for r in responses)}
    if evaluator is not None:
        out.update({f"eval/{k}": v for k, v in averages(evaluator(prompts, responses, [a["terminated"] for a in answers])).items()})
    if reward_fn is not None:
        out["eval/rm_score"] = reward_fn(prompts, responses).mean().item()
    return out


def log_samples(run, model, tok, prompts: Sequence, step: int, references: Sequence[str] | None = None,
                max_new_tokens: int = 32) -> None:
    """Print and store greedy answers to a few prompts (with the reference answer when there is one)."""
    if not prompts:
        return
    answers = answer(model, tok, list(prompts), max_new_tokens=max_new_tokens)
    rows = [{"prompt": prompt_json(p), "response": a["response"]} for p, a in zip(prompts, answers)]
    for row, ref in zip(rows, references or []):
        row["reference"] = ref
    run.log_samples(step, rows)
