"""The recipe: a typed model of `recipes/<name>.yaml`.

A recipe states intent (base, data, method, suites, criteria); the model
family fills in what it leaves out. Unknown keys are rejected, and every error
names the file and the field path on one line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator

from factory.errors import FactoryError
from factory.fastpath import note

# Bounds no real run meets; they turn a typo (steps: 10^12, a batch of 10^9) into a one-line error
# at plan time instead of a hang or an out-of-memory kill mid-build.
MAX_STEPS = 1_000_000
MAX_BATCH = 65_536
MAX_PROCESSES = 1_024
MAX_SEED = 2**32 - 1
MAX_LR = 10.0
MAX_NEW_TOKENS = 4_096
MAX_EVAL_BATCH = 4_096
MAX_ROWS = 10_000_000
NAME_PATTERN = r"^[a-z0-9][a-z0-9_]*(-[a-z0-9_]+)*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseSpec(Strict):
    family: str = Field(description="model family plugin that loads or builds the base, e.g. tiny or hf")
    model: str = Field(description="the family's model id, or a local model directory for hf (relative: from the recipe file's directory)")
    options: dict[str, Any] = Field(default_factory=dict, description="family-specific settings, checked by the family")


class SourceSpec(Strict):
    kind: str = Field(description="dataset source plugin, e.g. jsonl or breadth-mix")
    path: str | None = Field(None, description="file relative to the recipe file's directory (sources that read files)")
    options: dict[str, Any] = Field(default_factory=dict, description="source-specific settings")


class DataSpec(Strict):
    sources: list[SourceSpec] = Field(min_length=1, max_length=64, description="where rows come from")
    contract: str | None = Field(None, description="row contract checked by the dataset stage, e.g. json-action")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share of rows held out, split by content hash")
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-stage settings, e.g. max_chars")


class Resources(Strict):
    """What a heavy stage asks of the cluster when it runs as a Ray task; never part of a stage key."""

    num_cpus: float = Field(1, gt=0, description="CPUs the task reserves")
    num_gpus: float = Field(0, ge=0, description="GPUs the task reserves")


class TrainSpec(Strict):
    method: str = Field("sft-lora", description="training method the family provides (sft-lora, dpo-lora, ...)")
    steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="optimizer steps; null: the family decides from the data size")
    lr: float | None = Field(None, gt=0, le=MAX_LR, allow_inf_nan=False, description="peak learning rate; null: family default")
    batch_size: int | None = Field(None, gt=0, le=MAX_BATCH, description="rows per step; null: family default")
    replay: float | None = Field(None, ge=0, lt=1, description="share of breadth rows mixed into training")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of every random choice in training")
    processes: int = Field(1, ge=1, le=MAX_PROCESSES, description="training processes; >1 launches torchrun (DDP); bounded by the machine")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train; cuda fails at plan time on a machine without it")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="training precision; auto: the family's choice, else bf16 on CUDA that has it"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="the method's own settings (checked by its options model): lora r/alpha/dropout/targets, max_len, beta, ...")
    resources: Resources | None = Field(None, description="what the stage asks of a Ray cluster (executor: ray)")


class TrainStep(TrainSpec):
    name: str = Field(pattern=NAME_PATTERN, max_length=40, description="the step's name: its stage is train-<name>, its files steps/<name>/")
    data: str = Field("data", description="the data section the step trains on: data, breadth, or a name under datasets")
    promote: dict[str, float] = Field(
        default_factory=dict,
        description="'suite.metric' -> minimum value on this step's checkpoint; a miss stops the chain with rework",
    )


def _train_form(v: Any) -> str:
    return "__steps__" if isinstance(v, list) else "__one__"


TrainField = Annotated[
    Union[Annotated[TrainSpec, Tag("__one__")], Annotated[list[TrainStep], Tag("__steps__")]],
    Discriminator(_train_form),
]


class SuiteDef(Strict):
    suite: str = Field(description="a registered eval suite this instance runs, e.g. benchmark")
    options: dict[str, Any] = Field(default_factory=dict, description="the suite's own options (checked by its options model)")


class PlacedStage(Strict):
    kind: str = Field(description="a registered stage kind, e.g. merge-lora")
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="input name -> 'stage' (its whole output) or 'stage:file'; stages of the recipe's graph",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="the kind's config (checked by its options model)")


class EvalSpec(Strict):
    primary: str = Field(description="the suite that decides whether the specialist does its job")
    regression: list[str] = Field(default_factory=list, description="suites that must not get worse than the base")
    extra: list[str] = Field(default_factory=list, description="suites reported but not gated by default")
    define: dict[str, SuiteDef] = Field(
        default_factory=dict, description="named suite instances with options: name -> {suite, options}"
    )
    batch_size: int = Field(64, gt=0, le=MAX_EVAL_BATCH, description="prompts per generation batch")
    max_new_tokens: int = Field(96, gt=0, le=MAX_NEW_TOKENS, description="generation length limit")
    limit: int | None = Field(None, gt=0, le=MAX_ROWS, description="score at most this many rows per suite")
    resources: Resources | None = Field(None, description="what each eval stage asks of a Ray cluster (executor: ray)")

    def suites(self) -> list[str]:
        seen: list[str] = []
        for s in [self.primary, *self.regression, *self.extra]:
            if s not in seen:
                seen.append(s)
        return seen


class Criteria(Strict):
    primary_min: float | None = Field(None, ge=0, le=1, description="minimum primary score of the candidate; the candidate must also be significantly better than the base")
    breadth_drop_max_pp: float | None = Field(None, ge=0, description="largest allowed regression drop, in points: the lower end of the paired interval must stay above minus this")
    skill_drop_max_pp: float | None = Field(None, ge=0, description="largest allowed drop of any one skill of a regression suite, in points")
    skill_drop_max_pp_by_skill: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict, description="'skill' or 'suite.skill' -> its own limit in points, overriding skill_drop_max_pp")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="two-sided confidence of every interval the gate reads")
    rule: Literal["interval", "point"] = Field("interval", description="interval: decide on paired intervals (Holm over the regression family); point: on point estimates")
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
    breadth: DataSpec | None = Field(
        None, description="general-skills corpus for replay and the breadth suite; left out: the dataset source that "
                          "declares itself its default (default_for), with its default options")
    data: DataSpec = Field(description="the task's rows: sources, contract, held-out share")
    datasets: dict[str, DataSpec] = Field(
        default_factory=dict, description="further named data sections that training steps can train on"
    )
    train: TrainField = Field(
        default_factory=TrainSpec,
        description="how the candidate is trained: one section, or a list of named steps run in order",
    )
    evals: EvalSpec = Field(description="which suites judge baseline and candidate")
    criteria: Criteria = Field(default_factory=Criteria, description="what the candidate must clear to ship")
    stages: dict[str, PlacedStage] = Field(
        default_factory=dict, description="further stages of registered kinds placed in the graph: name -> {kind, inputs, options}"
    )
    package: bool = Field(True, description="package the specialist when the decision is ship")

    @field_validator("datasets", "stages")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        import re

        for name in v:
            if not re.match(NAME_PATTERN, name) or len(name) > 40:
                raise ValueError(f"{name!r} is not a valid name (lower case letters, digits, '-' and '_')")
        return v

    def steps(self) -> list[TrainStep]:
        """The training steps in order; the one-section form is one step named `train`."""
        if isinstance(self.train, list):
            return list(self.train)
        return [TrainStep(name="train", **self.train.model_dump())]

    @property
    def multi_step(self) -> bool:
        return isinstance(self.train, list)

    # Set by load_recipe, not by the YAML.
    name: str = Field("", exclude=True)
    path: Path | None = Field(None, exclude=True)


MAX_NODES = 100_000  # a YAML alias bomb expands far past this; a real recipe has a few hundred nodes


class _Loader(yaml.SafeLoader):
    """Safe YAML that rejects a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _count_nodes(data: Any, limit: int) -> int:
    """Nodes of the data as JSON would expand it (shared aliases counted every time), up to `limit`."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def read_yaml(path: Path, rel: Any) -> Any:
    """A YAML file's data; every failure is one FactoryError line naming the file (and line)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FactoryError(f"{rel}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FactoryError(f"{rel}: not UTF-8 text (byte {e.start}); a recipe is a YAML text file") from None
    if "\x00" in text:
        raise FactoryError(f"{rel}: a NUL byte; a recipe is a YAML text file, not binary data")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise FactoryError(f"{rel}:{where}: YAML error: {problem}") from None
    except RecursionError:
        raise FactoryError(f"{rel}: YAML nested too deeply") from None
    if _count_nodes(data, MAX_NODES) > MAX_NODES:
        raise FactoryError(f"{rel}: expands to more than {MAX_NODES:,} values (YAML aliases repeated); "
                           "a recipe is small")
    return data


