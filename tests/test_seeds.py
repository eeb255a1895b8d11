"""`rlhfkit seeds`: a stage trained once per seed, all judged in one eval against the baseline; cached
like the pipeline (a rerun skips, an added seed trains only itself and redoes the eval)."""

from __future__ import annotations

import json
import re
import statistics

import pytest

from tests.helpers import WORLD, rlhfkit

RLOO = ["reward=tests.helpers:short_reward", "total_steps=8", "prompts_per_step=4", "k=4", "minibatch_size=16",
        "micro_batch_size=8", "max_new_tokens=16", "eval_every=0", "sample_every=1000", "lr=1e-3",
        "missing_eos_penalty=-5"]
EVAL = ["--eval.num_samples=0", "--eval.bootstrap=50", "--eval.max_new_tokens=16", *(f"--eval.{w[2:]}" for w in WORLD)]


def statuses(stdout: str) -> dict[str, str]:
    """`[seeds 2/3 +   4s] rloo seed 1: running` lines -> {"rloo seed 1": "running", ...}."""
    return dict(re.findall(r"^\[seeds \d+/\d+ \+\s*\d+s\] (.+?): (.+)$", stdout, re.M))


def test_seeds_trains_each_seed_judges_all_against_the_baseline_and_caches(tiny_runs):
    out = tiny_runs / "seeds"
    stage_args = "[" + ", ".join([f"policy={tiny_runs}/sft/model", f"prompts={tiny_runs}/world/rl_prompts.jsonl", *RLOO]) + "]"
    args = ("seeds", f"--out_dir={out}", "--stage=rloo", f"--baseline={tiny_runs}/sft/model",
            f"--stage_args={stage_args}", *EVAL)

    first = rlhfkit(*args, "--seeds=[0,1]")
    assert statuses(first.stdout) == {"rloo seed 0": "running", "rloo seed 1": "running", "eval": "running"}
    summary = json.loads((out / "seeds.json").read_text())
    evaluated = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(evaluated) == {"baseline", "seed_0", "seed_1"}
    for s in (0, 1):
        assert f"seed: {s}" in (out / f"seed_{s}" / "config.yaml").read_text()
        row, m = summary["rows"][f"seed_{s}"], evaluated[f"seed_{s}"]
        assert m["baseline"] == "baseline"
        assert row["winrate"] == m["gold_winrate"]["mean"] and row["kl"] == m["kl"]
        # the reward was "fewer words": every seed learned to answer shorter than the baseline
        assert row["response_words"] < summary["rows"]["baseline"]["response_words"], (s, row)
    words = [summary["rows"][f"seed_{s}"]["response_words"] for s in (0, 1)]
    assert summary["spread"]["response_words"]["mean"] == pytest.approx(statistics.fmean(words))
    assert summary["spread"]["response_words"]["std"] == pytest.approx(statistics.stdev(words))
    assert summary["spread"]["response_words"]["min"] == min(words)
    table = (out / "seeds.md").read_text()
    assert table.splitlines()[0].startswith("| policy | win-rate vs baseline") and "| seeds mean |" in table
    assert "| seeds mean |" in first.stdout

    # Nothing changed: nothing reruns. A seed added: only it trains, and the eval is redone.
    assert set(statuses(rlhfkit(*args, "--seeds=[0,1]").stdout).values()) == {"up to date, skipped"}
    more = statuses(rlhfkit(*args, "--seeds=[0,1,2]").stdout)
    assert more == {"rloo seed 0": "up to date, skipped", "rloo seed 1": "up to date, skipped",
                    "rloo seed 2": "running", "eval": "running"}
    assert set(json.loads((out / "seeds.json").read_text())["rows"]) == {"baseline", "seed_0", "seed_1", "seed_2"}


def test_seeds_rejects_an_unknown_stage_and_repeated_seeds(tmp_path):
    bad = rlhfkit("seeds", f"--out_dir={tmp_path}", "--stage=sft", check=False)
    assert bad.returncode == 2 and "'stage'" in bad.stderr
    bad = rlhfkit("seeds", f"--out_dir={tmp_path}", "--seeds=[1,1]", check=False)
    assert bad.returncode == 2 and "'seeds'" in bad.stderr
