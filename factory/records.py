"""Pydantic models of every file in a run directory.

Records are written strictly (every field this version knows, validated) and
read tolerantly: a file written by a newer minor version may carry fields this
version does not know; they are kept (``extra="allow"``) and written back
unchanged. A newer *major* ``schema_version`` is refused with a clear error,
because its meaning may have changed.

`export_schemas()` writes the JSON Schema of every record to ``docs/schemas/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from factory.errors import FactoryError

SCHEMA_VERSION = "1.0"


class Record(BaseModel):
    """Base of every run-directory record: tolerant of fields added by newer versions."""

    model_config = ConfigDict(extra="allow")

    schema_version: str = Field(SCHEMA_VERSION, description="major.minor of the record format")


class Score(BaseModel):
    model_config = ConfigDict(extra="allow")

    value: float = Field(description="point estimate, a rate in [0, 1] or a mean")
    ci_low: float | None = Field(None, description="95% interval, lower end")
    ci_high: float | None = Field(None, description="95% interval, upper end")
    n: int = Field(0, description="number of samples behind the value")


class FileRef(BaseModel):
    model_config = ConfigDict(extra="allow")

    path: str = Field(description="path relative to the run directory")
    digest: str = Field(description="xxh3-128 hex digest of the file's bytes")
    size: int | None = None

    @field_validator("path")
    @classmethod
    def _inside(cls, v: str) -> str:
        # a record names files of its own directory: never an absolute path or one that climbs out
        parts = v.replace("\\", "/").split("/")
        if not v or v.startswith(("/", "\\")) or ".." in parts or (len(v) > 1 and v[1] == ":") or "\0" in v:
            raise ValueError(f"{v!r} is not a path inside the run directory (relative, without '..')")
        return v


# --- config.json ---------------------------------------------------------------

class BaseModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    family: str
    model: str = Field(description="base model id or local path as the recipe names it")
    digest: str | None = Field(None, description="digest of the built base (weights, config, tokenizer, template)")


class RunConfig(Record):
    """config.json: the recipe as resolved, family defaults filled in."""

    recipe: str
    goal: str = ""
    owner: str = ""
    base: BaseModelInfo
    method: str
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict, description="resolved training parameters")
    evals: dict[str, Any] = Field(default_factory=dict)
    criteria: dict[str, Any] = Field(default_factory=dict)
    stage_keys: dict[str, str] = Field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="every stage's resolved config (base options, breadth spec, ...)")
    stage_outputs: dict[str, str] = Field(default_factory=dict, description="stage -> output digest")
    seeds: dict[str, int] = Field(default_factory=dict, description="every seed, by where it sits: train.seed, ...")


# --- dataset.json --------------------------------------------------------------

class DatasetSource(BaseModel):
    model_config = ConfigDict(extra="allow")

    kind: str
    path: str
    rows: int
    digest: str


class DatasetCounts(BaseModel):
    model_config = ConfigDict(extra="allow")

    input_rows: int = 0
    train_rows: int
    heldout_rows: int
    dropped_rows: int
    dropped_by_reason: dict[str, int] = Field(default_factory=dict)


class DatasetRecord(Record):
    """dataset.json: where the rows came from, what was dropped and why, and the split digests."""

    sources: list[DatasetSource]
    processing: dict[str, Any] = Field(default_factory=dict, description="settings of validation, dedup and split")
    counts: DatasetCounts
    splits: dict[str, FileRef] = Field(description="'train' and 'heldout' JSON-lines files")
    contamination: dict[str, Any] = Field(default_factory=dict)


# --- train.log / train.json ----------------------------------------------------

class TrainLogLine(BaseModel):
    """One JSON line of train.log."""

    model_config = ConfigDict(extra="allow")

    step: int
    loss: float
    lr: float
    tokens_per_s: float | None = Field(None, description="older runs only: timings now live in the stage manifest")
    elapsed_s: float | None = Field(None, description="older runs only: timings now live in the stage manifest")
    heldout_loss: float | None = None


class TrainSummary(Record):
    """train.json: what training did and produced."""

    method: str
    steps: int
    final_loss: float
    best_heldout_loss: float | None = None
    # Older runs recorded these; an output holds content only, so timings now live in the stage
    # manifest's facts and events.jsonl.
    seconds: float | None = None
    tokens_per_s: float | None = None
    device: str
    processes: int = 1
    threads: int | None = None
    peak_vram_gb: float | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="resolved training parameters")
    precheck: dict[str, Any] = Field(default_factory=dict, description="counts from the loss-mask/EOS pre-check")
    adapter: list[FileRef] = Field(default_factory=list)
    resumed_from_step: int | None = None


# --- eval-baseline.json / eval-candidate.json ----------------------------------

class SuiteResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    suite: str
    version: str
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    rows: int = 0
    data_digest: str | None = Field(None, description="digest of the rows this suite scored")
    primary_metric: str = Field("exact_match", description="the score the gate reads for this suite")
    scores: dict[str, Score] = Field(default_factory=dict)
    per_skill: dict[str, Score] = Field(default_factory=dict)
    samples: FileRef | None = None


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="allow")

    base_digest: str
    adapter_digest: str | None = None


class EvalRecord(Record):
    """eval-<role>.json: every suite's scores for one model, traceable to its samples."""

    role: Literal["baseline", "candidate"]
    model: ModelRef
    heldout_digest: str | None = None
    suites: list[SuiteResult]
    seconds: float | None = None
    settings: dict[str, Any] = Field(default_factory=dict)