def load_recipe(path: Path, root: Path) -> Recipe:
    """Read and validate a recipe; every failure is one FactoryError line naming file and field."""
    path = Path(path)
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = path
    note(path)
    data = read_yaml(path, rel)
    if not isinstance(data, dict):
        raise FactoryError(f"{rel}: (root): expected a mapping of recipe fields")
    for forbidden in ("name", "path"):
        if forbidden in data:
            raise FactoryError(f"{rel}: {forbidden}: Extra inputs are not permitted (the file name names the recipe)")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        from factory.options import one_line

        raise FactoryError(f"{rel}: {one_line(e, Recipe, noun='field')}") from None
    recipe.name = path.stem
    recipe.path = path
    _check_steps(recipe, rel)
    # Data paths resolve from the recipe's own directory, wherever that is; they must stay in the project.
    recipes_dir = path.parent
    sections = [*((("breadth", recipe.breadth),) if recipe.breadth is not None else ()), ("data", recipe.data),
                *((f"datasets.{n}", d) for n, d in recipe.datasets.items())]
    for section, spec in sections:
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


def _check_steps(recipe: Recipe, rel: Any) -> None:
    """What the recipe alone can tell about its steps: names, data sections, promotion suites."""
    seen: set[str] = set()
    sections = {"data", "breadth", *recipe.datasets}
    suites = set(recipe.evals.suites())
    for i, step in enumerate(recipe.steps()):
        field = f"train.{i}" if recipe.multi_step else "train"
        if step.name in seen:
            raise FactoryError(f"{rel}: {field}.name: step {step.name!r} is named twice; step names are unique")
        seen.add(step.name)
        if step.data not in sections:
            raise FactoryError(f"{rel}: {field}.data: no data section {step.data!r}; "
                               f"known: {', '.join(sorted(sections))} (add it under datasets)")
        for crit, value in step.promote.items():
            suite = crit.split(".", 1)[0]
            if suite not in suites:
                raise FactoryError(f"{rel}: {field}.promote.{crit}: the recipe does not evaluate suite {suite!r}; "
                                   f"its suites: {', '.join(sorted(suites))}")
            if "." not in crit:
                raise FactoryError(f"{rel}: {field}.promote.{crit}: name a metric too, as 'suite.metric'")
            if not math.isfinite(value):
                raise FactoryError(f"{rel}: {field}.promote.{crit}: must be a finite number")
    if not recipe.multi_step and recipe.train.method == "dpo-lora":
        raise FactoryError(f"{rel}: train.method: dpo-lora trains on top of an earlier step; "
                           "list the steps (train: [{name: sft, ...}, {name: dpo, method: dpo-lora, ...}])")
    if recipe.multi_step and recipe.steps()[0].method == "dpo-lora":
        raise FactoryError(f"{rel}: train.0.method: dpo-lora needs an earlier step whose policy is its reference")
    for name, st in recipe.stages.items():
        if name in seen or f"train-{name}" in seen:
            raise FactoryError(f"{rel}: stages.{name}: the name is taken by a training step")


