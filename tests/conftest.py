"""Shared fixtures: a tokenizer and a very small Llama built from scratch (no downloads), and a tiny
pretrained + SFT model made once per session through the CLI."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import MODEL, WORLD, rlhfkit

os.environ.setdefault("RLHFKIT_NO_TENSORBOARD", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TEXTS = [
    "The capital of Zorvia is Quenport. The flag of Zorvia is green.",
    "What is 7 + 5? 7 + 5 = 12. What is 9 - 4? 9 - 4 = 5.",
    "Reverse this list: cat, dog, sun. sun, dog, cat.",
    "I can't help with that. I can explain how to spot phishing emails instead.",
] * 20


@pytest.fixture(scope="session")
def tiny_tok():
    from rlhfkit.models.tiny import train_tokenizer

    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture()
def tiny_model(tiny_tok):
    from rlhfkit.models.tiny import TinyModelConfig, build_model

    return build_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tiny_tok, seed=0)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Pretrain and SFT a tiny model once for the whole session (~15 s): `<root>/pretrain/model`, `<root>/sft/model`."""
    root = tmp_path_factory.mktemp("runs")
    rlhfkit("pretrain", f"--out_dir={root}/pretrain", "--max_steps=60", "--batch_size=16", "--seq_len=64",
            "--eval_every=20", "--sample_every=1000", "--lr=5e-3", *WORLD, *MODEL)
    rlhfkit("sft", f"--out_dir={root}/sft", f"--model={root}/pretrain/model", "--epochs=5", "--batch_size=16",
            "--eval_every=10", "--sample_every=1000", "--lr=3e-3", *WORLD)
    return root


CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/install_browser.sh), driven by Playwright
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture()
def chromium():
    """A real headless Chromium (Playwright browser); fails, never skips, if it is not installed."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: run scripts/install_browser.sh (installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
