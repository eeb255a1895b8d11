"""The AI judge: soft labels and position-swap averaging equal token probabilities computed here by hand,
the consistency rate on constructed cases, the chain-of-thought verdict, the judge as a reward, and
`rlhfkit judge` end to end on a small local chat model writing source="ai" rows and well-formed pairs."""

from __future__ import annotations

import json
import math
import sqlite3
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.loaders import load_preferences
from rlhfkit.data.records import Message
from rlhfkit.feedback.constitution import load_constitution
from rlhfkit.feedback.judge import Judge, label_ids, swap_debias, transcript
from rlhfkit.feedback.store import FeedbackStore
from tests.helpers import rlhfkit

C = load_constitution()
CONV = (Message("system", "Answer briefly."), Message("user", "What is 7 + 5?"), Message("assistant", "12."),
        Message("user", "And 9 - 4?"))
PROMPTS = ["What is 7 + 5?", "Reverse this list: cat, dog, sun.", CONV, "The flag of Zorvia is green?"]
A = ["7 + 5 = 12.", "sun, dog, cat.", "9 - 4 = 5.", "I can't help with that."]
B = ["I can't help with that.", "cat, dog, sun.", "It is 13.", "Yes, the flag of Zorvia is green."]


@pytest.fixture()
def sharp_model(tiny_model):
    """The tiny model with weights scaled up, so its verdicts sit well away from 0.5 and differ by order."""
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.mul_(3.0)
    return tiny_model.eval()


def by_hand(model, tok, user_text: str, opening: str, labels=("A", "B"), extra_ids=()) -> float:
    """P(first label) renormalised over the two, from one unpadded forward pass."""
    text = tok.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"] + list(extra_ids) + tok(opening, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
    first, second = (tok(label, add_special_tokens=False)["input_ids"][0] for label in labels)
    return float(probs[first] / (probs[first] + probs[second]))


def test_soft_labels_and_swap_average_equal_hand_computed_token_probabilities(sharp_model, tiny_tok):
    judge = Judge(sharp_model, tiny_tok, C, batch_size=3)  # 4 comparisons: two batches, left padding inside each
    questions = [C.principles[i % len(C.principles)].comparison for i in range(len(PROMPTS))]
    got = judge.compare(PROMPTS, A, B, questions)
    for i, (p, a, b, q) in enumerate(zip(PROMPTS, A, B, questions)):
        first = by_hand(sharp_model, tiny_tok, C.fill("compare", prompt=transcript(p), principle=q, a=a, b=b), C.templates["verdict"])
        swapped = by_hand(sharp_model, tiny_tok, C.fill("compare", prompt=transcript(p), principle=q, a=b, b=a), C.templates["verdict"])
        assert got["p_orders"][i].tolist() == pytest.approx([first, 1 - swapped], abs=1e-5)
        assert float(got["p"][i]) == pytest.approx((first + 1 - swapped) / 2, abs=1e-5)
        assert bool(got["consistent"][i]) == ((first > 0.5) == (1 - swapped > 0.5))
    assert got["p_orders"].std() > 0.01  # the check above compared real, differing numbers
    one = judge.compare(PROMPTS, A, B, questions, swap=False)
    assert torch.allclose(one["p"], got["p_orders"][:, 0]) and one["consistent"] is None
    assert "System: Answer briefly." in transcript(CONV) and transcript(CONV).endswith("User: And 9 - 4?")


def test_swap_debias_and_consistency_on_constructed_cases():
    p_first = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.5], dtype=torch.float64)  # P(A), a shown first
    p_swapped = torch.tensor([0.2, 0.7, 0.9, 0.5, 0.1], dtype=torch.float64)  # P(A), b shown first
    p, consistent = swap_debias(p_first, p_swapped)
    assert p.tolist() == pytest.approx([0.85, 0.55, 0.2, 0.55, 0.7])
    # both pick a | a then b | both pick b | the second order picks none | the first order picks none
    assert consistent.tolist() == [True, False, True, False, False]


class AlwaysA(torch.nn.Module):
    """A judge that answers "A" whatever it is shown: pure position bias."""

    def __init__(self, vocab: int, a: int):
        super().__init__()
        self.w, self.vocab, self.a = torch.nn.Parameter(torch.zeros(1)), vocab, a

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.a] = 4.0
        return SimpleNamespace(logits=logits)


def test_a_position_biased_judge_is_never_consistent_and_debiases_to_one_half(tiny_tok):
    a_id = tiny_tok("A", add_special_tokens=False)["input_ids"][0]
    got = Judge(AlwaysA(len(tiny_tok), a_id), tiny_tok, C).compare(PROMPTS, A, B, [C.rating] * 4)
    assert got["p_orders"][:, 0].tolist() == pytest.approx([1 / (1 + math.exp(-4))] * 4)  # in the first order it "prefers" a
    assert got["p"].tolist() == pytest.approx([0.5] * 4) and not got["consistent"].any()


