"""rlhfkit.data.loaders: JSONL / Parquet / saved datasets -> records, and errors that name file, line and field."""

from __future__ import annotations

import json
import re
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhfkit.data.loaders import (
    DataError,
    load_preferences,
    load_prompts,
    load_sft,
    read_records,
    write_jsonl,
)
from rlhfkit.data.records import Comparison, Example, Message

SFT_ROWS = [
    {"prompt": "What is 2 + 3?", "completion": "5", "id": 0},
    {"prompt": "Name a colour.", "completion": "Green.", "id": 1},
    {"prompt": "Reverse: a, b", "completion": "b, a", "id": 2},
]
SFT_RECORDS = [Example((Message("user", r["prompt"]),), r["completion"], {"id": r["id"]}) for r in SFT_ROWS]


def write_lines(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def write_rows(path, rows: list[dict]) -> str:
    return write_lines(path, [json.dumps(r) for r in rows])


def write_parquet(path, rows: list[dict]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def error_of(fn, *args) -> str:
    with pytest.raises(DataError) as e:
        fn(*args)
    return str(e.value)


# ---------------------------------------------------------------- formats


def test_jsonl_parquet_and_datasets_load_identical_records(tmp_path):
    import datasets

    jsonl = write_rows(tmp_path / "sft.jsonl", SFT_ROWS)
    parquet = write_parquet(tmp_path / "sft.parquet", SFT_ROWS)
    saved = str(tmp_path / "saved")
    datasets.Dataset.from_list(SFT_ROWS).save_to_disk(saved)
    saved_dict = str(tmp_path / "saved_dict")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(SFT_ROWS),
                          "test": datasets.Dataset.from_list(SFT_ROWS[:1])}).save_to_disk(saved_dict)

    for path in (jsonl, parquet, saved, saved_dict):
        assert load_sft(path) == SFT_RECORDS, path
    assert load_sft(saved_dict, split="test") == SFT_RECORDS[:1]
    assert "no split 'validation' (splits: train, test)" in error_of(load_sft, saved_dict, "validation")
    assert [loc for loc, _ in read_records(parquet)] == [f"{parquet}:row {i}" for i in range(3)]
    assert [loc for loc, _ in read_records(saved)][-1] == f"{saved}:row 2"


def test_directory_of_files_and_splits(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    write_rows(flat / "part-0.jsonl", SFT_ROWS[:2])
    write_parquet(flat / "part-1.parquet", SFT_ROWS[2:])
    assert load_sft(str(flat)) == SFT_RECORDS  # files in name order

    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    write_parquet(hub / "data" / "train-00000-of-00002.parquet", SFT_ROWS[:1])
    write_parquet(hub / "data" / "train-00001-of-00002.parquet", SFT_ROWS[1:2])
    write_rows(hub / "data" / "test.jsonl", SFT_ROWS[2:])
    assert load_sft(str(hub)) == SFT_RECORDS[:2]
    assert load_sft(str(hub), split="test") == SFT_RECORDS[2:]
    assert "no files for split 'eval' (found: test, train)" in error_of(load_sft, str(hub), "eval")

    write_rows(hub / "data" / "extra.jsonl", SFT_ROWS)
    assert "cannot tell which split 'data/extra.jsonl' belongs to" in error_of(load_sft, str(hub))


def test_sft_messages_and_conversational_forms(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}]},
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hey."}]},
        {"prompt": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
                    {"role": "user", "content": "C"}], "completion": "D", "meta": {"k": 1}},
    ]
    got = load_sft(write_rows(tmp_path / "m.jsonl", rows))
    assert got == [
        Example((Message("system", "Be brief."), Message("user", "Hi")), "Hello."),
        Example((Message("user", "Hi"),), "Hey."),
        Example((Message("user", "A"), Message("assistant", "B"), Message("user", "C")), "D", {"k": 1}),
    ]
    # Messages as Parquet list<struct> columns read the same.
    assert load_sft(write_parquet(tmp_path / "m.parquet", rows[:1])) == got[:1]


