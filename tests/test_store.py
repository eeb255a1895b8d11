"""The feedback store: round trips, pair expansion, JSONL export/import, concurrency, queue overlap, agreement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from rlhfkit.data.loaders import DataError
from rlhfkit.feedback.agreement import cohen_kappa, krippendorff_alpha
from rlhfkit.feedback.schema import ranking_pairs
from rlhfkit.feedback.store import Conflict, FeedbackStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Clock:
    """A settable clock, so leases expire without sleeping."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def store(tmp_path):
    return FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}", lease_minutes=1.0, clock=Clock())


def one_prompt(store, texts=("r0", "r1", "r2", "r3"), prompt="Say something.", family="chat", policy="sft"):
    pid = store.add_prompt(prompt, family=family)
    return pid, store.add_responses(pid, list(texts), policy=policy)


def triples(comparisons):
    return [(c.prompt, c.chosen, c.rejected) for c in comparisons]


# ---------------------------------------------------------------- basics


def test_round_trip_get_or_create_and_auth(store):
    pid, rids = one_prompt(store)
    assert store.add_prompt("Say something.") == pid  # unique by text
    assert store.add_responses(pid, ["r2", "r0"], policy="sft") == [rids[2], rids[0]]
    assert store.add_responses(pid, ["r0"], policy="other") != [rids[0]]  # another policy's identical text
    aid, token = store.add_annotator("alice", "human")
    assert token and store.authenticate(token).id == aid
    assert store.authenticate("not-a-token") is None
    aid2, token2 = store.add_annotator("alice", "human")  # re-adding a person issues a new token
    assert aid2 == aid and token2 != token
    assert store.authenticate(token) is None and store.authenticate(token2).name == "alice"
    assert store.add_annotator("sim-0", "simulated") == store.add_annotator("sim-0", "simulated")
    with pytest.raises(ValueError):
        store.add_annotator("alice", "ai")  # kind mismatch

    item_id = store.enqueue(pid, rids[:3], overlap=1)
    assert store.enqueue(pid, list(reversed(rids[:3])), overlap=1) == item_id  # same set: one item
    item = store.next_item(aid)
    assert item.id == item_id and item.prompt == "Say something." and item.family == "chat"
    assert [r.text for r in item.responses] == ["r0", "r1", "r2"]
    assert store.next_item(aid) == item  # a reload shows the same leased item
    jid = store.add_ranking(pid, [rids[1], rids[0], rids[2]], aid, "human", item_id=item_id, key="k")
    assert store.next_item(aid) is None
    assert store.progress(aid) == {"done": 1, "total": 1}
    [j] = store.judgements()
    assert (j.id, j.annotator, j.kind, j.source) == (jid, "alice", "ranking", "human")
    assert j.ranking == [rids[1], rids[0], rids[2]]


def test_ranking_of_four_gives_six_pairs_in_order(store):
    pid, rids = one_prompt(store)
    aid, _ = store.add_annotator("sim", "simulated")
    ranking = [rids[2], rids[0], rids[3], rids[1]]  # r2 > r0 > r3 > r1
    jid = store.add_ranking(pid, ranking, aid, "simulated")
    pairs = store.preference_pairs()
    assert [(c.chosen, c.rejected) for c in pairs] == [
        ("r2", "r0"), ("r2", "r3"), ("r2", "r1"), ("r0", "r3"), ("r0", "r1"), ("r3", "r1")]
    # the same against a naive loop over every ordered pair of ranks
    naive = [(ranking[i], ranking[j]) for i in range(4) for j in range(4) if i < j]
    assert ranking_pairs(ranking) == naive
    assert all(c.group == str(jid) and c.source == "simulated" and c.annotator == "sim" for c in pairs)
    assert pairs[0].meta == {"family": "chat", "chosen_policy": "sft", "rejected_policy": "sft", "judgement": jid,
                             "flag_harmful": False}
    with pytest.raises(ValueError):
        store.add_ranking(pid, [rids[0], rids[0]], aid, "simulated")  # not distinct
    other, other_rids = one_prompt(store, prompt="Another prompt.")
    with pytest.raises(ValueError):
        store.add_ranking(pid, [rids[0], other_rids[0]], aid, "simulated")  # a response to another prompt


