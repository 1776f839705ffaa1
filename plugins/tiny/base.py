"""What a tiny base is: its prompt template and its options.

Everything here decides the built weights, so this module's code is part of
the base stage's key (with `pretrain.py` and `factory.ml.text`); the family's
training defaults live in `family.py` and can change without rebuilding a base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory.errors import FactoryError

TEMPLATE = "{prompt}\n=>"
# Eager attention ran 22% faster than SDPA per training step at this size on CPU (measured).
ATTENTION = "eager"


def format_prompt(prompt: str) -> str:
    """The tiny family's template: the text a task prompt is conditioned on."""
    return TEMPLATE.format(prompt=prompt)


# Pretraining schedules (and the attention heads they were measured with). classic: 2,600 steps of
# 64 rows at 3e-3 with 4 heads, 2-2.5 minutes of pretraining on two cores with bf16 products; 80-81%
# held-out breadth, 97% on the planner after LoRA; the copy skills learn late (loss 0.8 at step 750,
# 0.3 at 1,250, 0.03 at 2,500). fast: 8 heads of 16 dimensions over the same width, 1,000 steps:
# 69.5% held-out breadth (copy 87.5%), planner 0.974-0.984 after LoRA over three training seeds, in
# about 40% of the classic pretraining time. With 4 heads 1,600 steps reached 70.5% (copy 85%) and
# 1,400 steps 66% (planner 0.948); with 8 heads 1,400 steps 79.2%, 800 steps 65%; 16 heads at 1,000
# steps 62.3%. See docs/benchmarks.md.
PROFILES: dict[str, dict[str, Any]] = {
    "fast": {"steps": 1000, "batch_size": 64, "lr": 3e-3, "warmup_steps": 50, "heads": 8},
    "classic": {"steps": 2600, "batch_size": 64, "lr": 3e-3, "warmup_steps": 50, "heads": 4},
}


class TinyBaseOptions(BaseModel):
    """Architecture and pretraining settings of a tiny base (recipe: base.options)."""

    model_config = ConfigDict(extra="forbid")

    # architecture
    vocab_size: int = Field(512, ge=260, le=65536, description="BPE vocabulary size, bytes and special tokens included")
    hidden_size: int = Field(128, ge=8, description="model width")
    intermediate_size: int = Field(512, ge=8, description="MLP width")
    layers: int = Field(2, ge=1, description="decoder layers")
    heads: int | None = Field(None, ge=1, description="attention heads; default: the profile's")
    max_positions: int = Field(256, ge=16, description="longest sequence the model accepts, in tokens")
    # pretraining
    profile: Literal["fast", "classic"] = Field(
        "fast",
        description="pretraining schedule the unset steps, batch_size, lr, warmup_steps and heads come from: fast "
        f"({PROFILES['fast']}) or classic, the schedule before it ({PROFILES['classic']})",
    )
    steps: int | None = Field(None, ge=1, description="optimizer steps of pretraining; default: the profile's")
    batch_size: int | None = Field(None, ge=1, description="rows per step; default: the profile's")
    lr: float | None = Field(None, gt=0, description="peak learning rate (AdamW); default: the profile's")
    warmup_steps: int | None = Field(
        None, ge=0, description="linear warm-up steps before the cosine decay; default: the profile's")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final learning rate as a fraction of the peak")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    seed: int = Field(0, description="seed of initialisation and data order")
    threads: int = Field(
        2, ge=1, le=256, description="torch threads for pretraining (another count gives bitwise different weights)"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="matrix products in pretraining: bf16 autocast (fp32 weights) or fp32; auto picks bf16 where "
        "the CPU computes it natively (AVX512-BF16 or AMX) and records the choice in the base's key",
    )
    eval_rows: int = Field(400, ge=0, description="held-out breadth rows checked by greedy generation after pretraining")

    def check(self) -> None:
        if self.heads is not None and self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}")


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (read from /proc/cpuinfo: no torch import at plan time)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def parse_base_options(options: dict[str, Any] | None) -> TinyBaseOptions:
    try:
        opts = TinyBaseOptions.model_validate(options or {})
        for name, value in PROFILES[opts.profile].items():  # resolved here, so the base's key names the schedule
            if getattr(opts, name) is None:
                setattr(opts, name, value)
        opts.check()
    except ValidationError as e:
        from factory import options

        raise FactoryError(options.one_line(e, TinyBaseOptions, "base.options")) from None
    except ValueError as e:
        raise FactoryError(f"base.options: {e}") from None
    if opts.precision == "auto":  # resolved once, here, so the base's key names the arithmetic that built it
        opts.precision = "bf16" if native_bf16() else "fp32"
    return opts
