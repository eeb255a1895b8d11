"""`rlhfkit cai` end to end on a small local chat model: demonstrations `sft` reads, chains whose every
step is the model's own greedy continuation of the conversation so far, and one-line errors for bad input."""

from __future__ import annotations

import pytest

import json

import torch

from rlhfkit.data.loaders import load_sft
from rlhfkit.feedback.constitution import load_constitution
from tests.helpers import rlhfkit

PROMPTS = [{"prompt": "What is 7 + 5?"}, {"prompt": "Reverse this list: cat, dog, sun."},
           {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 9 - 4?"}]}]
STEPS = 5  # max_new_tokens


def greedy(model, tok, messages: list[dict]) -> str:
    """The model's greedy reply to a conversation, decoded by hand (stops at EOS)."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids, out = tok(text, add_special_tokens=False)["input_ids"], []
    with torch.no_grad():
        for _ in range(STEPS):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True).strip()


def check_chains(chains: list[dict], responder, critic, tok) -> None:
    """The initial answer is `responder`'s greedy reply to the prompt; every critique and revision is `critic`'s greedy
    reply to the conversation so far."""
    names = {p.name: p for p in load_constitution().principles}
    for c in chains:
        conv = c["prompt"] if isinstance(c["prompt"], list) else [{"role": "user", "content": c["prompt"]}]
        answer = greedy(responder, tok, conv)
        assert c["initial"] == answer
        for r in c["rounds"]:
            principle = names[r["principle"]]
            assert r["critique_request"] == f"Critique request: {principle.critique}"
            assert r["revision_request"] == f"Revision request: {principle.revision}"
            conv_c = conv + [{"role": "assistant", "content": answer}, {"role": "user", "content": r["critique_request"]}]
            assert r["critique"] == greedy(critic, tok, conv_c)
            answer = greedy(critic, tok, conv_c + [{"role": "assistant", "content": r["critique"]},
                                                   {"role": "user", "content": r["revision_request"]}])
            assert r["revision"] == answer
        assert c["final"] == answer and c["kept"] == bool(answer)


@pytest.mark.slow  # trains or runs models through the CLI
def test_cai_with_a_responder_critiques_and_revises_another_models_answers(tiny_model, tiny_tok, tmp_path):
    """`responder=`: that model writes the initial answers, `model` critiques and revises them."""
    import copy

    critic, responder = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p, q in zip(critic.parameters(), responder.parameters()):
            p.mul_(3.0)
            q.mul_(2.0)
    for name, m in (("critic", critic), ("responder", responder)):
        m.save_pretrained(tmp_path / name)
        tiny_tok.save_pretrained(tmp_path / name)
    prompts = tmp_path / "red_team.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    out = tmp_path / "cai" / "demos.jsonl"
    rlhfkit("cai", f"model={tmp_path / 'critic'}", f"responder={tmp_path / 'responder'}", f"prompts={prompts}", f"out={out}",
            "revisions=1", "temperature=0", f"max_new_tokens={STEPS}", "batch_size=2", "device=cpu")
    chains = [json.loads(line) for line in (tmp_path / "cai" / "demos.chains.jsonl").read_text().splitlines()]
    critic.eval(), responder.eval()
    check_chains(chains, responder, critic, tiny_tok)
    # the two models answer differently, so the test tells them apart
    assert [greedy(responder, tiny_tok, [{"role": "user", "content": r["prompt"]}]) for r in PROMPTS[:2]] != \
        [greedy(critic, tiny_tok, [{"role": "user", "content": r["prompt"]}]) for r in PROMPTS[:2]]


@pytest.mark.slow  # trains or runs models through the CLI
def test_cai_writes_demonstrations_and_chains_of_the_models_own_critiques_and_revisions(tiny_model, tiny_tok, tmp_path):
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.mul_(3.0)
    tiny_model.save_pretrained(tmp_path / "model")
    tiny_tok.save_pretrained(tmp_path / "model")
    prompts = tmp_path / "red_team.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    out = tmp_path / "cai" / "demos.jsonl"
    rlhfkit("cai", f"model={tmp_path / 'model'}", f"prompts={prompts}", f"out={out}", "revisions=2", "temperature=0",
            f"max_new_tokens={STEPS}", "batch_size=2", "device=cpu")

    chains = [json.loads(line) for line in (tmp_path / "cai" / "demos.chains.jsonl").read_text().splitlines()]
    assert len(chains) == 3 and [len(c["rounds"]) for c in chains] == [2, 2, 2]
    assert chains[2]["prompt"][0] == {"role": "system", "content": "Answer briefly."}  # the conversation is kept
    model = tiny_model.eval()
    check_chains(chains, model, model, tiny_tok)  # every step is the model's own greedy reply to the conversation so far
    assert len({r["principle"] for c in chains for r in c["rounds"]}) > 1  # a principle drawn per prompt and round

    demos = load_sft(str(out))  # what `rlhfkit sft data=<out>` reads
    kept = [c for c in chains if c["kept"]]
    assert kept and [d.completion for d in demos] == [c["final"] for c in kept]
    assert [d.prompt[-1].content for d in demos] == [c["prompt"] if isinstance(c["prompt"], str) else c["prompt"][-1]["content"]
                                                     for c in kept]


@pytest.mark.slow  # trains or runs models through the CLI
def test_cai_bad_input_is_one_line_naming_what_is_wrong(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    bad = tmp_path / "const.yaml"
    bad.write_text("principles:\n  - name: x\n    critique: c\n    comparison: q\n")
    proc = rlhfkit("cai", f"prompts={prompts}", f"constitution={bad}", "model=nowhere", check=False)
    assert proc.returncode == 2 and f"{bad}: field 'principles[0].revision': missing" in proc.stderr
    proc = rlhfkit("cai", "revisions=0", f"prompts={prompts}", check=False)
    assert proc.returncode == 2 and "'revisions' must be >= 1" in proc.stderr
    proc = rlhfkit("cai", check=False)
    assert proc.returncode == 2 and "'prompts'" in proc.stderr and "Traceback" not in proc.stderr