class SampleRecord(BaseModel):
    """One line of a samples file."""

    model_config = ConfigDict(extra="allow")

    id: str
    prompt: str
    expected: str
    output: str
    correct: bool
    skill: str | None = None
    fields: dict[str, bool] | None = None


# --- decision.json -------------------------------------------------------------

class CriterionResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    metric: str
    threshold: float | str | None = None
    baseline: float | None = None
    candidate: float | None = None
    delta: float | None = None
    interval: list[float] | None = Field(None, description="paired interval of delta at the recipe's confidence")
    p_value: float | None = Field(None, description="McNemar exact p (primary, extra suites) or the one-sided "
                                  "non-inferiority p (regression suites and skills)")
    passed: bool
    reason: str | None = Field(None, description="the criterion's verdict in words, with its own numbers")
    n: int | None = Field(None, description="paired samples behind the comparison")
    rule: Literal["interval", "point"] | None = None
    holm_alpha: float | None = Field(None, description="one-sided level Holm tested this member of the family at")
    holm_interval: list[float] | None = Field(None, description="interval of delta at that level")
    uninformative: bool | None = Field(None, description="the baseline is too low for a drop past the limit to show")


class Decision(Record):
    """decision.json: ship, rework, reject or blocked, and why."""

    decision: Literal["ship", "rework", "reject", "blocked"]
    reason: str
    next_action: str | None = None
    blocked_by: list[str] = Field(default_factory=list)
    criteria: list[CriterionResult] = Field(default_factory=list)
    rule: Literal["interval", "point"] | None = Field(None, description="whether intervals or point estimates decided")
    confidence: float | None = Field(None, description="two-sided confidence of every interval")
    policy: dict[str, Any] | None = Field(None, description="criteria as resolved, suites, and the gate's code identity")
    policy_digest: str | None = Field(None, description="digest of policy: the same digest means the same policy")
    stopped_by: str | None = Field(None, description="the guard stage whose verdict stopped the build")


# --- artifact.json -------------------------------------------------------------

class Artifact(Record):
    """artifact.json: the adapter and what it needs, and whether it ships."""

    adapter: list[FileRef]
    base_digest: str
    tokenizer_digest: str | None = None
    shipped: bool


# --- run_manifest.json / events.jsonl ------------------------------------------

class RunManifest(Record):
    """run_manifest.json: how to reproduce the run."""

    project: str = "factory"
    run_id: str
    recipe: str
    recipe_path: str
    created: str
    git: dict[str, Any] = Field(default_factory=dict, description="commit hash and dirty flag")
    versions: dict[str, str | None] = Field(default_factory=dict, description="python, torch, cuda, packages")
    device: str | None = None
    seeds: dict[str, int] = Field(default_factory=dict)
    stage_keys: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="run file -> digest")


