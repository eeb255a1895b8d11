"""Loading any Hugging Face causal LM from a local directory, the same way for all stages.

The built-in tiny models and a user's own model (a local copy of a hub model)
go through the same code: `AutoTokenizer` + `AutoModelForCausalLM`, never a
network call (`local_files_only=True`).
"""

from __future__ import annotations

import os

PAD_FALLBACK = "<|pad|>"


def pick_device(name: str = "auto"):
    import torch

    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name, device):
    """`name`: a torch dtype, its name, or auto: fp32 on CPU (bf16 matmuls are 100x slower on many CPUs), bf16 on GPUs
    that have it."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def disable_dropout(model) -> None:
    """RLHF practice (Ziegler et al. 2019; Huang et al. 2024): no dropout in any model,
    so logprobs computed at rollout time and at training time agree."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=os.path.isdir(path))
    tok.padding_side = "left"
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        # A distinct PAD is required: with PAD == EOS a padded batch can't tell
        # "response ended" from "padding", a classic source of RLHF bugs.
        tok.add_special_tokens({"pad_token": PAD_FALLBACK})
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer at {path} has no eos_token; set one in its tokenizer_config.json")
    from rlhfkit.data.chat import end_of_turn_id

    if (turn_end := end_of_turn_id(tok)) != tok.eos_token_id:
        print(f"[rlhfkit] {path}: the chat template ends assistant turns with {tok.convert_ids_to_tokens(turn_end)!r}, "
              f"not eos_token {tok.eos_token!r}: responses are trained to end with the template's token, and "
              "generation stops on either", flush=True)
    return tok


def load_causal_lm(path: str, device: str = "auto", dtype: str = "auto", tokenizer=None):
    """Return `(model, tokenizer)`: dropout off, PAD != EOS, embeddings resized if PAD was added."""
    from transformers import AutoModelForCausalLM

    dev = pick_device(device)
    tok = tokenizer or load_tokenizer(path)
    from rlhfkit.models.lora import merged_if_adapter

    def load(p):
        return AutoModelForCausalLM.from_pretrained(p, dtype=pick_dtype(dtype, dev), local_files_only=os.path.isdir(p))

    model = merged_if_adapter(path, load) or load(path)  # a LoRA stage's unmerged output: its base with the adapter merged
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    disable_dropout(model)
    return model.to(dev), tok