def test_pairwise_choices(store):
    pid, rids = one_prompt(store, texts=("x", "y"))
    aid, _ = store.add_annotator("bob", "human")
    for choice in ("a", "b", "tie", "both_bad"):
        store.add_pairwise(pid, rids[0], rids[1], choice, aid, "human", flag_harmful=choice == "b", note=choice)
    pairs = store.preference_pairs()
    assert [(c.chosen, c.rejected) for c in pairs] == [("x", "y"), ("y", "x")]  # tie and both_bad give none
    assert [c.meta["flag_harmful"] for c in pairs] == [False, True] and pairs[1].meta["note"] == "b"
    assert store.stats()["judgements"] == 4 and store.stats()["pairs"] == 2
    with pytest.raises(ValueError):
        store.add_pairwise(pid, rids[0], rids[1], "maybe", aid, "human")
    with pytest.raises(ValueError):
        store.add_pairwise(pid, rids[0], rids[1], "a", aid, "robot")  # unknown source


def test_idempotency_key(store):
    pid, rids = one_prompt(store)
    a, _ = store.add_annotator("a", "simulated")
    b, _ = store.add_annotator("b", "simulated")
    first = store.add_ranking(pid, rids, a, "simulated", key="k1")
    assert store.add_ranking(pid, rids, a, "simulated", key="k1") == first
    with pytest.raises(Conflict, match="different judgement"):  # the same key with other content: refused, first kept
        store.add_ranking(pid, list(reversed(rids)), a, "simulated", key="k1")
    assert store.judgement_count() == 1
    with pytest.raises(Conflict):
        store.add_ranking(pid, rids, b, "simulated", key="k1")  # someone else's key
    assert store.judgement_count() == 1


# ---------------------------------------------------------------- JSONL


def test_export_import_round_trip(store, tmp_path):
    pid, rids = one_prompt(store)
    pid2, rids2 = one_prompt(store, texts=("p", "q"), prompt="Add 2 and 2.", family="math", policy="ppo")
    a, _ = store.add_annotator("sim-0", "simulated")
    h, _ = store.add_annotator("ann", "human")
    store.add_ranking(pid, [rids[3], rids[1], rids[0], rids[2]], a, "simulated")
    store.add_pairwise(pid2, rids2[0], rids2[1], "b", h, "human", flag_harmful=True, note="rude")
    store.add_pairwise(pid2, rids2[0], rids2[1], "tie", h, "human")
    out = tmp_path / "pairs.jsonl"
    assert store.export_jsonl(str(out)) == 7
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(rows[0]) == {"prompt", "chosen", "rejected", "source", "annotator", "group", "meta"}
    assert [r["source"] for r in rows] == ["simulated"] * 6 + ["human"]

    other = FeedbackStore(f"sqlite:///{tmp_path / 'other.db'}")
    assert other.import_jsonl(str(out)) == 7
    again = tmp_path / "again.jsonl"
    other.export_jsonl(str(again))
    assert [json.loads(line) for line in again.read_text().splitlines()] == rows
    assert [c.to_json() for c in other.preference_pairs()] == [c.to_json() for c in store.preference_pairs()]
    other.import_jsonl(str(out))  # importing the same file again writes nothing
    assert other.judgement_count() == 7
    assert other.export_jsonl(str(again), source="human") == 1


def test_acceptable_marks_export_per_side_and_survive_a_round_trip(store, tmp_path):
    pid, rids = one_prompt(store, texts=("good", "ok", "bad"))
    a, _ = store.add_annotator("sim-0", "simulated")
    store.add_ranking(pid, [rids[0], rids[1], rids[2]], a, "simulated", meta={"acceptable": [rids[0], rids[1]]})
    marks = [(c.chosen, c.meta["chosen_acceptable"], c.rejected, c.meta["rejected_acceptable"])
             for c in store.preference_pairs()]
    assert marks == [("good", True, "ok", True), ("good", True, "bad", False), ("ok", True, "bad", False)]
    out, again = tmp_path / "pairs.jsonl", tmp_path / "again.jsonl"
    store.export_jsonl(str(out))
    other = FeedbackStore(f"sqlite:///{tmp_path / 'other.db'}")
    other.import_jsonl(str(out))
    other.export_jsonl(str(again))
    assert again.read_text() == out.read_text()
    with pytest.raises(ValueError, match="acceptable"):  # a mark on a response the judgement does not cover
        store.add_ranking(pid, [rids[0], rids[1]], a, "simulated", meta={"acceptable": [rids[2]]})


