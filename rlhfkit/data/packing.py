"""Packing documents into fixed-length training rows (pretraining, PPO-ptx)."""

from __future__ import annotations

from typing import Sequence

import torch


def pack_documents(tokenizer, docs: Sequence[str], seq_len: int) -> torch.Tensor:
    """Tokenize `docs`, join them with EOS after each, and cut into rows: (N, seq_len) long.

    The tail that does not fill a row is dropped (at most seq_len - 1 tokens).
    """
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for start in range(0, len(docs), 1024):
        for ids in tokenizer(list(docs[start : start + 1024]), add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"corpus too small: {len(stream)} tokens for rows of {seq_len}")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def epoch_batches(n_rows: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Row indices of the batch at `step`: a fresh seeded permutation per epoch.

    A pure function of (step, seed), so a resumed run sees exactly the data an
    uninterrupted one would have, with no iterator state to save.
    """
    per_epoch = max(1, n_rows // batch_size)
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n_rows, generator=g)
    return perm[k * batch_size : (k + 1) * batch_size]


def read_corpus(path: str) -> list[str]:
    """Documents from a .txt file (blank-line separated) or a JSONL/Parquet/HF dataset with a `text` field."""
    from rlhfkit.data.loaders import DataError, read_records

    if path.endswith(".txt"):
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise DataError(f"{path}: cannot read it ({e.strerror})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise DataError(f"{path}:{line}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
        docs = [d.strip() for d in text.split("\n\n") if d.strip()]
        if not docs:
            raise DataError(f"{path}: no documents")
        return docs

    docs = []
    for loc, row in read_records(path, split="train"):
        text = row.get("text")
        if text is None:
            from rlhfkit.data.loaders import row_format

            raise DataError(f"{loc}: missing field 'text' (a corpus is documents in a `text` field); the row is {row_format(row)}")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{loc}: field 'text': expected a non-empty string, got {type(text).__name__}")
        docs.append(text)
    return docs