def recipe_files(root: Path) -> list[Path]:
    return sorted((root / "recipes").glob("*.yaml"))


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(field path, type, default, description) for every recipe field, for the recipe reference.

    A list of sections shows as `field[].sub`, a mapping of named sections as `field.<name>.sub`;
    `train` is documented in both of its forms (one section, or a list of steps).
    """
    import typing

    rows: list[tuple[str, str, str, str]] = []

    def models_in(ann: Any) -> list[tuple[str, type[BaseModel]]]:
        """(path suffix, model) for each model an annotation holds: itself, list items, dict values."""
        out: list[tuple[str, type[BaseModel]]] = []
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.append((".", ann))
        elif origin in (list, tuple):
            out += [("[]" + suf, m) for suf, m in models_in(typing.get_args(ann)[0])]
        elif origin is dict:
            out += [(".<name>" + suf, m) for suf, m in models_in(typing.get_args(ann)[1])]
        else:
            for arg in typing.get_args(ann):
                out += models_in(arg)
        return out

    def type_name(ann: Any) -> str:
        if typing.get_origin(ann) is typing.Annotated:
            return type_name(typing.get_args(ann)[0])
        return getattr(ann, "__name__", None) or str(ann).replace("typing.", "").replace("factory.recipe.", "")

    def walk(model: type[BaseModel], prefix: str, seen: set[str]) -> None:
        for name, f in model.model_fields.items():
            if f.exclude:
                continue
            path = f"{prefix}{name}"
            if path in seen:
                continue
            seen.add(path)
            subs = models_in(f.annotation)
            if f.is_required():
                default = "required"
            elif f.default_factory is not None:
                default = "(see below)" if subs else repr(f.default_factory())
            else:
                default = repr(f.default)
            rows.append((path, type_name(f.annotation), default, f.description or ""))
            for suffix, sub in subs:
                walk(sub, path + (suffix if suffix != "." else "."), seen)

    walk(Recipe, "", set())
    return rows

