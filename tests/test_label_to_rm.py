"""Human labels end to end: samples -> `rlhfkit label` -> the web app's JSON API -> export -> a reward model.

A scripted annotator logs in like a person (login form, session cookie, CSRF
header) and labels every item by a fixed, learnable rule: the clearly shorter
response wins; a pair within a factor RATIO of each other in length is skipped,
as a person skips a pair they cannot call. The reward model trained on the
exported pairs must then beat chance on held-out pairs and rank fresh samples
(other prompts, another seed) by the same rule.
"""

from __future__ import annotations

import itertools
import json
import re

import httpx
import pytest

from tests.helpers import WORLD, metrics, rlhfkit
from tests.test_label_load import LabelServer

ANNOTATOR = "scripted"
N_PROMPTS = 160  # ~100 labelled pairs: enough for a tiny reward model to learn length
RATIO = 1.5  # the longer response must have at least RATIO times the characters of the shorter
SAMPLE = ("--num_samples=2", "--max_new_tokens=32")


def shorter_first(texts: list[str]) -> list[int] | None:
    """The rule: indices of `texts` from shortest to longest (characters), or None when any two neighbours in
    that order are within RATIO of each other in length (a pair the annotator cannot call)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    if any(len(texts[j]) < RATIO * len(texts[i]) for i, j in zip(order, order[1:])):
        return None
    return order


def login(client: httpx.Client, token: str) -> str:
    """Log in through the form as a browser would; returns the session's CSRF token."""
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"csrf": csrf, "token": token})
    assert r.status_code == 303 and r.headers["location"] == "/label", r.text
    return client.get("/api/me").json()["csrf"]


def verdict(item: dict) -> dict | None:
    """The judgement body for an item from /api/next by `shorter_first`, or None to skip it.

    Pairwise items (K = 2) get a choice between the responses as shown; ranking items (K > 2: one prompt drawn
    twice for the queue) get the response ids best first.
    """
    shown = item["responses"]
    order = shorter_first([r["text"] for r in shown])
    if order is None:
        return None
    if item["mode"] == "pairwise":
        return {"a_id": shown[0]["id"], "b_id": shown[1]["id"], "choice": "ab"[order[0]]}
    return {"ranking": [shown[i]["id"] for i in order]}


def label_everything(base_url: str, token: str) -> dict[str, int]:
    """Judge every item the app hands out by `shorter_first`; returns counts (judged, skipped, pairs)."""
    counts = {"judged": 0, "skipped": 0, "pairs": 0}
    with httpx.Client(base_url=base_url, timeout=10) as client:
        headers = {"X-CSRF-Token": login(client, token)}
        while (item := client.get("/api/next").json()["item"]) is not None:
            body = verdict(item)
            if body is None:
                r = client.post("/api/skip", json={"item_id": item["id"]}, headers=headers)
                assert r.status_code == 200 and r.json()["skipped"], r.text
                counts["skipped"] += 1
                continue
            body.update(item_id=item["id"], key=f"{ANNOTATOR}:{item['id']}")
            r = client.post("/api/judgements", json=body, headers=headers)
            assert r.status_code == 200, r.text
            k = len(item["responses"])
            counts["judged"], counts["pairs"] = counts["judged"] + 1, counts["pairs"] + k * (k - 1) // 2
    return counts


@pytest.fixture(scope="module")
def labelled(tiny_runs, tmp_path_factory):
    """Sample a queue, label it through the app, export, train a reward model.

    Returns (dir, counts of `rlhfkit label load`, counts of `label_everything`)."""
    root = tmp_path_factory.mktemp("label_to_rm")
    sft, db = f"{tiny_runs}/sft/model", f"sqlite:///{root}/labels.db"
    rlhfkit("world", "export", f"--out_dir={root}/world", *WORLD, f"--world.n_rl={N_PROMPTS}")  # the tiny world, more prompts
    rlhfkit("sample", f"--model={sft}", f"--prompts={root}/world/rl_prompts.jsonl", f"--out={root}/queue.jsonl", *SAMPLE)
    token = rlhfkit("label", "add-annotator", ANNOTATOR, "--db", db).stdout.strip()
    loaded = json.loads(rlhfkit("label", "load", f"{root}/queue.jsonl", "--db", db, "--overlap", "1").stdout)
    with LabelServer(db, str(root / "server.log")) as server:
        counts = label_everything(server.url, token)
    rlhfkit("label", "export", f"{root}/pairs.jsonl", "--db", db)
    rlhfkit("rm", f"--out_dir={root}/rm", f"--model={sft}", f"--data={root}/pairs.jsonl", "--evaluate=false",
            "--epochs=6", "--batch_groups=4", "--lr=2e-3", "--heldout_fraction=0.25", "--eval_every=10")
    return root, loaded, counts


def test_every_item_is_labelled_and_exported_as_human_pairs(labelled):
    root, loaded, counts = labelled
    queue = [json.loads(line) for line in (root / "queue.jsonl").read_text().splitlines()]
    assert len(queue) == N_PROMPTS
    # One item per distinct prompt, unless its responses are all identical.
    assert loaded["items"] + loaded["skipped"] == len({row["prompt"] for row in queue})
    assert counts["judged"] + counts["skipped"] == loaded["items"] and counts["judged"] >= 60
    pairs = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == counts["pairs"]
    assert all(p["source"] == "human" and p["annotator"] == ANNOTATOR for p in pairs)
    assert all(len(p["rejected"]) >= RATIO * len(p["chosen"]) for p in pairs)


def test_reward_model_beats_chance_on_heldout_pairs(labelled):
    root, _, _ = labelled
    evals = [m["eval/accuracy"] for m in metrics(f"{root}/rm") if "eval/accuracy" in m]
    assert evals[-1] >= 0.75, evals


def test_reward_model_ranks_fresh_samples_by_the_rule(labelled, tiny_runs):
    from rlhfkit.models.reward import load_scalar_model, reward_fn_from_model
    from rlhfkit.stages import generate

    root, _, _ = labelled
    # Fresh responses: the eval prompts (never in the queue), another seed, 4 per prompt -> 6 pairs each.
    rows = generate.main(generate.SampleConfig(
        model=f"{tiny_runs}/sft/model", prompts=f"{tiny_runs}/world/eval_prompts.jsonl", num_samples=4, max_new_tokens=32,
        seed=1, out=str(root / "fresh.jsonl")))
    reward = reward_fn_from_model(*load_scalar_model(f"{root}/rm/model"))
    agree = []
    for row in rows:
        texts = row["responses"]
        scores = reward([row["prompt"]] * len(texts), texts)  # (K,)
        for i, j in itertools.combinations(range(len(texts)), 2):
            rule = shorter_first([texts[i], texts[j]])
            if rule is not None:
                agree.append((scores[i] > scores[j]).item() == (rule == [0, 1]))
    assert len(agree) >= 30 and sum(agree) / len(agree) >= 0.75, (sum(agree), len(agree))
