"""Gradient accumulation equals a bigger batch: a step of 8 in 4 micro-batches of 2 logs the same loss and
gradient norm as one forward of 8, and ends at the same weights (losses are divided by the global batch's
token / pair count, so micro-batches are shares of one mean). Stages run in-process on the tiny model."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config import load_config
from tests.helpers import metrics
from tests.test_lora import demos, pairs, write_jsonl
from tests.conftest import TEXTS


def weights(path: str, scalar: bool = False) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if scalar else AutoModelForCausalLM
    return cls.from_pretrained(path).state_dict()


def run(stage: str, tmp_path, base: str, name: str, micro: str | None) -> str:
    """One short run of `stage` with a global batch of 8, in micro-batches of `micro` (None: one forward)."""
    from rlhfkit.stages import pretrain, rm, sft

    # lr 1e-4: Adam divides by sqrt(v), so a coordinate whose gradient is ~0 (an unused token's embedding row)
    # moves by up to lr whatever its sign, and 1e-7 float noise there would show as lr-sized weight differences
    common = [f"out_dir={tmp_path}/{name}", "lr=1e-4", "warmup_steps=0", "eval_every=1000", "grad_clip=100"]
    if stage == "sft":
        cfg = load_config(sft.Config, overrides=[*common, f"model={base}", f"data={demos(tmp_path)}", "epochs=1",
                                                 "batch_size=8", "heldout_fraction=0.2", "sample_every=1000",
                                                 *([f"micro_batch_size={micro}"] if micro else [])])
        return sft.train(cfg)
    if stage == "rm":
        cfg = load_config(rm.Config, overrides=[*common, f"model={base}", f"data={pairs(tmp_path, 24)}", "epochs=2",
                                                "batch_groups=8", "heldout_fraction=0.25", "evaluate=false",
                                                *([f"micro_batch_groups={micro}"] if micro else [])])
        return rm.train(cfg)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in TEXTS])
    cfg = load_config(pretrain.Config, overrides=[*common, f"corpus={corpus}", "max_steps=3", "batch_size=8", "seq_len=16",
                                                  "heldout_docs=8", "sample_every=1000", "model.hidden_size=32",
                                                  "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
                                                  "model.vocab_size=300", *([f"micro_batch_size={micro}"] if micro else [])])
    return pretrain.train(cfg)


@pytest.mark.slow  # trains each stage twice
@pytest.mark.parametrize("stage", ["sft", "rm", "pretrain"])
def test_four_micro_batches_of_two_equal_one_batch_of_eight(tmp_path, stage, tiny_model, tiny_tok):
    base = tmp_path / "base"
    tiny_model.save_pretrained(base)
    tiny_tok.save_pretrained(base)
    big = run(stage, tmp_path, str(base), "one_by_8", None)
    small = run(stage, tmp_path, str(base), "four_by_2", "2")
    rows_big, rows_small = metrics(f"{tmp_path}/one_by_8"), metrics(f"{tmp_path}/four_by_2")
    steps = [r for r in rows_big if "train/loss" in r]
    assert len(steps) >= 2
    for a, b in zip(steps, [r for r in rows_small if "train/loss" in r]):
        for key in ("train/loss", "train/grad_norm"):
            # 2e-6: float rounding of other layouts (the RM packs a ranking's answers with its prompt once per
            # micro-batch, so the packed rows differ) and the log's 6 digits
            assert b[key] == pytest.approx(a[key], rel=2e-6, abs=1e-7), (a["step"], key)
    first, wa, wb = weights(str(base), stage == "rm") if stage != "pretrain" else None, weights(big, stage == "rm"), \
        weights(small, stage == "rm")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), (k, (wa[k] - wb[k]).abs().max().item())
    if first is not None:  # the steps moved the weights by far more than the tolerance
        assert max((wa[k] - first[k]).abs().max().item() for k in wa if k in first and "score" not in k) > 1e-4
