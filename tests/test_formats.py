"""Every data format through every stage that reads it: each (format, stage) either gives the stage exactly the
tokens written out by hand below, or fails with a DataError that names the file and the row's format.

The stages' own loading and rendering functions are called (looked up on each stage module, so a stage that
changed how it reads its data is checked as it reads it now). Every format is written as a JSONL file, a JSON
array, a Parquet file and a `datasets` `save_to_disk` directory. No row may be read silently wrong.
"""

from __future__ import annotations

import json

import pytest

from rlhfkit.data.loaders import DataError
from rlhfkit.rollout import render_prompt  # how every sampling stage renders its prompts
from rlhfkit.stages import dpo, eval as eval_stage, generate, ppo, pretrain, rloo, rm, sft

SYS, USER = {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 7 + 5?"}
A12, A13 = {"role": "assistant", "content": "12."}, {"role": "assistant", "content": "13."}
HH = "\n\nHuman: What is 7 + 5?\n\nAssistant:"

# The tiny tokenizer's chat format (rlhfkit.models.tiny), by hand: what each stage must see.
P1 = "<|user|>What is 7 + 5?<|assistant|>"  # a one-message prompt, with the assistant cue
P2 = "<|system|>Answer briefly.<|user|>What is 7 + 5?<|assistant|>"  # the same with its system turn
R12, R13 = "12.<|eos|>", "13.<|eos|>"  # an assistant turn and its end

DEMO, PAIR, PROMPT, TEXT = "a demonstration", "a preference pair", "a prompt", "plain text"
KTO = "an unpaired preference"

# format -> (its row, what it is, the prompt it gives, and per family of stage what that family must get)
FORMATS = {
    "sft_prompt_completion": ({"prompt": "What is 7 + 5?", "completion": "12."}, DEMO, P1),
    "sft_conversational": ({"prompt": [SYS, USER], "completion": [A12]}, DEMO, P2),
    "sft_messages": ({"messages": [SYS, USER, A12]}, DEMO, P2),
    "lm_text": ({"text": "7 + 5 = 12."}, TEXT, None),
    "pair_explicit": ({"prompt": "What is 7 + 5?", "chosen": "12.", "rejected": "13."}, PAIR, P1),
    "pair_explicit_margin": ({"prompt": "What is 7 + 5?", "chosen": "12.", "rejected": "13.", "margin": 2.5}, PAIR, P1),
    "pair_conversational": ({"prompt": [SYS, USER], "chosen": [A12], "rejected": [A13]}, PAIR, P2),
    "pair_implicit_prompt": ({"chosen": [SYS, USER, A12], "rejected": [SYS, USER, A13]}, PAIR, None),
    "pair_hh_transcripts": ({"chosen": HH + " 12.", "rejected": HH + " 13."}, PAIR, None),
    "unpaired_kto": ({"prompt": "What is 7 + 5?", "completion": "13.", "label": False}, KTO, P1),
    "prompt_only": ({"prompt": "What is 7 + 5?"}, PROMPT, P1),
    "prompt_only_conversational": ({"prompt": [SYS, USER]}, PROMPT, P2),
    "prompt_messages": ({"messages": [SYS, USER]}, PROMPT, P2),
    "prompt_hh": ({"prompt": HH}, PROMPT, P1),
    "prompt_with_answer_column": ({"prompt": "What is 7 + 5?", "answer": "12"}, PROMPT, P1),
}
# Pairs whose prompt is implicit in the conversations: the prompt the preference stages must see.
IMPLICIT = {"pair_implicit_prompt": P2, "pair_hh_transcripts": P1}


def rendered(tok, prompt_text: str, trained_text: str) -> tuple[list[int], list[bool]]:
    """Hand-rendered (ids, mask): the prompt's tokens untrained, then the trained tokens."""
    p = tok(prompt_text, add_special_tokens=False)["input_ids"] if prompt_text else []
    r = tok(trained_text, add_special_tokens=False)["input_ids"]
    return p + r, [False] * len(p) + [True] * len(r)


def read_sft(path, tok):
    examples = sft.load_sft(path)
    return sft.render_examples(tok, [(e.prompt, e.completion) for e in examples], None, "sft")


def read_rm(path, tok):
    from rlhfkit.data.loaders import load_preferences  # as rm.train imports it

    pairs = load_preferences(path)
    ids_of = rm.render_all(tok, [[p] for p in pairs], None)  # as rm.train renders every answer, once
    rows = [(ids_of[(p.prompt, p.chosen)][0], ids_of[(p.prompt, p.rejected)][0]) for p in pairs]
    margins = rm.pair_margins(pairs, None)  # None: no pair has one
    return rows, None if margins is None else margins.tolist()


def read_dpo(path, tok):
    from rlhfkit.data.loaders import load_preferences  # as dpo.train imports it

    pairs = load_preferences(path)
    return dpo.render_examples(tok, [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs], None, "dpo")


def prompt_reader(prompts_of):
    def read(path, tok):
        prompts, columns = prompts_of(path)
        return [render_prompt(tok, p) for p in prompts], columns
    return read


READERS = {
    "sft": read_sft,
    "rm": read_rm,
    "dpo": read_dpo,
    "ppo": prompt_reader(ppo.prompts_and_columns),
    "rloo/grpo": prompt_reader(rloo.prompts_and_columns),  # one module, one data path for both
    "sample": prompt_reader(lambda p: (generate.collect_prompts(generate.Config(prompts=p)), {})),
    "eval": prompt_reader(lambda p: (eval_stage.prompt_list(p), {})),
    "pretrain": lambda path, tok: pretrain.read_corpus(path),
}


def expected(fmt: str, stage: str, tok):
    """What `stage` must get from a one-row file in `fmt`, or the format its error must name."""
    row, kind, prompt = FORMATS[fmt]
    if stage == "sft":
        if kind == DEMO:
            return [rendered(tok, prompt, R12)]
        return [rendered(tok, "", "7 + 5 = 12.<|eos|>")] if kind == TEXT else kind
    if stage in ("rm", "dpo"):
        if kind != PAIR:
            return kind
        prompt = IMPLICIT.get(fmt, prompt)
        if stage == "dpo":
            return [rendered(tok, prompt, R12), rendered(tok, prompt, R13)]
        margins = [row["margin"]] if "margin" in row else None  # a pair's margin reaches the Bradley-Terry loss
        return [(rendered(tok, prompt, R12)[0], rendered(tok, prompt, R13)[0])], margins
    if stage == "pretrain":
        return [row["text"]] if kind == TEXT else kind
    if prompt is None:  # no prompt column: plain text, and pairs whose prompt is inside the conversations
        return kind
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if stage in ("sample", "eval"):
        return [ids], {}
    extra = {k: [v] for k, v in row.items() if k not in ("prompt", "messages")}  # a reward may read any other column
    return [ids], extra


KINDS = ("jsonl", "json", "parquet", "dataset")  # a JSON array file; CSV cannot hold the message lists


def write(fmt: str, kind: str, root) -> str:
    row = FORMATS[fmt][0]
    if kind == "jsonl":
        path = root / f"{fmt}.jsonl"
        path.write_text(json.dumps(row) + "\n")
    elif kind == "json":
        path = root / f"{fmt}.json"
        path.write_text(json.dumps([row]))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = root / f"{fmt}.parquet"
        pq.write_table(pa.Table.from_pylist([row]), path)
    else:
        from datasets import Dataset

        path = root / f"{fmt}-dataset"
        Dataset.from_list([row]).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return {(fmt, kind): write(fmt, kind, root) for fmt in FORMATS for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stage", list(READERS))
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_through_every_stage(fmt, stage, kind, files, tiny_tok):
    path = files[(fmt, kind)]
    want = expected(fmt, stage, tiny_tok)
    if isinstance(want, str):
        with pytest.raises(DataError) as err:
            READERS[stage](path, tiny_tok)
        message = str(err.value)
        assert message.startswith(path), message  # names the file (and the row: `path:1:` or `path[0]`)
        assert want in message, message  # and the format the row is in
    else:
        got = READERS[stage](path, tiny_tok)
        assert got == want, (got, want)


def test_the_matrix_has_both_outcomes_for_every_stage(tiny_tok):
    """Guard against a vacuous matrix: every stage both reads some format and refuses another."""
    for stage in READERS:
        outcomes = {isinstance(expected(fmt, stage, tiny_tok), str) for fmt in FORMATS}
        assert outcomes == {True, False}, stage
