"""The recipe: a typed model of `recipes/<name>.yaml`.

A recipe states intent (base, data, method, suites, criteria); the model
family fills in what it leaves out. Unknown keys are rejected, and every error
names the file and the field path on one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory.errors import FactoryError
from factory.fastpath import note


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseSpec(Strict):
    family: str = Field(description="model family plugin that loads or builds the base, e.g. tiny or hf")
    model: str = Field(description="the family's model id, or a local model directory for hf")
    options: dict[str, Any] = Field(default_factory=dict, description="family-specific settings, checked by the family")


class SourceSpec(Strict):
    kind: str = Field(description="dataset source plugin, e.g. jsonl or breadth-mix")
    path: str | None = Field(None, description="file relative to the recipes/ directory (sources that read files)")
    options: dict[str, Any] = Field(default_factory=dict, description="source-specific settings")


class DataSpec(Strict):
    sources: list[SourceSpec] = Field(min_length=1, description="where rows come from")
    contract: str | None = Field(None, description="row contract checked by the dataset stage, e.g. json-action")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share of rows held out, split by content hash")
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-stage settings, e.g. max_chars")


def _default_breadth() -> DataSpec:
    return DataSpec(sources=[SourceSpec(kind="breadth-mix")], heldout_fraction=0.05)


class TrainSpec(Strict):
    method: str = Field("sft-lora", description="training method the family provides")
    steps: int | None = Field(None, gt=0, description="optimizer steps; null: the family decides from the data size")
    lr: float | None = Field(None, gt=0, description="peak learning rate; null: family default")
    batch_size: int | None = Field(None, gt=0, description="rows per step; null: family default")
    replay: float | None = Field(None, ge=0, lt=1, description="share of breadth rows mixed into training")
    seed: int = Field(0, description="seed of every random choice in training")
    processes: int = Field(1, ge=1, description="training processes; >1 launches torchrun (DDP)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="training precision; auto: the family's choice, else bf16 on CUDA that has it"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="trainer settings: lora r/alpha/dropout/targets, max_len, ...")
    resources: "Resources | None" = Field(None, description="what the stage asks of a Ray cluster (executor: ray)")


class Resources(Strict):
    """What a heavy stage asks of the cluster when it runs as a Ray task; never part of a stage key."""

    num_cpus: float = Field(1, gt=0, description="CPUs the task reserves")
    num_gpus: float = Field(0, ge=0, description="GPUs the task reserves")


class EvalSpec(Strict):
    primary: str = Field(description="the suite that decides whether the specialist does its job")
    regression: list[str] = Field(default_factory=list, description="suites that must not get worse than the base")
    extra: list[str] = Field(default_factory=list, description="suites reported but not gated by default")
    batch_size: int = Field(64, gt=0, description="prompts per generation batch")
    max_new_tokens: int = Field(96, gt=0, description="generation length limit")
    limit: int | None = Field(None, gt=0, description="score at most this many rows per suite")
    resources: Resources | None = Field(None, description="what each eval stage asks of a Ray cluster (executor: ray)")

    def suites(self) -> list[str]:
        seen: list[str] = []
        for s in [self.primary, *self.regression, *self.extra]:
            if s not in seen:
                seen.append(s)
        return seen


class Criteria(Strict):
    primary_min: float | None = Field(None, ge=0, le=1, description="minimum primary score of the candidate")
    breadth_drop_max_pp: float | None = Field(None, ge=0, description="largest allowed regression drop, in points")
    suite_min: dict[str, float] = Field(default_factory=dict, description="'suite.metric' -> minimum candidate value")
    delta_min_pp: dict[str, float] = Field(default_factory=dict, description="'suite' or 'suite.metric' -> minimum gain over baseline, in points")
    max_vram_gb: float | None = Field(None, gt=0, description="largest GPU memory training may have used")
    device_tier: str | None = Field(None, description="device training must have run on, e.g. cpu or cuda")
    require_model_hash: bool = Field(True, description="block unless every model digest is recorded and matches")
    require_samples: bool = Field(True, description="block unless every suite's samples file is present and matches")


class Recipe(Strict):
    goal: str = Field("", description="what the specialist is for, in the owner's words")
    owner: str = Field("", description="who answers for it")
    base: BaseSpec = Field(description="the base model the specialist starts from")
    breadth: DataSpec = Field(default_factory=_default_breadth, description="general-skills corpus for replay and the breadth suite")
    data: DataSpec = Field(description="the task's rows: sources, contract, held-out share")
    train: TrainSpec = Field(default_factory=TrainSpec, description="how the candidate is trained")
    evals: EvalSpec = Field(description="which suites judge baseline and candidate")
    criteria: Criteria = Field(default_factory=Criteria, description="what the candidate must clear to ship")
    package: bool = Field(True, description="package the specialist when the decision is ship")

    # Set by load_recipe, not by the YAML.
    name: str = Field("", exclude=True)
    path: Path | None = Field(None, exclude=True)


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"]) or "(root)"


def load_recipe(path: Path, root: Path) -> Recipe:
    """Read and validate a recipe; every failure is one FactoryError line naming file and field."""
    path = Path(path)
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = path
    note(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise FactoryError(f"{rel}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise FactoryError(f"{rel}:{where}: YAML syntax error: {problem}") from None
    if not isinstance(data, dict):
        raise FactoryError(f"{rel}: (root): expected a mapping of recipe fields")
    for forbidden in ("name", "path"):
        if forbidden in data:
            raise FactoryError(f"{rel}: {forbidden}: Extra inputs are not permitted (the file name names the recipe)")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "required field is missing"
        raise FactoryError(f"{rel}: {_loc(err)}: {msg}") from None
    recipe.name = path.stem
    recipe.path = path
    recipes_dir = path.parent
    for section in ("breadth", "data"):
        spec: DataSpec = getattr(recipe, section)
        for i, src in enumerate(spec.sources):
            if src.path is None:
                continue
            resolved = (recipes_dir / src.path).resolve()
            try:
                resolved.relative_to(root.resolve())
            except ValueError:
                raise FactoryError(f"{rel}: {section}.sources.{i}.path: {src.path} is outside the project") from None
            if not resolved.exists():
                raise FactoryError(f"{rel}: {section}.sources.{i}.path: {src.path} does not exist")
    return recipe


def recipe_files(root: Path) -> list[Path]:
    return sorted((root / "recipes").glob("*.yaml"))


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(field path, type, default, description) for every recipe field, for the recipe reference."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            if f.exclude:
                continue
            path = f"{prefix}{name}"
            ann = f.annotation
            sub = None
            for cand in (ann, *getattr(ann, "__args__", ())):
                if isinstance(cand, type) and issubclass(cand, BaseModel):
                    sub = cand
            typ = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
            if f.is_required():
                default = "required"
            elif f.default_factory is not None:
                default = "(see below)" if sub else repr(f.default_factory())
            else:
                default = repr(f.default)
            rows.append((path, typ, default, f.description or ""))
            if sub is not None:
                walk(sub, f"{path}[]." if "list" in str(ann) else f"{path}.")

    walk(Recipe, "")
    return rows


TrainSpec.model_rebuild()
