"""Which modules a LoRA adapter wraps, per architecture.

Llama, Qwen2, Mistral and their kin: the attention and MLP projections.
GPT-2: its fused attention (`c_attn`), output (`c_proj`) and MLP (`c_fc`) Conv1D
layers. Anything else: every Linear layer except the output head, by full name.
"""

from __future__ import annotations

from typing import Any

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BY_MODEL_TYPE: dict[str, tuple[str, ...]] = {
    **{t: PROJECTIONS for t in ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "olmo", "olmo2")},
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}


def default_targets(model: Any) -> list[str]:
    """LoRA target module names for `model` (a transformers causal LM, not yet wrapped by peft)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    known = BY_MODEL_TYPE.get(model_type or "")
    if known:
        present = [t for t in known if t in names]
        if present:
            return present
    return all_linear_but_head(model)


def all_linear_but_head(model: Any) -> list[str]:
    """Full names of every nn.Linear (and transformers Conv1D) except the output head."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out = []
    for name, mod in model.named_modules():
        if mod is head or not name:
            continue
        if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D":
            out.append(name)
    return out


def resolve_targets(model: Any, spec: Any) -> list[str]:
    """Targets from a recipe value: None/"auto" (per architecture), "all-linear", or a list of names."""
    if spec in (None, "auto"):
        return default_targets(model)
    if spec == "all-linear":
        return all_linear_but_head(model)
    if isinstance(spec, str):
        return [spec]
    return list(spec)
