"""The `tiny` model family: a small Llama-style model that the factory builds itself.

A fresh machine with no GPU and no model hub still gets a real base model: the
`base` stage trains a byte-level BPE tokenizer on the breadth corpus and
pretrains a small causal LM on it (see `pretrain.py`). LoRA training and
evaluation then load it with transformers and peft like any other checkpoint.

The prompt template and the base's options live in `base.py`, once:
pretraining, LoRA training and evaluation all render prompts with
`format_prompt`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from factory.errors import FactoryError
from factory.interfaces import LoadedModel, TrainDefaultsContext
from factory_plugins.tiny.base import (  # noqa: F401 (re-exported: the family's template and options)
    ATTENTION,
    TEMPLATE,
    TinyBaseOptions,
    format_prompt,
    native_bf16,
    parse_base_options,
)

__version__ = "1.0"

MODELS = ("tiny-llama",)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Passes over the task rows an sft-lora adapter trains for (7.3: 650 steps of 32 rows for the planner at
# 35% replay). Measured on the planner (lr 5e-3, packed batches) with the fast base (8 heads, 1,000
# steps, 69.5% held-out breadth), two threads, three training seeds: 650 steps shipped on all three
# (planner 0.974-0.984, breadth -1.1 to -0.9 points, lowest interval end -3.00); 550 steps lost 1.8
# points of breadth (interval to -3.7). On the 4-head base of 1,600 steps, 650 steps also shipped on
# three seeds; 800 on two, 550 on one of two. With the classic base and padded batches: 35% replay
# over 1,000 steps (11 passes) reached 97.4% with breadth 1.1 points down.
PASSES = 7.3


class TinyFamily:
    """Model family `tiny`: builds its own base; trains LoRA adapters with the shared SFT trainer."""

    name = "tiny"
    version = __version__
    template = TEMPLATE

    def resolve_base(self, spec: dict[str, Any], root: Path) -> dict[str, Any]:
        model = spec.get("model") or MODELS[0]
        if model not in MODELS:
            raise FactoryError(f"base.model: the tiny family builds {', '.join(MODELS)}, not {model!r}")
        opts = parse_base_options(spec.get("options"))
        return {
            "family": self.name,
            "family_version": self.version,
            "model": model,
            "template": TEMPLATE,
            "options": opts.model_dump(),
        }

    def build_base(self, ctx: Any) -> None:
        from factory_plugins.tiny.pretrain import build_base

        build_base(ctx)

    def train_options(self, method: str) -> Any:
        """The pydantic model of a method's settings (checked at plan time)."""
        from factory.ml.methods import params_model

        return params_model(self.name, method)

    def default_train_params(self, ctx: TrainDefaultsContext) -> dict[str, Any]:
        from factory.ml.methods import check, thread_setting

        check(self.name, ctx.method)
        if ctx.method == "dpo-lora":
            # Preference pairs teach the near misses (wrong day, time, action) apart. Measured on the
            # planner from the flagship's SFT adapter (0.974 exact match), 100 steps of 16 pairs:
            # pure DPO at lr 2e-4 over three passes broke the output format (0.311); lr 5e-5, beta 0.1,
            # sft_weight 1: 0.914 (valid JSON 0.966); lr 2e-5, beta 0.1, sft_weight 5: 0.970;
            # lr 1e-5, beta 0.5, sft_weight 2 (the default): 0.974, valid JSON 1.0.
            batch = int(ctx.intent.get("batch_size", 16))
            steps = min(600, max(50, 50 * round(ctx.train_rows / batch / 50)))
            return {"steps": steps, "lr": 1e-5, "batch_size": batch, "beta": 0.5, "sft_weight": 2.0, "seed": 0,
                    "warmup_steps": 10, "max_len": 160, "precision": "bf16" if native_bf16() else "fp32",
                    **thread_setting(ctx.device)}
        # PASSES passes over the task rows, whatever share of each batch the recipe gives to replayed
        # breadth rows (half by default), in packed batches: several rows share a 128-token row
        # (factory.ml.packing), which gives the padded batches' losses on two thirds of the positions.
        batch, passes = int(ctx.intent.get("batch_size", 32)), PASSES
        replay = float(ctx.intent.get("replay", 0.5))
        steps = 50 * round(passes * ctx.train_rows / (batch * (1 - replay)) / 50)
        steps = min(2000, max(300, steps))
        return {
            "steps": steps,
            "lr": 5e-3,
            "batch_size": batch,
            "replay": replay,
            "seed": 0,
            "warmup_steps": 30,
            "max_len": 160,
            "packing": True,
            "pack_width": 128,
            "precision": "bf16" if native_bf16() else "fp32",
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": list(LORA_TARGETS)},
            **thread_setting(ctx.device),
        }

    def trainer(self, method: str) -> Callable[[Any], None]:
        from factory.ml.methods import trainer  # the engine's shared LoRA trainers (no torch at import)

        return trainer(self, method)

    def load(self, base_dir: Path, adapter_dir: Path | None, settings: dict[str, Any]) -> LoadedModel:
        import torch
        from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

        base_dir = Path(base_dir)
        device = resolve_device(str(settings.get("device") or "cpu"))
        tok = PreTrainedTokenizerFast.from_pretrained(str(base_dir))
        model = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, attn_implementation=ATTENTION)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=bool(settings.get("train")))
        model.to(device)
        model.train(bool(settings.get("train")))
        info: dict[str, Any] = {"family": self.name, "template": TEMPLATE, "add_bos": False}
        meta = base_dir / "base.json"
        if meta.exists():
            info["base"] = json.loads(meta.read_text()).get("model")
        return LoadedModel(
            model=model,
            tokenizer=tok,
            format_prompt=format_prompt,
            eos_token_id=int(tok.eos_token_id),
            pad_token_id=int(tok.pad_token_id),
            device=device,
            max_length=int(model.config.max_position_embeddings),
            info=info,
        )


def resolve_device(device: str) -> str:
    """'auto' means CUDA when present, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
