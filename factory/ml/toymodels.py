"""Tiny random transformers models saved to a directory, for tests and benchmarks.

`save_toy_model(dest, arch)` writes a randomly initialised Llama or GPT-2 causal
LM with a small byte-level BPE tokenizer, in the layout any local transformers
checkpoint has (config.json, model.safetensors, tokenizer files). Nothing here
is trained to do anything; it exercises the machinery, quickly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_CORPUS = [
    "copy: abc -> abc",
    "reverse: abc -> cba",
    "add 2 3 -> 5",
    '{"action": "plan", "pace": "easy", "km": 5}',
    "the quick brown fox jumps over the lazy dog",
    "Question: what is the key? Answer: value",
    "### Prompt:\n### Answer:\n",
    "0123456789 ,.:;!?-_/()[]{}<>=+*'\"",
]


def build_tokenizer(vocab_size: int = 320) -> Any:
    """A byte-level BPE fast tokenizer with <pad>, <s> and </s> special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def save_toy_model(
    dest: Path,
    arch: str = "llama",
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    positions: int = 256,
    chat_template: str | None = None,
    init_std: float = 0.3,
) -> Path:
    """Write a random `arch` ("llama" or "gpt2") causal LM and its tokenizer into `dest`.

    A wide `init_std` makes greedy outputs varied (a near-zero init repeats one token),
    which is what batch-invariance tests need.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    if chat_template:
        tok.chat_template = chat_template
    common = dict(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(
            hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=positions,
            tie_word_embeddings=True, initializer_range=init_std, **common,
        )
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions, initializer_range=init_std, **common)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"unknown toy arch {arch!r}")
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def toy_template(prompt: str) -> str:
    return f"{prompt}\n=> "


def load_toy(path: Path, settings: dict[str, Any] | None = None) -> Any:
    """A LoadedModel for a directory written by `save_toy_model` (also a torchrun `loader`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.interfaces import LoadedModel

    settings = settings or {}
    device = str(settings.get("device") or "cpu")
    device = "cpu" if device == "auto" else device
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).to(device)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return LoadedModel(
        model=model, tokenizer=tok, format_prompt=toy_template, eos_token_id=int(tok.eos_token_id),
        pad_token_id=int(tok.pad_token_id), device=device,
        max_length=int(getattr(model.config, "max_position_embeddings", None) or model.config.n_positions),
    )