class Event(BaseModel):
    """One line of events.jsonl: one stage in one invocation."""

    model_config = ConfigDict(extra="allow")

    stage: str
    kind: str
    key: str
    status: Literal["hit", "built", "restored", "stopped", "failed"]
    start: str
    end: str
    seconds: float
    host: str
    pid: int | None = None
    error: str | None = None


RUN_FILES: dict[str, type[BaseModel]] = {
    "config.json": RunConfig,
    "dataset.json": DatasetRecord,
    "train.json": TrainSummary,
    "eval-baseline.json": EvalRecord,
    "eval-candidate.json": EvalRecord,
    "decision.json": Decision,
    "artifact.json": Artifact,
    "run_manifest.json": RunManifest,
}
JSONL_FILES: dict[str, type[BaseModel]] = {
    "train.log": TrainLogLine,
    "events.jsonl": Event,
}


def _check_version(model: BaseModel, path: Path) -> None:
    version = getattr(model, "schema_version", None)
    if version is None:
        return
    major = version.split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise FactoryError(
            f"{path}: schema_version: {version} is a newer major version than this factory reads "
            f"({SCHEMA_VERSION}); upgrade factory or migrate the run"
        )


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(root)"
    return f"{loc}: {first['msg']}"


_ABSENT: Any = object()


def read_json(path: Path, missing: Any = _ABSENT) -> Any:
    """The parsed JSON of one file; FactoryError naming the file when it is missing (unless `missing`
    is given, which is returned instead), a directory, not UTF-8, not JSON, or nested too deeply."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        if missing is not _ABSENT:
            return missing
        raise FactoryError(f"{path}: missing") from None
    except UnicodeDecodeError as e:
        raise FactoryError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except IsADirectoryError:
        raise FactoryError(f"{path}: a directory, not a file") from None
    except json.JSONDecodeError as e:
        raise FactoryError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise FactoryError(f"{path}: nested too deeply") from None


def read_json_object(path: Path, missing: Any = _ABSENT) -> dict[str, Any]:
    """`read_json` of a file that must hold one JSON object."""
    data = read_json(path, missing)
    if not isinstance(data, dict):
        raise FactoryError(f"{path}: (root): expected a JSON object, found {type(data).__name__}")
    return data


def read_record(path: Path, cls: type[BaseModel] | None = None) -> BaseModel:
    """Read one JSON record tolerantly; raise FactoryError naming the file and field."""
    path = Path(path)
    cls = cls or RUN_FILES[path.name]
    data = read_json(path)
    try:
        rec = cls.model_validate(data)
    except ValidationError as e:
        raise FactoryError(f"{path}: {_describe(e)}") from None
    _check_version(rec, path)
    return rec


def read_jsonl(path: Path, cls: type[BaseModel] | None = None) -> list[BaseModel]:
    path = Path(path)
    cls = cls or JSONL_FILES[path.name]
    out = []
    n = 0
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append(cls.model_validate_json(line))
                except ValidationError as e:
                    raise FactoryError(f"{path}:{n}: {_describe(e)}") from None
    except UnicodeDecodeError:
        raise FactoryError(f"{path}:{n + 1}: not UTF-8 text") from None
    except IsADirectoryError:
        raise FactoryError(f"{path}: a directory, not a file") from None
    return out


def read_rows(path: Path | None) -> list[dict[str, Any]]:
    """Rows of a JSON-lines data file ({"id", "prompt", "answer", ...}); None reads as no rows."""
    if path is None:
        return []
    rows = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise FactoryError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    except FileNotFoundError:
        raise FactoryError(f"{path}: missing") from None
    return rows


def dump_record(record: BaseModel) -> str:
    """Canonical text of a record: sorted keys, two-space indent, trailing newline."""
    return json.dumps(record.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def write_record(path: Path, record: BaseModel) -> None:
    Path(path).write_text(dump_record(record))


def export_schemas(dest: Path) -> list[Path]:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    models = {**RUN_FILES, **JSONL_FILES, "samples.jsonl": SampleRecord}
    for name, cls in sorted(models.items()):
        p = dest / f"{name}.schema.json"
        p.write_text(json.dumps(cls.model_json_schema(), indent=2, sort_keys=True) + "\n")
        written.append(p)
    return written