def test_preference_forms(tmp_path):
    user, good, bad = [{"role": "user", "content": "Q?"}], {"role": "assistant", "content": "A."}, {"role": "assistant", "content": "B."}
    rows = [
        {"prompt": "Q?", "chosen": "A.", "rejected": "B.", "source": "simulated", "annotator": "sim-1", "group": "g1"},
        {"prompt": user, "chosen": [good], "rejected": [bad]},  # TRL explicit conversational
        {"chosen": user + [good], "rejected": user + [bad]},  # TRL implicit prompt
        {"prompt": "Q?", "chosen": user + [good], "rejected": user + [bad], "score_chosen": 8.0},  # prompt repeated inside
    ]
    want = Comparison("Q?", "A.", "B.")
    got = load_preferences(write_rows(tmp_path / "p.jsonl", rows))
    assert got[0] == Comparison("Q?", "A.", "B.", source="simulated", annotator="sim-1", group="g1")
    assert got[1] == got[2] == want
    assert got[3] == Comparison("Q?", "A.", "B.", meta={"score_chosen": 8.0})


def test_preferences_round_trip_through_writer(tmp_path):
    pairs = [Comparison("Q?", "A.", "B.", source="ai", annotator="judge", group="g", meta={"margin": 2}),
             Comparison("R?", "C.", "D.")]
    path = str(tmp_path / "pairs.jsonl")
    assert write_jsonl(path, pairs) == 2
    assert load_preferences(path) == pairs
    examples = SFT_RECORDS[:2]
    write_jsonl(path, examples)  # overwrites in place
    assert load_sft(path) == examples


def test_prompts(tmp_path):
    rows = [
        {"prompt": "Plain?"},
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]},
        {"messages": [{"role": "user", "content": "U2"}, {"role": "assistant", "content": "drop me"}]},
    ]
    assert load_prompts(write_rows(tmp_path / "q.jsonl", rows)) == [
        (Message("user", "Plain?"),),
        (Message("system", "S"), Message("user", "U")),
        (Message("user", "U2"),),
    ]


def test_blank_lines_allowed_and_do_not_shift_line_numbers(tmp_path):
    good = json.dumps(SFT_ROWS[0])
    path = write_lines(tmp_path / "b.jsonl", ["", good, "   ", good, json.dumps({"prompt": "x", "completion": 3})])
    assert [loc for loc, _ in read_records(write_lines(tmp_path / "ok.jsonl", ["", good, "", good]))] == [
        f"{tmp_path / 'ok.jsonl'}:2", f"{tmp_path / 'ok.jsonl'}:4"]
    assert error_of(load_sft, path) == f"{path}:5: field 'completion': expected a string, got int"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("loader, row, message", [
    (load_sft, {"prompt": "x", "completion": 7}, "field 'completion': expected a string, got int"),
    (load_sft, {"prompt": "x", "completion": "  "}, "field 'completion': expected a non-empty string"),
    (load_sft, {"prompt": "x"}, "missing field 'completion' (or give 'messages' or 'text')"),
    (load_sft, {"completion": "y"}, "missing field 'prompt'"),
    (load_sft, {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
     "field 'messages[1].role': expected one of user, assistant, system, got 'bot'"),
    (load_sft, {"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]},
     "field 'messages[1].content': expected a string, got null"),
    (load_sft, {"messages": [{"role": "user", "content": "a"}]}, "field 'messages[0].role': the last message is the completion"),
    (load_sft, {"messages": [{"role": "assistant", "content": "a"}]}, "field 'messages': expected a user message before"),
    (load_sft, {"messages": []}, "field 'messages': expected a non-empty list of messages, got an empty list"),
    (load_sft, {"messages": [{"role": "user", "content": "a", "tool_calls": [1]}, {"role": "assistant", "content": "b"}]},
     "field 'messages[0]': unexpected key 'tool_calls'"),
    (load_sft, {"prompt": "x", "completion": [{"role": "user", "content": "y"}]}, "field 'completion[0].role': expected 'assistant'"),
    (load_preferences, {"prompt": "x", "chosen": "a"}, "missing field 'rejected'"),
    (load_preferences, {"prompt": "", "chosen": "a", "rejected": "b"}, "field 'prompt': expected a non-empty string"),
    (load_preferences, {"prompt": "x", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]},
     "field 'rejected': expected a string like 'chosen', got list"),
    (load_preferences, {"prompt": "x", "chosen": "a", "rejected": "b", "source": "crowd"},
     "field 'source': expected one of human, simulated, ai, got 'crowd'"),
    (load_preferences, {"prompt": "x", "chosen": "a", "rejected": "b", "group": 3}, "field 'group': expected a string, got int"),
    (load_preferences, {"prompt": "x", "chosen": "a", "rejected": "b", "meta": [1]}, "field 'meta': expected a mapping, got list"),
    (load_preferences, {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                        "rejected": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "b"}]},
     "field 'chosen': no prompt"),
    (load_preferences, {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     "field 'rejected': the same conversation as 'chosen'"),
    (load_preferences, {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                   {"role": "assistant", "content": "more"}],
                        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]},
     "field 'chosen': expected one assistant reply after the prompt, got 2 messages"),
    (load_prompts, {"text": "x"}, "missing field 'prompt'"),
    (load_prompts, {"prompt": 5}, "field 'prompt': expected a string, got int"),
    (load_prompts, {"prompt": []}, "field 'prompt': expected a non-empty list of messages, got an empty list"),
    (load_prompts, {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "field 'prompt[1].role': a prompt must end with a user message, got 'assistant'"),
])
def test_row_errors_name_file_line_and_field(tmp_path, loader, row, message):
    path = write_rows(tmp_path / "data.jsonl", [SFT_ROWS[0] | {"chosen": "a", "rejected": "b"}, row])
    err = error_of(loader, path)
    assert err.startswith(f"{path}:2: "), err
    assert message in err, err


