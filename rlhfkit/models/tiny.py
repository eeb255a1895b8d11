"""The built-in tiny models: a byte-level BPE tokenizer and a small Llama.

Both are ordinary Hugging Face objects saved with `save_pretrained`, so
`AutoTokenizer.from_pretrained(d)` / `AutoModelForCausalLM.from_pretrained(d)`
load them anywhere, and every stage treats them exactly like a hub model.

Chat format (the tokenizer's `chat_template`):
    <|user|>What is 7 + 5?<|assistant|>7 + 5 = 12.<|eos|>
`<|eos|>` ends both a pretraining document and an assistant turn; `<|pad|>` is a
distinct token, so padding can never be mistaken for the end of a response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

PAD, EOS, USER, ASSISTANT, SYSTEM = "<|pad|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>"
SPECIAL_TOKENS = [PAD, EOS, USER, ASSISTANT, SYSTEM]

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}<|eos|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass
class TinyModelConfig:
    vocab_size: int = 1024  # BPE vocabulary, special tokens included
    hidden_size: int = 128  # width; 128 x 4 layers is ~0.9M parameters
    num_layers: int = 4  # transformer blocks
    num_heads: int = 4  # attention heads (no GQA at this size)
    intermediate_size: int = 384  # MLP width (SwiGLU)
    max_position_embeddings: int = 512  # longest sequence the RoPE cache is built for
    tie_embeddings: bool = True  # share input and output embeddings (saves params at tiny sizes)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer and wrap it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        padding_side="left",  # generation pads on the left; training code pads explicitly
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    assert tok.pad_token_id != tok.eos_token_id
    return tok


def build_model(cfg: TinyModelConfig, tokenizer, seed: int = 0):
    """A freshly initialised `LlamaForCausalLM` sized by `cfg`, matched to `tokenizer`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        attention_dropout=0.0,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
