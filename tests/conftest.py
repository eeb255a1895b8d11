"""Shared fixtures: a tokenizer and a very small Llama built from scratch (no downloads), and a tiny
pretrained + SFT model made once per session through the CLI."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import MODEL, WORLD, rlhfkit

os.environ.setdefault("RLHFKIT_NO_TENSORBOARD", "1")

# Tiers: `pytest -m "not slow"` is the inner loop (math, config, data, store, web app: under 2 minutes);
# the full suite (CI, README) adds every test that trains through the CLI, drives Chromium or loads a server.
SLOW_FIXTURES = {"tiny_runs": "slow", "world_files": "slow", "chromium": "browser"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, marker in SLOW_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
                item.add_marker("slow")
# Under pytest-xdist (`-n 2`, the README's command) every worker runs one torch thread: two workers of two
# threads each on a 2-core machine would spin against each other.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))

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
def world_files(tmp_path_factory):
    """The tiny world exported as ordinary data files (`rlhfkit world export`): corpus, sft, prompts, pairs."""
    root = tmp_path_factory.mktemp("world")
    rlhfkit("world", "export", f"--out_dir={root}", *WORLD)
    return root


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, world_files):
    """Pretrain and SFT a tiny model once for the whole session (~15 s) on the exported tiny world:
    `<root>/pretrain/model`, `<root>/sft/model`; `<root>/world` holds the world's files."""
    root = tmp_path_factory.mktemp("runs")
    os.symlink(world_files, root / "world")
    rlhfkit("pretrain", f"--out_dir={root}/pretrain", f"--corpus={world_files}/corpus.jsonl", "--max_steps=60",
            "--batch_size=16", "--seq_len=64", "--eval_every=20", "--sample_every=1000", "--lr=5e-3", *MODEL)
    rlhfkit("sft", f"--out_dir={root}/sft", f"--model={root}/pretrain/model", f"--data={world_files}/sft.jsonl",
            "--epochs=5", "--batch_size=16", "--eval_every=10", "--sample_every=1000", "--lr=3e-3")
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