def test_parquet_errors_name_the_row(tmp_path):
    path = write_parquet(tmp_path / "bad.parquet", [SFT_ROWS[0], {"prompt": "x", "completion": None, "id": 9}])
    assert error_of(load_sft, path) == f"{path}:row 1: field 'completion': expected a string, got null"


def test_file_level_errors(tmp_path):
    bad_json = write_lines(tmp_path / "j.jsonl", [json.dumps(SFT_ROWS[0]), '{"prompt": "x" "completion": "y"}'])
    assert error_of(load_sft, bad_json) == f"{bad_json}:2: invalid JSON (Expecting ',' delimiter at column 16)"
    not_object = write_lines(tmp_path / "l.jsonl", ["[1, 2]"])
    assert error_of(load_sft, not_object) == f"{not_object}:1: expected a JSON object, got list"
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n")):
        (tmp_path / name).write_text(text)
        assert error_of(load_sft, str(tmp_path / name)) == f"{tmp_path / name}: no records"
    empty_pq = write_parquet(tmp_path / "e.parquet", [])
    assert error_of(load_sft, empty_pq) == f"{empty_pq}: no records"
    assert error_of(load_sft, str(tmp_path / "nope.jsonl")).endswith("nope.jsonl: no such file or directory")
    (tmp_path / "x.csv").write_text("a,b\n")
    assert error_of(load_sft, str(tmp_path / "x.csv")) == f"{tmp_path / 'x.csv'}: no records"
    (tmp_path / "x.tsv").write_text("a\tb\n")
    assert "unsupported file type" in error_of(load_sft, str(tmp_path / "x.tsv"))
    (tmp_path / "fake.parquet").write_text("not parquet")
    assert "not a readable Parquet file" in error_of(load_sft, str(tmp_path / "fake.parquet"))


def test_write_jsonl_is_atomic(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(str(path), [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("generator failed half way")

    with pytest.raises(RuntimeError):
        write_jsonl(str(path), rows())
    assert path.read_text() == '{"a": 1}\n'  # the old file is intact
    assert os.listdir(tmp_path) == ["out.jsonl"]  # and no temp file is left behind


# ---------------------------------------------------------------- rows that were accepted silently or crashed deep inside
PAIR = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}
BAD_LINES = [  # (line 2 of a file, what the error must say)
    ('{"prompt": "Say hi.", "chosen": "Hi!", "chosen": "Hello", "rejected": "No."}', "key 'chosen' given twice"),
    ('{"prompt": "Say hi.", "chosen": "Hi \\ud800", "rejected": "No."}', "field 'chosen': contains a lone surrogate"),
    ('{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Hi!"}', "field 'rejected': identical to 'chosen'"),
    ('{"prompt": "Say hi.", "messages": [{"role": "user", "content": "x"}], "chosen": "a", "rejected": "b"}', None),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
]


@pytest.mark.parametrize("line,message", BAD_LINES, ids=["duplicate key", "lone surrogate", "chosen == rejected",
                                                         "prompt and messages", "deep nesting"])
def test_bad_rows_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(PAIR), line])
    with pytest.raises(DataError) as e:
        load_preferences(path)
    assert str(e.value).startswith(f"{path}:2:"), str(e.value)[:300]
    if message:
        assert message in str(e.value), str(e.value)[:300]


