"""File digests remembered across runs (`rlhfkit.files.file_digest`): a big input is read once for its digest, not at
every stage start, and read again as soon as it is written; checkpoints still read their own bytes."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from rlhfkit import checkpoint, files


@pytest.fixture()
def memo(tmp_path, monkeypatch):
    """Every file counts as big; the memory lives under tmp_path."""
    monkeypatch.setattr(files, "MEMO_MIN", 1)
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "sha256.json"


def test_a_digest_is_remembered_and_the_file_not_read_again(tmp_path, memo, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w" * 1000)
    assert files.file_digest(str(weights)) == hashlib.sha256(b"w" * 1000).hexdigest()
    assert str(weights.resolve()) in json.loads(memo.read_text())

    def no_reading(path):
        raise AssertionError(f"read {path}")

    monkeypatch.setattr(files, "sha256_file", no_reading)
    assert files.file_digest(str(weights)) == hashlib.sha256(b"w" * 1000).hexdigest()
    assert files.content_hash([str(tmp_path / "model.safetensors")])  # the run identity's digest takes it too


def test_a_file_written_since_is_read_again_even_at_the_same_size_and_time(tmp_path, memo):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"a" * 1000)
    files.file_digest(str(data))
    st = os.stat(data)
    data.write_bytes(b"b" * 1000)  # same size,
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # and its modification time set back
    assert files.file_digest(str(data)) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_small_files_and_an_unwritable_memory_still_give_the_digest(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("RLHFKIT_CACHE", str(blocker))  # makedirs under a file fails
    monkeypatch.setattr(files, "MEMO_MIN", 1)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 100)
    assert files.file_digest(str(big)) == hashlib.sha256(b"x" * 100).hexdigest()
    monkeypatch.setattr(files, "MEMO_MIN", 1 << 20)
    assert files.file_digest(str(big)) == hashlib.sha256(b"x" * 100).hexdigest()  # small: read, never remembered


def test_checkpoints_verify_their_own_bytes_not_the_memory(tmp_path, memo, tiny_model, tiny_tok):
    """A remembered digest that no longer matches the bytes (a disk that decayed without a write) must not make a
    checkpoint look intact: `damage` reads every file."""
    ckpt = checkpoint.save_checkpoint(str(tmp_path / "run"), 1, {"policy": tiny_model}, {"optimizer": {"step": 1}}, tiny_tok)
    state = os.path.join(ckpt, "state.pt")
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps({os.path.realpath(state): [files._stamp(state), "0" * 64]}))
    assert files.file_digest(state) == "0" * 64  # the memory answers for the stamp it holds
    assert checkpoint.damage(ckpt) is None  # and the checkpoint check ignores it