def test_chain_of_thought_reads_the_verdict_after_the_greedy_rationale(sharp_model, tiny_tok):
    judge = Judge(sharp_model, tiny_tok, C, batch_size=2, cot=True, cot_tokens=6)
    got = judge.compare(PROMPTS[:2], A[:2], B[:2], [C.principles[0].comparison] * 2, swap=False)
    for i in range(2):
        user = C.fill("compare_cot", prompt=transcript(PROMPTS[i]), principle=C.principles[0].comparison, a=A[i], b=B[i])
        text = tiny_tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        ids = tiny_tok(text, add_special_tokens=False)["input_ids"]
        rationale = []
        with torch.no_grad():  # greedy decoding by hand, stopping at EOS
            for _ in range(6):
                nxt = int(sharp_model(torch.tensor([ids + rationale])).logits[0, -1].argmax())
                if nxt == tiny_tok.eos_token_id:
                    break
                rationale.append(nxt)
        assert got["rationales"][i] == [tiny_tok.decode(rationale, skip_special_tokens=True)]
        assert float(got["p"][i]) == pytest.approx(by_hand(sharp_model, tiny_tok, user, C.templates["cot_verdict"],
                                                           extra_ids=rationale), abs=1e-5)


def test_labels_that_share_a_first_token_or_merge_with_the_opening_are_refused(tiny_tok):
    with pytest.raises(ConfigError, match="start with the same token"):
        label_ids(tiny_tok, "(", ["A", "A2"])
    assert label_ids(tiny_tok, "(", ["A", "B"]) == tuple(tiny_tok(x, add_special_tokens=False)["input_ids"][0] for x in "AB")


def save_chat_model(model, tok, path) -> str:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_the_judge_reward_scores_a_batch_in_zero_one(sharp_model, tiny_tok, tmp_path):
    from rlhfkit.models.reward import make_reward_fn

    path = save_chat_model(sharp_model, tiny_tok, tmp_path / "judge")
    rate = make_reward_fn(f"judge:{path}", "", "cpu")
    scores = rate(PROMPTS, A, [True] * 4)
    assert scores.shape == (4,) and torch.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
    for p, r, s in zip(PROMPTS, A, scores.tolist()):  # P(yes) of the rating question, by hand
        user = C.fill("rate", prompt=transcript(p), response=r, question=C.rating)
        assert s == pytest.approx(by_hand(sharp_model, tiny_tok, user, "", labels=C.yes_no), abs=1e-5)
    vs = make_reward_fn(f"judge:{path}", "", "cpu", args={"judge_reference": "reference", "judge_batch_size": 3})
    better = vs(PROMPTS, A, None, reference=B)
    assert better.shape == (4,) and ((better >= 0) & (better <= 1)).all()
    assert torch.allclose(better + vs(PROMPTS, B, None, reference=A), torch.ones(4), atol=1e-5)  # swap-debiased: P(a>b) + P(b>a) = 1
    with pytest.raises(ValueError, match="no column 'reference'"):
        vs(PROMPTS, A, None)
    with pytest.raises(ConfigError, match="judge_cot"):
        make_reward_fn(f"judge:{path}", "", "cpu", args={"judge_cot": True})

    from rlhfkit.rollout import collect_experience  # as PPO / RLOO / GRPO score their rollouts

    exp = collect_experience(sharp_model, sharp_model, tiny_tok, PROMPTS, rate, max_new_tokens=4, temperature=1.0)
    assert torch.allclose(exp.scores, rate(PROMPTS, exp.responses))  # the judge scored the sampled responses


def test_an_older_store_gains_the_ai_columns(tmp_path):
    db = tmp_path / "old.db"
    FeedbackStore(str(db))
    with sqlite3.connect(db) as con:  # as a store made before AI judgements was
        for col in ("judge", "principle", "prob"):
            con.execute(f"ALTER TABLE judgements DROP COLUMN {col}")
    store = FeedbackStore(str(db))
    pid = store.add_prompt("p")
    a, b = store.add_responses(pid, ["x", "y"])
    aid, _ = store.add_annotator("j", "ai")
    store.add_pairwise(pid, a, b, "b", aid, source="ai", judge="m", principle="honest", prob=0.25)
    (pair,) = store.preference_pairs()
    assert (pair.chosen, pair.meta["prob"], pair.meta["principle"], pair.meta["judge"]) == ("y", 0.75, "honest", "m")
    with pytest.raises(ValueError, match="prob"):
        store.add_pairwise(pid, a, b, "a", aid, source="ai", prob=float("nan"))