def test_both_messages_and_prompt_is_an_error_for_sft_and_prompts(tmp_path):
    row = {"prompt": "x", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
           "completion": "y"}
    for load in (load_sft, load_prompts):
        with pytest.raises(DataError, match=r":1: both 'messages' and 'prompt' given"):
            load(write_rows(tmp_path / "x.jsonl", [row]))


def test_a_damaged_parquet_page_names_the_file(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{**PAIR, "chosen": f"Hi {i}!" * 50} for i in range(2000)]), str(path),
                   row_group_size=500, compression="none")
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 2000):  # the middle of the data pages, footer intact
        data[i] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=str(path)):
        load_preferences(str(path))


def fuzz_outcome(path) -> str:
    """"loaded" (well-formed pairs) or "error" (a DataError naming the file); any other outcome fails the test."""
    try:
        pairs = load_preferences(str(path))
    except DataError as e:
        assert str(e).startswith(str(path)), str(e)[:300]
        return "error"
    assert all(isinstance(p.chosen, str) and isinstance(p.rejected, str) and p.chosen != p.rejected for p in pairs)
    assert all(c.encode("utf-8") for p in pairs for c in (p.chosen, p.rejected))
    return "loaded"


def test_fuzzed_jsonl_rows_load_or_fail_naming_the_file(tmp_path):
    """Random byte-level mutations of valid rows: every outcome is a load or a DataError naming the file and
    line; never another exception, never a record with a field the row did not have right."""
    import random

    rng = random.Random(0)
    good = [json.dumps({**PAIR, "chosen": f"Hi {i}!"}) for i in range(5)]
    alphabet = list('{}[]":,\\ue0x01nulltrue') + ["\\ud800", "\\u00e9", "\x00", "\xff"]
    outcomes = {"loaded": 0, "error": 0}
    for trial in range(300):
        lines = list(good)
        i = rng.randrange(len(lines))
        chars = list(lines[i])
        for _ in range(rng.randint(1, 4)):
            op, at = rng.random(), rng.randrange(len(chars) + 1)
            if op < 0.4:
                chars.insert(at, rng.choice(alphabet))
            elif op < 0.8 and chars:
                del chars[min(at, len(chars) - 1)]
            elif chars:
                chars[min(at, len(chars) - 1)] = rng.choice(alphabet)
        lines[i] = "".join(chars)
        path = tmp_path / f"f{trial}.jsonl"
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
        outcomes[fuzz_outcome(path)] += 1
    assert outcomes["loaded"] > 10 and outcomes["error"] > 100, outcomes


