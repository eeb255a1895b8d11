"""Conversations (a system turn, earlier turns) survive every step: loaders, sampling, the labelling queue,
the store, the labelling page and the exported pairs. Before, only the last user message was kept."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient

from rlhfkit.data.chat import render_prompt
from rlhfkit.data.loaders import load_preferences, prompt_list, write_jsonl
from rlhfkit.data.records import Comparison, Message
from rlhfkit.feedback.store import FeedbackStore

SYSTEM = {"role": "system", "content": "Answer in French."}
CONV = [SYSTEM, {"role": "user", "content": "What is 7 + 5?"}, {"role": "assistant", "content": "12."},
        {"role": "user", "content": "And 9 - 4?"}]
AS_MESSAGES = tuple(Message(m["role"], m["content"]) for m in CONV)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prompts_and_pairs_keep_the_whole_conversation(tmp_path, tiny_tok):
    prompts = prompt_list(write(tmp_path / "p.jsonl", [{"prompt": CONV}, {"prompt": "Hi"},
                                                      {"prompt": [{"role": "user", "content": "Hi"}]}]))
    assert prompts == [AS_MESSAGES, "Hi", "Hi"]  # one user message is its string: one prompt, one form
    assert tiny_tok.decode(render_prompt(tiny_tok, prompts[0])).startswith("<|system|>Answer in French.<|user|>What is 7 + 5?")
    pairs = load_preferences(write(tmp_path / "pairs.jsonl", [
        {"prompt": CONV, "chosen": "5.", "rejected": "6."},
        {"chosen": CONV + [{"role": "assistant", "content": "Cinq."}],
         "rejected": CONV + [{"role": "assistant", "content": "Five."}]}]))  # implicit prompt
    assert [p.prompt for p in pairs] == [AS_MESSAGES, AS_MESSAGES]
    write_jsonl(str(tmp_path / "again.jsonl"), pairs)  # what export and the feedback stage write reads back the same
    assert load_preferences(str(tmp_path / "again.jsonl")) == pairs
    assert Comparison(AS_MESSAGES, "a", "b").to_json()["prompt"] == CONV


def test_the_queue_store_page_and_export_keep_the_conversation(tmp_path):
    from rlhfkit.feedback.webapp import create_app

    url = f"sqlite:///{tmp_path / 'f.db'}"
    other = [{"role": "system", "content": "Answer in German."}] + CONV[1:]  # same last question, other system turn
    queue = write(tmp_path / "q.jsonl", [{"prompt": CONV, "responses": ["Cinq.", "Five."]},
                                         {"prompt": other, "responses": ["Fünf.", "Five."]}])
    store = FeedbackStore(url)
    assert store.load_queue_jsonl(queue)["items"] == 2  # two prompts, though their last user turn is the same
    app = create_app(url, "admin-token-for-tests")
    client = TestClient(app)
    token = client.post("/admin/annotators", json={"name": "ann"}, headers={"X-Admin-Token": "admin-token-for-tests"}).json()["token"]
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    client.post("/login", data={"csrf": csrf, "token": token})
    html = client.get("/label").text
    shown = re.search(r'<ol id="prompt" class="conversation">(.*?)</ol>', html, re.S).group(1)
    assert [r for r in re.findall(r'<span class="role">(\w+)</span>', shown)] == ["system", "user", "assistant", "user"]
    assert "Answer in French." in shown and "And 9 - 4?" in shown
    csrf = client.get("/api/me").json()["csrf"]
    item = client.get("/api/next", headers={"X-CSRF-Token": csrf}).json()["item"]
    assert item["prompt"] == CONV
    ids = [r["id"] for r in item["responses"]]
    r = client.post("/api/judgements", json={"item_id": item["id"], "a_id": ids[0], "b_id": ids[1], "choice": "a"},
                    headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    out = tmp_path / "pairs.jsonl"
    assert store.export_jsonl(str(out)) == 1
    (pair,) = load_preferences(str(out))
    assert pair.prompt == AS_MESSAGES


def test_a_store_made_before_conversations_gains_the_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    store = FeedbackStore(f"sqlite:///{path}")
    pid = store.add_prompt("What is 7 + 5?")
    store.engine.dispose()
    with sqlite3.connect(path) as db:  # as an earlier version created it
        db.execute("ALTER TABLE prompts DROP COLUMN messages")
    store = FeedbackStore(f"sqlite:///{path}")
    assert store.add_prompt("What is 7 + 5?") == pid  # the old row is still found by its text
    assert store.add_prompt(AS_MESSAGES) != pid


def test_sampling_writes_the_conversation_into_the_labelling_queue(tmp_path, tiny_model, tiny_tok):
    from rlhfkit.config import load_config
    from rlhfkit.stages import generate

    tiny_model.save_pretrained(tmp_path / "model")
    tiny_tok.save_pretrained(tmp_path / "model")
    prompts = write(tmp_path / "p.jsonl", [{"messages": CONV + [{"role": "assistant", "content": "5."}]}, {"prompt": "Hi"}])
    cfg = load_config(generate.SampleConfig, None, [f"--model={tmp_path / 'model'}", f"--prompts={prompts}", "--num_samples=2",
                                                     "--max_new_tokens=4", f"--out={tmp_path / 'queue.jsonl'}"])
    generate.main(cfg)
    rows = [json.loads(line) for line in open(tmp_path / "queue.jsonl")]
    assert [r["prompt"] for r in rows] == [CONV, "Hi"]  # the final reply of `messages` is not part of the prompt
    rows[0]["responses"] = ["Cinq.", "Five."]  # two distinct answers, so the item is queued whatever the tiny model said
    write(tmp_path / "queue.jsonl", rows)
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    store.load_queue_jsonl(str(tmp_path / "queue.jsonl"))
    ann, _ = store.add_annotator("ann")
    assert store.next_item(ann).prompt == AS_MESSAGES


def test_the_reward_model_and_ppo_see_the_system_turn(tiny_model, tiny_tok):
    """The exported pair's conversation reaches the RM's rendering, and PPO's rollouts condition on it and
    hand it whole to the reward."""
    import torch

    from rlhfkit.data.chat import render_example
    from rlhfkit.rollout import collect_experience

    ids, mask = render_example(tiny_tok, AS_MESSAGES, "Cinq.")
    assert tiny_tok.decode(ids[: mask.index(True)]).startswith("<|system|>Answer in French.<|user|>What is 7 + 5?")
    seen = []

    def reward(prompts, responses, terminated, **_):
        seen.extend(prompts)
        return torch.zeros(len(prompts))

    exp = collect_experience(tiny_model, tiny_model, tiny_tok, [AS_MESSAGES, "Hi"], reward, max_new_tokens=3, temperature=1.0)
    assert seen == [AS_MESSAGES, "Hi"]
    rollout_prompt = tiny_tok.decode(exp.input_ids[0, : exp.prompt_len][exp.attention_mask[0, : exp.prompt_len]])
    assert "Answer in French." in rollout_prompt and "And 9 - 4?" in rollout_prompt


def test_a_system_turn_survives_every_hop_from_sampling_to_ppo(tmp_path, tiny_model, tiny_tok, monkeypatch):
    """One path, asserted at each hop: `sample` writes the conversation to the queue -> the store queues it ->
    the labelling page shows it -> the annotator's judgement is exported as a pair with it -> the reward model
    trains on renderings that hold it -> PPO samples from prompts that hold it and its reward model scores
    renderings that hold it."""
    from fastapi.testclient import TestClient

    import rlhfkit.data.chat as chat
    from rlhfkit.config import load_config
    from rlhfkit.feedback.webapp import create_app
    from rlhfkit.stages import generate, ppo, rm

    tiny_model.save_pretrained(tmp_path / "model")
    tiny_tok.save_pretrained(tmp_path / "model")
    systems = [f"Answer in {lang}." for lang in ("French", "German", "Dutch", "Latin", "Greek", "Welsh")]
    convs = [[{"role": "system", "content": s}] + CONV[1:] for s in systems]

    # 1. sample -> queue file
    cfg = load_config(generate.SampleConfig, None, [f"--model={tmp_path / 'model'}", f"--out={tmp_path / 'queue.jsonl'}",
                                                     f"--prompts={write(tmp_path / 'p.jsonl', [{'prompt': c} for c in convs])}",
                                                     "--num_samples=2", "--max_new_tokens=4"])
    generate.main(cfg)
    queue = [json.loads(line) for line in open(tmp_path / "queue.jsonl")]
    assert [r["prompt"] for r in queue] == convs
    for r in queue:
        r["responses"] = ["Cinq.", "Five."]  # two distinct answers, so every item is queued whatever the tiny model said
    write(tmp_path / "queue.jsonl", queue)

    # 2. store -> labelling page -> judgement
    url = f"sqlite:///{tmp_path / 'f.db'}"
    store = FeedbackStore(url)
    assert store.load_queue_jsonl(str(tmp_path / "queue.jsonl"))["items"] == len(convs)
    client = TestClient(create_app(url, "admin-token-for-tests"))
    token = client.post("/admin/annotators", json={"name": "ann"}, headers={"X-Admin-Token": "admin-token-for-tests"}).json()["token"]
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"csrf": csrf, "token": token})
    for _ in convs:
        shown = re.search(r'<ol id="prompt" class="conversation">(.*?)</ol>', client.get("/label").text, re.S).group(1)
        assert re.findall(r'<span class="role">(\w+)</span>', shown) == ["system", "user", "assistant", "user"]
        csrf = client.get("/api/me").json()["csrf"]
        item = client.get("/api/next", headers={"X-CSRF-Token": csrf}).json()["item"]
        assert item["prompt"] in convs and item["prompt"][0]["content"] in shown
        ids = [r["id"] for r in item["responses"]]
        r = client.post("/api/judgements", json={"item_id": item["id"], "a_id": ids[0], "b_id": ids[1], "choice": "a"},
                        headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text

    # 3. export
    pairs_file = str(tmp_path / "pairs.jsonl")
    assert store.export_jsonl(pairs_file) == len(convs)
    assert sorted(json.loads(line)["prompt"][0]["content"] for line in open(pairs_file)) == sorted(systems)

    # 4. the reward model trains on renderings that hold the system turn
    rendered, render_example, render_examples = [], chat.render_example, chat.render_examples

    def spy(tok, prompt, *args, **kwargs):
        out = render_example(tok, prompt, *args, **kwargs)
        rendered.append(tok.decode(out[0]))
        return out

    def spy_all(tok, items, *args, **kwargs):  # the RM renders every answer of its data once, up front
        out = render_examples(tok, items, *args, **kwargs)
        rendered.extend(tok.decode(ids) for ids, _ in out)
        return out

    monkeypatch.setattr(rm, "render_examples", spy_all)
    rm.train(load_config(rm.Config, None, [f"--out_dir={tmp_path / 'rm'}", f"--model={tmp_path / 'model'}",
                                           f"--data={pairs_file}", "--epochs=1", "--batch_groups=2", "--evaluate=false",
                                           "--eval_every=0"]))
    assert rendered and all(any(f"<|system|>{s}" in t for s in systems) for t in rendered)

    # 5. PPO: rollouts condition on the system turn, and the reward model scores renderings that hold it
    rendered.clear()
    monkeypatch.setattr(chat, "render_example", spy)  # the reward function renders through rlhfkit.data.chat
    rollout_prompts, collect = [], ppo.collect_experience

    def collect_spy(policy, ref, tok, prompts, *args, **kwargs):
        exp = collect(policy, ref, tok, prompts, *args, **kwargs)
        n = exp.prompt_len
        rollout_prompts.extend(tok.decode(ids[:n][mask[:n]]) for ids, mask in zip(exp.input_ids, exp.attention_mask))
        return exp

    monkeypatch.setattr(ppo, "collect_experience", collect_spy)
    ppo.train(load_config(ppo.Config, None, [f"--out_dir={tmp_path / 'ppo'}", f"--policy={tmp_path / 'model'}",
                                             f"--reward_model={tmp_path / 'rm' / 'model'}", f"--prompts={pairs_file}",
                                             "--total_steps=1", "--rollout_batch_size=6", "--minibatch_size=6",
                                             "--micro_batch_size=6", "--max_new_tokens=4", "--eval_every=0",
                                             "--sample_every=1000"]))
    assert sorted(next(s for s in systems if s in p) for p in rollout_prompts) == sorted(systems)
    assert all("And 9 - 4?" in p for p in rollout_prompts)
    assert len(rendered) >= len(systems) and all(any(f"<|system|>{s}" in t for s in systems) for t in rendered)
