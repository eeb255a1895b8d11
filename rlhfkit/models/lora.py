"""LoRA adapters (Hu et al. 2021) through peft, the same way for every stage.

With `lora.r > 0` a stage trains low-rank adapters on the frozen base weights
(and, for a scalar model, its `score` head) instead of every weight:
- `trainable` loads the base, adds fresh adapters, or, when resuming, the
  checkpoint's adapters (a checkpoint holds the adapters alone, in peft's format);
- `reference` is the frozen reference of DPO, PPO, RLOO and GRPO: with adapters
  it is the policy itself with its adapters disabled (`disable_adapter()`), so
  one copy of the base weights serves both; without, a second, frozen model;
- `save_final` writes `<out_dir>/adapter` (loads with `PeftModel.from_pretrained`)
  and, with `merge` (the default), `<out_dir>/model` as an ordinary merged HF model,
  so later stages and other tools load it with `AutoModelForCausalLM`. Without
  `merge`, `<out_dir>/model` is the adapter again, and rlhfkit's loaders merge
  such a directory onto its base (`merged_if_adapter`).
peft wraps the HF model; `hf_model` is the HF model inside (the same object, its
linear layers now LoRA layers), for code that reaches into a model's parts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class LoraSettings:
    r: int = 0  # adapter rank; 0: LoRA off (every weight trains)
    alpha: float = 16.0  # adapter scale numerator: updates are scaled by alpha / r
    dropout: float = 0.0  # dropout on the adapters' input (RLHF keeps 0: rollout and training logprobs must agree)
    target_modules: str = "all-linear"  # peft target_modules: all-linear, or comma-separated module names (q_proj,v_proj)
    merge: bool = True  # also save <out_dir>/model as the merged HF model (false: <out_dir>/model holds the adapter alone)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def hf_model(model):
    """The Hugging Face model inside a peft wrapper (its linear layers are the LoRA layers); any other model as is."""
    return model.get_base_model() if is_peft(model) else model


def apply(model, settings: LoraSettings, task: str = "CAUSAL_LM"):
    """`model` with fresh LoRA adapters (base weights frozen), or `model` itself when `settings.r` is 0.
    task SEQ_CLS (a reward model or critic) also trains the `score` head, saved with the adapters."""
    if not settings.r:
        return model
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules if settings.target_modules == "all-linear" else \
        [m.strip() for m in settings.target_modules.split(",") if m.strip()]
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets,
                        task_type=task, modules_to_save=["score"] if task == "SEQ_CLS" else None)
    base = model.name_or_path
    model = get_peft_model(model, config)
    if base and os.path.isdir(base):  # an absolute base path: the adapter loads from any working directory
        model.peft_config["default"].base_model_name_or_path = os.path.abspath(base)
    return model


def load_adapter_weights(model, folder: str) -> None:
    """Put the adapters (and head) saved in `folder` by `save_pretrained` into peft `model`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(os.path.join(folder, "adapter_model.safetensors")))


def trainable(load_base: Callable[[], tuple], load_saved: Callable[[str], tuple], saved: str | None,
              settings: LoraSettings, task: str = "CAUSAL_LM") -> tuple:
    """`(model, tokenizer)` to train. Without LoRA: `load_saved(saved)` when resuming, else `load_base()`.
    With LoRA: the base with fresh adapters, or with the adapters of checkpoint folder `saved`."""
    if not settings.r:
        return load_saved(saved) if saved else load_base()
    model, tok = load_base()
    model = apply(model, settings, task)
    if saved:
        load_adapter_weights(model, saved)
    return model, tok


class AdaptersOff:
    """A peft model seen with its adapters disabled: the frozen base, with no second copy of its weights.
    Callable like the model (no gradients); not an nn.Module, so nothing can freeze or move the policy through it."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kwargs):
        with self.model.disable_adapter(), torch.no_grad():
            return self.model(*args, **kwargs)

    def parameters(self):
        return self.model.parameters()

    def eval(self):
        return self


def reference(policy, load_copy: Callable[[], object]):
    """The frozen reference model: `policy` with its adapters disabled when it has LoRA adapters,
    else `load_copy()` (the initial policy loaded again), frozen and in eval mode."""
    if is_peft(policy):
        return AdaptersOff(policy)
    return load_copy().requires_grad_(False).eval()


def save_final(stage: str, model, tokenizer, out_dir: str, settings: LoraSettings):
    """Save a stage's result in `<out_dir>/model` (checkpoint.save_model); returns the model to use from now on.
    With LoRA, the adapter also goes to `<out_dir>/adapter`, and `<out_dir>/model` is the merged model (merge:
    the merged model is returned, the peft wrapper is spent) or the adapter again."""
    from rlhfkit.checkpoint import save_model

    out = os.path.join(out_dir, "model")
    if is_peft(model):
        save_model(stage, model, tokenizer, os.path.join(out_dir, "adapter"))
        if settings.merge:
            model = model.merge_and_unload()
    save_model(stage, model, tokenizer, out)
    return model


def merged_if_adapter(path: str, load_base: Callable[[str], object]):
    """A model directory that holds a peft adapter (`adapter_config.json`): its base (`load_base(base path)`)
    with the adapter merged in; None for an ordinary model directory."""
    if not os.path.exists(os.path.join(path, ADAPTER_CONFIG)):
        return None
    from peft import PeftConfig, PeftModel

    base = load_base(PeftConfig.from_pretrained(path).base_model_name_or_path)
    return PeftModel.from_pretrained(base, path).merge_and_unload()

