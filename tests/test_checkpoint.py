"""Checkpoint integrity: a damaged newest checkpoint is skipped for the newest intact one (no training)."""

from __future__ import annotations

import os

import pytest
import torch

from rlhfkit import checkpoint
from rlhfkit.optim import DivergedError


def save_two(out_dir, model, tok) -> list[str]:
    """Checkpoints at steps 1 and 2 (different weights and optimiser state)."""
    paths = []
    for step in (1, 2):
        with torch.no_grad():
            next(model.parameters()).add_(0.01)
        paths.append(checkpoint.save_checkpoint(str(out_dir), step, {"policy": model}, {"optimizer": {"step": step}}, tok))
    return paths


def test_intact_checkpoints_verify_and_the_newest_is_used(tmp_path, tiny_model, tiny_tok):
    old, new = save_two(tmp_path, tiny_model, tiny_tok)
    assert checkpoint.damage(old) is None and checkpoint.damage(new) is None
    assert checkpoint.latest_checkpoint(str(tmp_path)) == new
    assert checkpoint.load_state(new)["step"] == 2


@pytest.mark.parametrize("harm", ["flip", "truncate", "delete_state", "delete_weights"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_intact_one(tmp_path, tiny_model, tiny_tok, capsys, harm):
    """64 flipped bytes in state.pt loaded silently before; a truncated one crashed every rerun; a missing state.pt
    restarted from step 0. Each now resumes from the intact step-1 checkpoint, with a warning naming the damage."""
    old, new = save_two(tmp_path, tiny_model, tiny_tok)
    state, weights = os.path.join(new, "state.pt"), os.path.join(new, "policy", "model.safetensors")
    if harm == "flip":
        data = bytearray(open(state, "rb").read())
        for i in range(100, 164):
            data[i] ^= 0xFF
        open(state, "wb").write(bytes(data))
    elif harm == "truncate":
        os.truncate(state, os.path.getsize(state) // 2)
    else:
        os.remove(state if harm == "delete_state" else weights)
    assert checkpoint.damage(new) is not None
    assert checkpoint.latest_checkpoint(str(tmp_path)) == old
    assert "skipping" in capsys.readouterr().out
    assert checkpoint.load_state(old)["step"] == 1


def test_no_intact_checkpoint_is_an_error_not_a_silent_restart(tmp_path, tiny_model, tiny_tok):
    for path in save_two(tmp_path, tiny_model, tiny_tok):
        os.remove(os.path.join(path, "state.pt"))
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint"):
        checkpoint.latest_checkpoint(str(tmp_path))
    assert checkpoint.latest_checkpoint(str(tmp_path / "elsewhere")) is None  # no checkpoints at all: a fresh start


def test_non_finite_weights_are_never_saved(tmp_path, tiny_model, tiny_tok):
    with torch.no_grad():
        next(tiny_model.parameters())[0, 0] = float("nan")
    with pytest.raises(DivergedError, match="not finite"):
        checkpoint.save_checkpoint(str(tmp_path), 1, {"policy": tiny_model}, {}, tiny_tok)
    with pytest.raises(DivergedError):
        checkpoint.save_model("sft", tiny_model, tiny_tok, str(tmp_path / "model"))
    assert not os.path.exists(tmp_path / "model") and not os.path.exists(tmp_path / "checkpoints" / "latest")


def test_resume_drops_later_rows_and_a_torn_line_and_a_fresh_start_drops_all(tmp_path, tiny_model, tiny_tok):
    import json

    (old, _) = save_two(tmp_path, tiny_model, tiny_tok)
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n" for s in range(4)) + '{"step": 4, "lo')
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    opt.load_state_dict = lambda state: None  # the saved stand-in state is not an SGD state
    start, _ = checkpoint.resume(old, str(tmp_path), opt, "test")
    assert start == 1 and [json.loads(x)["step"] for x in log.read_text().splitlines()] == [0, 1]
    log.write_text('{"step": 0}\n{"step": 1}\n')
    assert checkpoint.resume(None, str(tmp_path), opt, "test")[0] == 0
    assert log.read_text() == ""  # a run restarted from 0 logs every step once