@pytest.mark.parametrize("content,message", [
    ("{not json", "not a readable dataset_dict.json"),
    ('["train"]', "expected a JSON object with a 'splits' list, got list"),
    ('{"splits": "train"}', "field 'splits': expected a list of split names, got str"),
    ('{"splits": [1, 2]}', "field 'splits': expected a list of split names"),
    (b"\xff\xfe{}", "not a readable dataset_dict.json"),
])
def test_a_malformed_dataset_dict_json_names_the_file(tmp_path, content, message):
    import datasets

    saved = tmp_path / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(SFT_ROWS)}).save_to_disk(str(saved))
    (saved / "dataset_dict.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=re.escape(f"{saved / 'dataset_dict.json'}: {message}")):
        load_sft(str(saved))


def test_fuzzed_parquet_files_load_or_fail_naming_the_file(tmp_path):
    """Random byte flips and cuts anywhere in a valid Parquet file (footer, page headers, data): every
    outcome is a load of well-formed records or a DataError naming the file, never another exception."""
    import random

    rng = random.Random(1)
    clean = tmp_path / "clean.parquet"
    pq.write_table(pa.Table.from_pylist([{**PAIR, "chosen": f"Hi {i}!"} for i in range(40)]), str(clean), row_group_size=10)
    good = clean.read_bytes()
    outcomes = {"loaded": 0, "error": 0}
    for trial in range(150):
        data = bytearray(good)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]  # truncated
        for _ in range(rng.randint(1, 8)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        path = tmp_path / f"f{trial}.parquet"
        path.write_bytes(bytes(data))
        outcomes[fuzz_outcome(path)] += 1
    assert outcomes["error"] > 20, outcomes


@pytest.mark.parametrize("stage,args,what", [
    ("sft", ["--model=unused"], "demonstrations"),
    ("rm", ["--model=unused"], "rankings"),
    ("dpo", ["--policy=unused"], "pairs"),
])
def test_too_few_rows_is_an_error_before_any_model_loads(tmp_path, capsys, stage, args, what):
    """One row leaves nothing to train on once one is held out (was `max() arg is an empty sequence` after
    the model loaded). The model path does not even exist: the data is checked first."""
    from rlhfkit.cli import main

    row = {"prompt": "Say hi.", "completion": "Hi!"} if stage == "sft" else PAIR
    path = write_rows(tmp_path / "one.jsonl", [row])
    assert main([stage, f"--data={path}", f"--out_dir={tmp_path / 'out'}", *args]) == 2
    err = capsys.readouterr().err
    assert f"{path}: 1 {what}" in err and "too few" in err and "Traceback" not in err, err


# ---------------------------------------------------------------- formats people have: HH-RLHF, KTO rows, margins


HH = "\n\nHuman: What is 2 + 2?\n\nAssistant: 4.\n\nHuman: And 3 + 3?\n\nAssistant:"


def test_hh_rlhf_transcripts_become_conversations_not_one_user_message(tmp_path):
    from rlhfkit.data.records import Message

    turns = (Message("user", "What is 2 + 2?"), Message("assistant", "4."), Message("user", "And 3 + 3?"))
    assert load_prompts(write_rows(tmp_path / "p.jsonl", [{"prompt": HH}])) == [turns]
    (pair,) = load_preferences(write_rows(tmp_path / "hh.jsonl", [{"chosen": HH + " 6.", "rejected": HH + " 7."}]))
    assert (pair.prompt, pair.chosen, pair.rejected) == (turns, "6.", "7.")  # the hub's implicit-prompt strings
    (ex,) = load_sft(write_rows(tmp_path / "sft.jsonl", [{"prompt": HH, "completion": "6."}]))
    assert ex.prompt == turns
    plain = "What is\n\nHuman nature?"  # not a transcript: stays one user message
    assert load_prompts(write_rows(tmp_path / "q.jsonl", [{"prompt": plain}]))[0][0].content == plain


def test_unpaired_kto_rows_are_not_trained_as_demonstrations(tmp_path):
    path = write_rows(tmp_path / "kto.jsonl", [{"prompt": "q", "completion": "a", "label": True},
                                               {"prompt": "q", "completion": "bad", "label": False}])
    with pytest.raises(DataError, match=r"kto.jsonl:1: field 'label': a \(prompt, completion, label\) row is an unpaired preference"):
        load_sft(path)


def test_a_margin_column_reaches_the_reward_model_loss(tmp_path):
    import torch

    from rlhfkit.stages.rm import pair_margins

    pairs = load_preferences(write_rows(tmp_path / "m.jsonl", [{**PAIR, "margin": 2}, {**PAIR, "chosen": "Hey"}]))
    assert [p.meta.get("margin") for p in pairs] == [2, None]
    assert pair_margins(pairs, None).tolist() == [2.0, 0.0]
    assert pair_margins(pairs, 0.5).tolist() == [2.0, 0.5]
    assert pair_margins(pairs[1:], None) is None  # no margins anywhere: the plain Bradley-Terry loss
    assert isinstance(pair_margins(pairs, None), torch.Tensor)
    for bad in ("2", True, float("nan")):
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps({**PAIR, "margin": bad}) + "\n")
        with pytest.raises(DataError, match=r"bad.jsonl:1: field 'margin': expected a finite number"):
            load_preferences(str(path))