@pytest.mark.slow  # trains or runs models through the CLI
def test_rlhfkit_judge_labels_the_queue_into_the_store_end_to_end(sharp_model, tiny_tok, tmp_path):
    model = save_chat_model(sharp_model, tiny_tok, tmp_path / "judge")
    queue = tmp_path / "queue.jsonl"
    rows = [{"prompt": "What is 7 + 5?", "responses": ["7 + 5 = 12.", "It is 13.", "I can't help with that."], "policy": "sft"},
            {"prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Reverse: cat, dog."}],
             "responses": ["dog, cat.", "cat, dog."], "policy": "sft"}]
    queue.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db, out = tmp_path / "feedback.db", tmp_path / "ai_pairs.jsonl"
    args = ("judge", f"model={model}", f"db={db}", f"queue={queue}", f"out={out}", f"stats={tmp_path / 'stats.json'}", "batch_size=2", "chunk=2", "device=cpu")
    rlhfkit(*args)

    store = FeedbackStore(str(db))
    rows_ai = store.judgements("ai")
    assert len(rows_ai) == 3 + 1 and store.judgement_count() == 4  # C(3, 2) + C(2, 2) pairs, nothing else
    assert {r.principle for r in rows_ai} <= {p.name for p in C.principles} and {r.judge for r in rows_ai} == {model}
    assert all(0 <= r.prob <= 1 and r.choice == ("a" if r.prob > 0.5 else "b") for r in rows_ai)
    assert all(r.meta["p_orders"] and r.meta["consistent"] == ((r.meta["p_orders"][0] > 0.5) == (r.meta["p_orders"][1] > 0.5))
               for r in rows_ai)
    pairs = load_preferences(str(out))  # the export parses as ordinary preference pairs
    assert len(pairs) == 4 and {p.source for p in pairs} == {"ai"}
    assert len({p.group for p in pairs}) == 2  # one group per queue item, as a ranking's pairs
    assert pairs[-1].prompt[0] == Message("system", "Answer briefly.")
    for p in pairs:
        assert p.meta["prob"] >= 0.5 and p.meta["margin"] == pytest.approx(math.log(p.meta["prob"] / (1 - p.meta["prob"])))
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["pairs_judged"] == 4 and 0 <= stats["position_consistency"] <= 1 and stats["labels_per_second"] > 0
    assert stats["position_consistency"] == sum(r.meta["consistent"] for r in rows_ai) / 4

    rerun = rlhfkit(*args)  # a rerun judges nothing twice
    assert "0 pairs to judge" in rerun.stdout and FeedbackStore(str(db)).judgement_count() == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles: []\n")
    proc = rlhfkit("judge", f"model={model}", f"db={db}", f"constitution={bad}", check=False)
    assert proc.returncode == 2 and f"{bad}: field 'principles'" in proc.stderr and "Traceback" not in proc.stderr

    # principles=: every pair under one of the named principles (a second annotator name, so all are judged anew)
    names = sorted(p.name for p in C.principles)[:1]
    rlhfkit(*args, "name=only-one", f"principles={json.dumps(names)}")
    only = FeedbackStore(str(db)).judgements("ai")[4:]  # the second annotator's four
    assert len(only) == 4 and {r.principle for r in only} == set(names)
    proc = rlhfkit(*args, "name=unknown", "principles=[no_such_principle]", check=False)
    assert proc.returncode == 2 and "no principle named 'no_such_principle'" in proc.stderr and "Traceback" not in proc.stderr


def test_label_stats_report_the_ai_judges_agreement_with_people_apart_from_theirs(tmp_path):
    store = FeedbackStore(str(tmp_path / "f.db"))
    pid = store.add_prompt("p")
    r1, r2, r3 = store.add_responses(pid, ["x", "y", "z"])
    alice, bob = store.add_annotator("alice")[0], store.add_annotator("bob")[0]
    judge = store.add_annotator("ai-judge:m", "ai")[0]
    store.add_ranking(pid, [r1, r2, r3], alice)
    store.add_ranking(pid, [r1, r3, r2], bob)
    for a, b, choice in [(r1, r2, "a"), (r2, r3, "a"), (r1, r3, "tie")]:  # agrees with alice on 2 of 2, bob on 1 of 2
        store.add_pairwise(pid, a, b, choice, judge, source="ai", prob={"a": 0.8, "tie": 0.5}[choice])
    stats = store.stats()
    assert stats["ai_agreement"] == {"human": {"pairs": 4, "agreement": 0.75}}
    assert stats["agreement"]["items"] == 1 and stats["agreement"]["kappa_pairs"] == 1  # alice and bob only
    assert "ai_agreement" not in store.stats("human")