@pytest.mark.parametrize("bad_line, where", [
    ('{"prompt": "p", "chosen": "a", "rejected": ', "invalid JSON"),
    ('{"prompt": "p", "chosen": "a"}', "missing field 'rejected'"),
    ('{"prompt": "p", "chosen": "a", "rejected": 7}', "field 'rejected'"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "meta": {"chosen_acceptable": "yes"}}', "field 'meta.chosen_acceptable'"),
])
def test_import_malformed_names_file_line_field_and_writes_nothing(store, tmp_path, bad_line, where):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "source": "human", "annotator": "x"})
    path.write_text(good + "\n" + good.replace('"a"', '"c"') + "\n" + bad_line + "\n")
    with pytest.raises(DataError) as e:
        store.import_jsonl(str(path))
    assert f"{path}:3" in str(e.value) and where in str(e.value)
    assert store.judgement_count() == 0 and store.preference_pairs() == []


def test_import_source_mismatch_is_an_error(store, tmp_path):
    path = tmp_path / "ai.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "source": "human"}) + "\n")
    with pytest.raises(DataError, match=r"ai.jsonl:2: field 'source'"):
        store.import_jsonl(str(path), source="ai")
    assert store.judgement_count() == 0


def test_load_queue_jsonl(store, tmp_path):
    path = tmp_path / "queue.jsonl"
    rows = [
        {"prompt": "P1", "responses": ["a", "b", "a", "c"], "terminated": [True, False, True, True], "policy": "sft",
         "family": "math"},
        {"prompt": "P2", "response": "x", "policy": "sft"},
        {"prompt": "P3", "responses": ["same", "same"], "policy": "sft"},  # nothing to compare: skipped
        {"prompt": "P2", "response": "y", "policy": "ppo"},
        {"prompt": "P4", "responses": ["", "EOS first is still a response"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert store.load_queue_jsonl(str(path), overlap=2) == {"items": 3, "responses": 7, "skipped": 1}
    assert store.load_queue_jsonl(str(path), overlap=2)["items"] == 3  # a reload keeps one item per prompt
    aid, _ = store.add_annotator("ann", "human")
    first, second = store.next_item(aid), None
    store.skip(aid, first.id)
    second = store.next_item(aid)
    assert (first.prompt, [r.text for r in first.responses], first.overlap) == ("P1", ["a", "b", "c"], 2)
    assert first.family == "math"
    assert (second.prompt, [(r.text, r.policy) for r in second.responses]) == ("P2", [("x", "sft"), ("y", "ppo")])
    assert store.next_item(aid) == second and store.progress(aid) == {"done": 0, "total": 2}  # P2 leased, P4 open


@pytest.mark.parametrize("bad_row, where", [
    ('{"prompt": "P", "responses": ["a", ', "invalid JSON"),
    ('{"responses": ["a", "b"]}', "missing field 'prompt'"),
    ('{"prompt": "P", "responses": "a b"}', "field 'responses'"),
    ('{"prompt": "P", "responses": ["a", 3]}', "field 'responses[1]'"),
    ('{"prompt": "P"}', "missing field 'responses'"),
    ('{"prompt": " ", "responses": ["a", "b"]}', "field 'prompt': expected a non-empty string"),
])
def test_load_queue_malformed_names_file_line_field_and_writes_nothing(store, tmp_path, bad_row, where):
    path = tmp_path / "queue.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "responses": ["a", "b"]}) + "\n\n" + bad_row + "\n")
    with pytest.raises(DataError) as e:
        store.load_queue_jsonl(str(path))
    assert f"{path}:3" in str(e.value) and where in str(e.value)
    aid, _ = store.add_annotator("ann", "human")
    assert store.next_item(aid) is None  # the valid first row was not written either


# ---------------------------------------------------------------- concurrency


def write_judgements(url: str, name: str, n: int) -> None:
    """n rankings by annotator `name`, each sent twice with the same key (a client retrying)."""
    s = FeedbackStore(url)
    pid = s.add_prompt("shared prompt")  # get-or-create races between writers too
    rids = s.add_responses(pid, ["r0", "r1", "r2"], policy="p")
    aid, _ = s.add_annotator(name, "simulated")
    for i in range(n):
        ranking = [rids[i % 3], rids[(i + 1) % 3], rids[(i + 2) % 3]]
        first = s.add_ranking(pid, ranking, aid, "simulated", key=f"{name}:{i}")
        assert s.add_ranking(pid, ranking, aid, "simulated", key=f"{name}:{i}") == first


def test_concurrent_writers_threads_and_processes_lose_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    FeedbackStore(url)
    n = 25
    code = f"import sys; sys.path.insert(0, {REPO!r}); from tests.test_store import write_judgements; " \
           f"write_judgements(sys.argv[1], sys.argv[2], {n})"
    procs = [subprocess.Popen([sys.executable, "-c", code, url, f"proc-{i}"]) for i in range(3)]
    errors = []

    def thread(name):
        try:
            write_judgements(url, name, n)
        except Exception as e:  # surfaced below: an exception in a thread would otherwise be lost
            errors.append(e)

    threads = [threading.Thread(target=thread, args=(f"thread-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert errors == []

    store = FeedbackStore(url)
    rows = store.judgements()
    names = [f"proc-{i}" for i in range(3)] + [f"thread-{i}" for i in range(4)]
    assert len(rows) == 7 * n
    assert sorted(r.key for r in rows) == sorted(f"{name}:{i}" for name in names for i in range(n))
    assert len(store.preference_pairs()) == 7 * n * 3
    assert store.add_prompt("shared prompt") == 1  # one prompt row despite 7 racing creators


def test_next_item_respects_overlap_under_concurrent_callers(store):
    pid, rids = one_prompt(store, texts=[f"r{i}" for i in range(24)])
    items = [store.enqueue(pid, rids[2 * i: 2 * i + 2], overlap=2) for i in range(12)]
    annotators = [store.add_annotator(f"a{i}", "human")[0] for i in range(6)]
    handed: list[tuple[int, int]] = []
    lock = threading.Lock()
    errors = []

    def work(aid):
        try:
            while (item := store.next_item(aid)) is not None:
                with lock:
                    handed.append((item.id, aid))
                a, b = item.responses
                store.add_pairwise(pid, a.id, b.id, "a", aid, "human", item_id=item.id)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(aid,)) for aid in annotators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(handed) == len(set(handed)) == 24  # never the same item twice to one annotator
    per_item = {i: sorted(a for j, a in handed if j == i) for i in items}
    assert all(len(v) == 2 and v[0] != v[1] for v in per_item.values())  # exactly `overlap` annotators each
    assert store.judgement_count() == 24


def test_leases_expire_and_skips_free_the_slot(tmp_path):
    clock = Clock()
    store = FeedbackStore(f"sqlite:///{tmp_path / 'q.db'}", lease_minutes=10, clock=clock)
    pid, rids = one_prompt(store, texts=("x", "y"))
    item = store.enqueue(pid, rids, overlap=1)
    a, b, c = (store.add_annotator(n, "human")[0] for n in "abc")
    assert store.next_item(a).id == item
    assert store.next_item(b) is None  # the only slot is leased to a
    clock.t += 10 * 60 - 1
    assert store.next_item(b) is None
    assert store.next_item(a).id == item  # renews a's lease
    clock.t += 10 * 60 + 1
    assert store.next_item(b).id == item  # a's lease expired: the slot went to b
    assert store.next_item(a) is None  # ... and the item never goes back to a
    assert store.skip(b, item) and not store.skip(b, item)
    assert store.next_item(c).id == item  # b skipped: free again
    assert store.next_item(b) is None
    # a judgement that arrives after its lease expired is kept all the same
    store.add_pairwise(pid, rids[0], rids[1], "a", a, "human", item_id=item)
    assert store.judgement_count() == 1
    with pytest.raises(Conflict):
        store.add_pairwise(pid, rids[0], rids[1], "b", a, "human", item_id=item)  # a second one by a


def test_undo_last_returns_the_item(store):
    pid, rids = one_prompt(store, texts=("x", "y"))
    item = store.enqueue(pid, rids, overlap=1)
    aid, _ = store.add_annotator("ann", "human")
    assert store.undo_last(aid) is None
    store.next_item(aid)
    jid = store.add_pairwise(pid, rids[0], rids[1], "a", aid, "human", item_id=item, key="k")
    assert store.next_item(aid) is None and store.progress(aid) == {"done": 1, "total": 1}
    assert store.undo_last(aid) == jid
    assert store.judgement_count() == 0 and store.preference_pairs() == []
    assert store.progress(aid) == {"done": 0, "total": 1}
    assert store.next_item(aid).id == item  # back to the same annotator
    store.add_pairwise(pid, rids[0], rids[1], "b", aid, "human", item_id=item, key="k2")
    assert [(c.chosen, c.rejected) for c in store.preference_pairs()] == [("y", "x")]


# ---------------------------------------------------------------- agreement


def test_kappa_and_alpha_by_hand():
    # Two coders, four units, values in {-1, 0, +1}: agree on units 1, 3, 4.
    x, y = [1, 1, -1, 0], [1, -1, -1, 0]
    # p_o = 3/4; marginals x: +1 1/2, -1 1/4, 0 1/4; y: +1 1/4, -1 1/2, 0 1/4 -> p_e = 2/16 + 2/16 + 1/16 = 5/16
    # kappa = (12/16 - 5/16) / (11/16) = 7/11
    assert cohen_kappa(x, y) == pytest.approx(7 / 11)
    units = [list(p) for p in zip(x, y)]
    # Coincidences: o(+,+) = 2, o(-,-) = 2, o(0,0) = 2, o(+,-) = o(-,+) = 1; n+ = n- = 3, n0 = 2, n = 8.
    # nominal: D_o = 2/8, D_e = 2 (3*3 + 3*2 + 3*2) / (8*7) = 3/4 -> alpha = 1 - (1/4)/(3/4) = 2/3
    assert krippendorff_alpha(units, "nominal", (-1, 0, 1)) == pytest.approx(2 / 3)
    # ordinal (-1 < 0 < +1): d2(-,+) = (3+2+3 - 3)^2 = 25, d2(-,0) = d2(0,+) = (5 - 2.5)^2 = 6.25;
    # D_o = 2*25/8 = 6.25, D_e = 2 (9*25 + 6*6.25 + 6*6.25) / 56 = 600/56 -> alpha = 1 - 6.25*56/600 = 5/12
    assert krippendorff_alpha(units, "ordinal", (-1, 0, 1)) == pytest.approx(5 / 12)
    assert cohen_kappa([1, 1], [1, 1]) is None  # no variation: undefined
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 coders, 12 units, missing values.
    na = None
    data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, na, na, na], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, na, 3],
            [na, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, na], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, na]]
    ref_units = [[v for v in col if v is not None] for col in zip(*data)]
    assert krippendorff_alpha(ref_units, "nominal") == pytest.approx(0.743, abs=5e-4)


def test_store_agreement_and_timing_stats(tmp_path):
    clock = Clock()
    store = FeedbackStore(f"sqlite:///{tmp_path / 'agree.db'}", clock=clock)
    a, b = store.add_annotator("ann-a", "human")[0], store.add_annotator("ann-b", "human")[0]
    choices = {a: ["a", "a", "b", "tie"], b: ["a", "b", "b", "both_bad"]}  # the x, y of the hand-computed test
    for i in range(4):
        pid, rids = one_prompt(store, texts=(f"x{i}", f"y{i}"), prompt=f"P{i}")
        item = store.enqueue(pid, rids, overlap=2)
        for aid in (a, b):
            assert store.next_item(aid).id == item
            clock.t += 10 if aid == a else 30
            store.add_pairwise(pid, rids[0], rids[1], choices[aid][i], aid, "human", item_id=item)
    # A ranking outside the queue with nobody else on it does not enter agreement.
    pid, rids = one_prompt(store, texts=("u", "v", "w"), prompt="alone")
    store.add_ranking(pid, rids, a, "human")
    s = store.stats()
    assert s["annotators"]["ann-a"]["judgements"] == 5 and s["annotators"]["ann-b"]["judgements"] == 4
    assert s["annotators"]["ann-a"]["mean_seconds"] == pytest.approx(10)
    assert s["annotators"]["ann-b"]["mean_seconds"] == pytest.approx(30)  # from b's own lease, not a's
    ag = s["agreement"]
    assert (ag["items"], ag["units"], ag["kappa_pairs"]) == (4, 4, 1)
    assert ag["kappa_mean"] == pytest.approx(7 / 11)
    assert ag["alpha_nominal"] == pytest.approx(2 / 3) and ag["alpha_ordinal"] == pytest.approx(5 / 12)


def test_ranking_agreement_expands_to_pairs(store):
    # Rankings [u, v, w] and [u, w, v]: pair (u,v) +1/+1, (u,w) +1/+1, (v,w) +1/-1.
    # kappa: p_o = 2/3, p_e = 1 * 2/3 -> 0.  alpha: o(+,+) = 4, o(+,-) = o(-,+) = 1, n = 6;
    # D_o = 2/6, D_e = 2*5*1/30 = 1/3 -> 0.
    pid, (u, v, w) = one_prompt(store, texts=("u", "v", "w"))
    a, b = store.add_annotator("a", "simulated")[0], store.add_annotator("b", "simulated")[0]
    store.add_ranking(pid, [u, v, w], a, "simulated")
    store.add_ranking(pid, [u, w, v], b, "simulated")
    ag = store.stats()["agreement"]
    assert (ag["items"], ag["units"]) == (1, 3)
    assert ag["kappa_mean"] == pytest.approx(0) and ag["alpha_nominal"] == pytest.approx(0)