def test_json_arrays_json_lines_and_csv_load_the_same_records(tmp_path):
    import csv

    as_array = tmp_path / "sft.json"
    as_array.write_text(json.dumps(SFT_ROWS, indent=2))
    as_lines = write_rows(tmp_path / "lines.json", SFT_ROWS)  # JSON Lines under a .json name (as the hub has them)
    with open(tmp_path / "sft.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "completion", "id"])
        w.writeheader()
        w.writerows(SFT_ROWS)
    for path in (str(as_array), as_lines):
        assert load_sft(path) == SFT_RECORDS, path
    from_csv = load_sft(str(tmp_path / "sft.csv"))  # every CSV value is a string
    assert [(e.prompt, e.completion, e.meta) for e in from_csv] == [(e.prompt, e.completion, {"id": str(e.meta["id"])})
                                                                   for e in SFT_RECORDS]
    assert [loc for loc, _ in read_records(str(as_array))][-1] == f"{as_array}:row {len(SFT_ROWS) - 1}"
    assert [loc for loc, _ in read_records(str(tmp_path / "sft.csv"))][0] == f"{tmp_path / 'sft.csv'}:2"  # header is line 1
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "a", "completion": "b"},\n 5]')
    assert error_of(load_sft, str(bad)) == f"{bad}:row 1: expected a JSON object, got int"
    bad.write_text('[{"prompt": "a",\n "completion": }]')
    assert error_of(load_sft, str(bad)).startswith(f"{bad}: invalid JSON (Expecting value at line 2 column")
    conv = tmp_path / "conv.csv"
    with open(conv, "w", newline="") as f:
        csv.writer(f).writerows([["messages"], [json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}])]])
    assert [(e.prompt, e.completion) for e in load_sft(str(conv))] == [((Message("user", "Hi"),), "Hello.")]
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("prompt,completion\nq,a\nq,a,extra\n")
    assert error_of(load_sft, str(ragged)) == f"{ragged}:3: more cells than the header's 2 columns"
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "train.csv").write_bytes((tmp_path / "sft.csv").read_bytes())
    (tmp_path / "dir" / "test.json").write_text(json.dumps(SFT_ROWS[:1]))
    assert load_sft(str(tmp_path / "dir")) == from_csv and load_sft(str(tmp_path / "dir"), "test") == SFT_RECORDS[:1]


def test_split_heldout_takes_an_eval_split_or_a_seeded_fraction():
    from rlhfkit.data.loaders import split_heldout

    held, train = split_heldout(list(range(20)), 0.1, 3, "d", "rows")
    assert len(held) == 2 and sorted(held + train) == list(range(20))
    assert split_heldout(list(range(20)), 0.1, 3, "d", "rows") == (held, train)  # seeded
    held, train = split_heldout(list(range(20)), 0.1, 3, "d", "rows", heldout=["x", "y", "z"])
    assert held == ["x", "y", "z"] and sorted(train) == list(range(20))  # an eval split leaves all rows to train on
    with pytest.raises(DataError, match="d: 1 rows: too few to hold out 1"):
        split_heldout([0], 0.1, 3, "d", "rows")


def test_sft_reads_the_split_it_is_told_and_holds_out_the_eval_split(tmp_path, capsys, monkeypatch):
    from rlhfkit.config import load_config
    from rlhfkit.stages import sft
    from tests.test_user_model import user_data, user_model

    user_model(str(tmp_path / "base"))
    user_data(str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "sft.jsonl")]
    (tmp_path / "ds").mkdir()
    write_rows(tmp_path / "ds" / "train.jsonl", rows[:100])
    write_rows(tmp_path / "ds" / "validation.jsonl", rows[100:110])
    monkeypatch.setenv("RLHFKIT_NO_TENSORBOARD", "1")
    cfg = load_config(sft.Config, None, [f"--model={tmp_path}/base", f"--data={tmp_path}/ds", f"--out_dir={tmp_path}/sft",
                                         "--eval_split=validation", "--epochs=0.2", "--batch_size=10", "--threads=1"])
    sft.train(cfg)
    assert "[sft] 100 demonstrations (10 held out)" in capsys.readouterr().out


def test_a_text_corpus_that_is_not_utf8_names_file_and_line(tmp_path):
    from rlhfkit.data.packing import read_corpus

    path = tmp_path / "corpus.txt"
    path.write_bytes(b"first document\n\nsecond\n\xff\xfe third\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:4: invalid UTF-8")):
        read_corpus(str(path))
    path.write_bytes(b"\n\n  \n")
    with pytest.raises(DataError, match="no documents"):
        read_corpus(str(path))
    with pytest.raises(DataError, match="cannot read it"):
        read_corpus(str(tmp_path / "missing.txt"))
