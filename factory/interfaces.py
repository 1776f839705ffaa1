"""What a plugin provides: the shapes of model families, eval suites and dataset sources.

These are typing Protocols; a plugin need not inherit from them. Every method
that needs torch imports it inside its body, never at module import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

if False:  # typing only; keeps `import factory.interfaces` free of heavy imports
    from factory.stages import BuildContext


@dataclass
class LoadedModel:
    """A model ready for evaluation or training, whatever family it came from.

    `model` is a transformers causal LM (a peft model when an adapter is loaded),
    `tokenizer` a transformers fast tokenizer. `format_prompt` turns a task
    prompt into the text the model is conditioned on (the family's template);
    the answer follows it directly and ends with `eos_token_id`.
    """

    model: Any
    tokenizer: Any
    format_prompt: Callable[[str], str]
    eos_token_id: int
    pad_token_id: int
    device: str = "cpu"  # where model lives: "cpu", "cuda", ...
    max_length: int = 256  # longest prompt + answer in tokens (the model's context)
    info: dict[str, Any] = field(default_factory=dict)  # recorded in eval records: family, template, base, ...
    source: dict[str, Any] | None = None  # how to load it again in a fresh process (set by the eval stage)


@dataclass
class TrainDefaultsContext:
    """What a family may look at to fill in training parameters the recipe left out."""

    method: str  # the step's training method: "sft-lora", "dpo-lora", ...
    train_rows: int  # rows in the step's train split
    heldout_rows: int  # rows in its held-out split
    device: str  # the step's device setting ("auto", "cpu", "cuda")
    processes: int  # training processes the step asks for
    intent: dict[str, Any]  # the settings the recipe gave (steps, lr, batch_size, replay, options)


@runtime_checkable
class ModelFamily(Protocol):
    name: str
    version: str

    def resolve_base(self, spec: dict[str, Any], root: Path) -> dict[str, Any]:
        """Base config that goes into the base stage's key (cheap; no torch).

        Must include everything that changes the built base: for a local model
        directory, its tree digest; for a generated base, architecture and
        pretraining settings.
        """

    def build_base(self, ctx: "BuildContext") -> None:
        """Write the base model into ctx.out (or a pointer to it plus its digest)."""

    def default_train_params(self, ctx: TrainDefaultsContext) -> dict[str, Any]:
        """Training parameters for intent-only recipes; the recipe's explicit values win."""

    def trainer(self, method: str) -> Callable[["BuildContext"], None]:
        """The build function of the train stage for `method`; FactoryError listing methods if unknown."""

    def load(self, base_dir: Path, adapter_dir: Path | None, settings: dict[str, Any]) -> LoadedModel:
        """Load base (and adapter) for evaluation."""


@dataclass
class SuiteOutput:
    """What an eval suite returns: scores, optional per-skill scores, one record per sample."""

    scores: dict[str, Any]  # name -> factory.records.Score (or a dict of its fields)
    samples: list[dict[str, Any]]  # factory.records.SampleRecord fields
    per_skill: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class EvalSuite(Protocol):
    name: str
    version: str
    needs: str  # "heldout" (the recipe's held-out split) or "breadth" (the breadth corpus held-out split)
    primary_metric: str

    def evaluate(self, lm: LoadedModel, rows: list[dict[str, Any]], settings: dict[str, Any]) -> SuiteOutput:
        """Score the model on rows ({"id", "prompt", "answer", ...}); settings hold batch size, limits."""


@runtime_checkable
class DatasetSource(Protocol):
    name: str
    version: str

    def files(self, spec: dict[str, Any], root: Path) -> list[Path]:
        """Files whose bytes the rows come from (hashed into the dataset stage's key)."""

    def read(self, spec: dict[str, Any], root: Path) -> Iterable[dict[str, Any]]:
        """Yield raw rows."""
