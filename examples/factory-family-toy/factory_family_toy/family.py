"""The `toy-gpt2` family: a tiny random-init GPT-2 whose tokenizer is trained on the breadth corpus.

A family answers five questions for the engine (see factory.interfaces.ModelFamily):
what goes into the base stage's key (`resolve_base`), how to build the base
(`build_base`), which training parameters an intent-only recipe gets
(`default_train_params`), how to train (`trainer`), and how to load base and
adapter for evaluation (`load`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory.errors import FactoryError
from factory.interfaces import LoadedModel, TrainDefaultsContext

VERSION = "0.1.0"
TEMPLATE = "Q: {prompt}\nA: "
METHODS = ("sft-lora",)
EOS, PAD = "<|end|>", "<|pad|>"


def format_prompt(prompt: str) -> str:
    return TEMPLATE.format(prompt=prompt)


class ToyOptions(BaseModel):
    """The recipe's base.options for toy-gpt2; a typo fails loudly with the field's name."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(384, ge=260, description="byte-level BPE vocabulary, special tokens included")
    n_embd: int = Field(64, ge=8, description="model width")
    n_layer: int = Field(2, ge=1, description="transformer blocks")
    n_head: int = Field(2, ge=1, description="attention heads")
    n_positions: int = Field(256, ge=16, description="longest sequence, in tokens")
    seed: int = Field(0, description="seed of the random initialisation")


def parse_options(options: dict[str, Any] | None) -> ToyOptions:
    try:
        return ToyOptions.model_validate(options or {})
    except ValidationError as e:
        first = e.errors()[0]
        raise FactoryError(f"base.options.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


class ToyGPT2Family:
    name = "toy-gpt2"
    version = VERSION

    def resolve_base(self, spec: dict[str, Any], root: Path) -> dict[str, Any]:
        # Everything that changes the built base, and nothing else: this dict is hashed into its key.
        if spec.get("model") not in (None, "toy-gpt2"):
            raise FactoryError(f"base.model: the toy-gpt2 family builds 'toy-gpt2', not {spec['model']!r}")
        return {
            "family": self.name,
            "family_version": self.version,
            "model": "toy-gpt2",
            "template": TEMPLATE,
            "options": parse_options(spec.get("options")).model_dump(),
        }

    def build_base(self, ctx: Any) -> None:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        from factory.records import read_rows

        # the base stage's config holds what resolve_base returned under "base"
        opts = ToyOptions.model_validate(ctx.config.get("base", ctx.config)["options"])
        rows = read_rows(Path(ctx.inputs["breadth"]) / "train.jsonl")
        tokenizer = train_tokenizer(rows, opts.vocab_size, opts.n_positions)
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=opts.n_embd,
            n_layer=opts.n_layer,
            n_head=opts.n_head,
            n_positions=opts.n_positions,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(opts.seed)
        model = GPT2LMHeadModel(config)
        model.save_pretrained(str(ctx.out), safe_serialization=True)
        tokenizer.save_pretrained(str(ctx.out))
        info = {"family": self.name, "model": "toy-gpt2", "template": TEMPLATE, "options": opts.model_dump(),
                "parameters": sum(p.numel() for p in model.parameters()), "breadth_rows": len(rows)}
        (Path(ctx.out) / "base.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        ctx.log(f"toy-gpt2 base: {info['parameters']} parameters, tokenizer of {len(tokenizer)} tokens")

    def default_train_params(self, ctx: TrainDefaultsContext) -> dict[str, Any]:
        if ctx.method not in METHODS:
            raise self._unknown_method(ctx.method)
        return {
            "steps": 200,
            "lr": 5e-3,
            "batch_size": 16,
            "replay": 0.0,
            "seed": 0,
            "warmup_steps": 10,
            "max_len": 192,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["c_attn", "c_proj", "c_fc"]},
        }

    def trainer(self, method: str) -> Callable[[Any], None]:
        if method not in METHODS:
            raise self._unknown_method(method)

        from factory.ml.sft import trainer_for  # the engine's shared LoRA trainer (no torch at import)

        return trainer_for(self)

    def load(self, base_dir: Path, adapter_dir: Path | None, settings: dict[str, Any]) -> LoadedModel:
        import torch
        from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

        device = str(settings.get("device") or "cpu")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(base_dir))
        model = GPT2LMHeadModel.from_pretrained(str(base_dir), dtype=torch.float32)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=bool(settings.get("train")))
        model.to(device)
        model.train(bool(settings.get("train")))
        return LoadedModel(
            model=model,
            tokenizer=tokenizer,
            format_prompt=format_prompt,
            eos_token_id=int(tokenizer.eos_token_id),
            pad_token_id=int(tokenizer.pad_token_id),
            device=device,
            max_length=int(model.config.n_positions),
            info={"family": self.name, "template": TEMPLATE, "add_bos": False},
        )

    def _unknown_method(self, method: str) -> FactoryError:
        return FactoryError(f"train.method: toy-gpt2 has no method {method!r}; its methods: {', '.join(METHODS)}")


def train_tokenizer(rows: list[dict[str, Any]], vocab_size: int, max_length: int) -> Any:
    """A byte-level BPE tokenizer trained on the breadth corpus, rendered with this family's template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = (text for r in rows for text in (format_prompt(r["prompt"]), r["answer"]))
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, model_max_length=max_length)
