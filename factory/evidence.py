"""What a run's records say, read in one place: the gate, the report, run validation, compare, the
model card and the web pages all read through here.

Two ways in. `gather(dirs)` reads stage output directories, as the decide, report and package
stages see them; `read_run(run_dir)` reads a run directory, which holds every file. Either gives an
`Evidence`: the typed records (None where a file is absent or unreadable), each eval's samples
(checked against the digest its record names), the training log, the stop records and training
steps with their promotion verdicts, and `problems`, one line per thing that could not be read or
does not match. Reading never raises for a bad file: the gate blocks on problems, the report lists
them, and a command that needs a file whole calls `require`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory import hashing
from factory.errors import FactoryError
from factory.records import (
    Artifact,
    DatasetRecord,
    Decision,
    EvalRecord,
    Event,
    RunConfig,
    RunManifest,
    SampleRecord,
    SuiteResult,
    TrainLogLine,
    TrainSummary,
    read_json,
    read_jsonl,
    read_record,
)

ROLES = ("baseline", "candidate")
STAGE_DIRS = ("decide", "eval-baseline", "eval-candidate", "train", "dataset")

Samples = dict[str, dict[str, list[dict[str, Any]]]]  # role -> suite -> sample dicts


@dataclass
class Evidence:
    """Everything the records of one run (or of a build's stage directories) say."""

    settings: dict[str, Any] = field(default_factory=dict)  # recipe, goal, owner, primary, regression
    config: RunConfig | None = None
    manifest: RunManifest | None = None
    decision: Decision | None = None
    baseline: EvalRecord | None = None
    candidate: EvalRecord | None = None
    samples: Samples = field(default_factory=lambda: {"baseline": {}, "candidate": {}})
    train: TrainSummary | None = None
    log: list[TrainLogLine] = field(default_factory=list)
    dataset: DatasetRecord | None = None
    artifact: Artifact | None = None
    events: list[Event] = field(default_factory=list)
    stops: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> the stop record a guard left
    steps: list[dict[str, Any]] = field(default_factory=list)  # training steps, with promotion verdicts
    problems: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # file name -> why it could not be read

    def eval(self, role: str) -> EvalRecord | None:
        return self.candidate if role == "candidate" else self.baseline

    def suite(self, role: str, name: str) -> SuiteResult | None:
        rec = self.eval(role)
        return next((s for s in rec.suites if s.suite == name), None) if rec is not None else None

    def suite_names(self) -> list[str]:
        """Every suite either eval scored, the candidate's order first."""
        names: list[str] = []
        for rec in (self.candidate, self.baseline):
            for s in rec.suites if rec else []:
                if s.suite not in names:
                    names.append(s.suite)
        return names

    @property
    def stage_keys(self) -> dict[str, str]:
        """Every stage's key: from run_manifest.json, else config.json."""
        return (self.manifest.stage_keys if self.manifest else {}) or (self.config.stage_keys if self.config else {})

    def config_values(self) -> dict[str, Any]:
        """config.json as written (the fields it holds, no defaults filled in); {} when absent or unreadable."""
        return self.config.model_dump(mode="json", exclude_unset=True) if self.config is not None else {}

    def require(self, *names: str) -> None:
        """Raise the first of these files' read errors: for a command that cannot work around a bad file."""
        for name in names:
            if name in self.unreadable:
                raise FactoryError(self.unreadable[name])


# --- one file at a time -------------------------------------------------------------------------

def _read(read: Any, path: Path, cls: Any, problems: list[str]) -> Any:
    """read(path, cls), or None with its one-line error added to problems."""
    try:
        return read(path, cls)
    except FactoryError as e:
        problems.append(str(e))
        return None


def _record(ev: Evidence, path: Path, cls: Any, read: Any = read_record) -> Any:
    """The record (or JSON-lines file) at path, None when absent; a bad file becomes a problem."""
    if not path.is_file():
        return None
    found: list[str] = []
    value = _read(read, path, cls, found)
    for text in found:
        _problem(ev, path.name, text)
    return value


def _problem(ev: Evidence, name: str, text: str) -> None:
    ev.unreadable.setdefault(name, text)
    ev.problems.append(text)


def load_samples(record: EvalRecord, root: Path, record_name: str | None = None) -> tuple[dict[str, list[dict]], list[str]]:
    """Read every suite's samples file under root and check it against the record's digest.

    Returns (suite -> sample dicts, problems). A file that is missing, unreadable,
    or whose bytes no longer match the digest in the record is a problem naming it.
    """
    name = record_name or f"eval-{record.role}.json"
    out: dict[str, list[dict]] = {}
    problems: list[str] = []
    for s in record.suites:
        if s.status != "ok":
            continue
        if s.samples is None:
            problems.append(f"{name}: suite {s.suite}: no samples file recorded")
            continue
        path = Path(root) / s.samples.path
        if not path.resolve().is_relative_to(Path(root).resolve()):  # a link that leads out of the run
            problems.append(f"{s.samples.path}: leads outside {root} (named by {name} for suite {s.suite})")
            continue
        if not path.is_file():
            problems.append(f"{s.samples.path}: missing (named by {name} for suite {s.suite})")
            continue
        actual = hashing.hash_file(path)  # no stat cache: an edit within the same mtime tick must still show
        if actual != s.samples.digest:
            problems.append(
                f"{s.samples.path}: digest {actual[:12]} does not match {name} ({s.samples.digest[:12]}); "
                "the file changed after the eval"
            )
            continue
        try:
            rows = [r.model_dump() for r in read_jsonl(path, SampleRecord)]
        except FactoryError as e:
            problems.append(str(e))
            continue
        if len(rows) != s.rows:
            problems.append(f"{s.samples.path}: {len(rows)} samples but {name} says {s.rows} rows for suite {s.suite}")
        out[s.suite] = rows
    return out, problems


def read_eval(eval_dir: Path, role: str) -> tuple[EvalRecord | None, dict[str, list[dict]], list[str]]:
    """eval-<role>.json of a directory and its samples: (record, suite -> samples, problems); missing is a problem."""
    path = Path(eval_dir) / f"eval-{role}.json"
    if not path.is_file():
        return None, {}, [f"eval-{role}.json: missing"]
    problems: list[str] = []
    rec = _read(read_record, path, EvalRecord, problems)
    if rec is None:
        return None, {}, problems
    samples, problems = load_samples(rec, Path(eval_dir))
    return rec, samples, problems


def _find(directory: Path, name: str) -> Path:
    """A file in a stage's output directory (or the directory itself when given the file)."""
    directory = Path(directory)
    return directory if directory.is_file() else directory / name


def read_train(train_dir: Path | None) -> tuple[TrainSummary | None, list[TrainLogLine] | None, list[str]]:
    """train.json and train.log of a directory: (summary, log lines, problems); absent files are None."""
    problems: list[str] = []
    if train_dir is None:
        return None, None, problems
    p, lp = _find(train_dir, "train.json"), Path(train_dir) / "train.log"
    train = _read(read_record, p, TrainSummary, problems) if p.is_file() else None
    log = _read(read_jsonl, lp, TrainLogLine, problems) if lp.is_file() else None
    return train, log, problems


def read_stop(directory: Path) -> dict[str, Any] | None:
    """The stop.json a guard left in place of a stage's outputs, or None."""
    p = Path(directory) / "stop.json" if Path(directory).is_dir() else None
    if p is None or not p.is_file():
        return None
    data = read_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("verdict"), dict):
        raise FactoryError(f"{p}: verdict: expected the guard's verdict.json object")
    return data


def read_stops(run_dir: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """stopped/<stage>.json of a run directory: (stage -> stop record, problems)."""
    stops: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    d = Path(run_dir) / "stopped"
    if d.is_dir():
        for p in sorted(d.glob("*.json")):
            try:
                stops[p.stem] = read_json(p)
            except FactoryError:
                problems.append(f"stopped/{p.name}: not a readable stop record")
    return stops, problems


def training_steps(run_dir: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's training steps, in order: its training_plan.json, or its one train section.

    Each step: name, method, data, status (trained or stopped), settings, and its promotion check's
    verdict under `promote` (passed, reason, checks) or None. FactoryError names a malformed plan.
    """
    path = Path(run_dir) / "training_plan.json"
    plan = read_json(path, missing={})
    if not isinstance(plan, dict):
        raise FactoryError(f"{path}: (root): expected a JSON object, found {type(plan).__name__}")
    steps = plan.get("steps")
    if steps is not None and not (isinstance(steps, list) and all(isinstance(x, dict) for x in steps)):
        raise FactoryError(f"{path}: steps: a list of objects expected")
    if steps:
        return list(steps)
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    return [{"name": "train", "method": train.get("method") or config.get("method"), "data": "data",
             "status": "trained", "settings": train, "promote": None}] if train else []


# --- a whole run, or a build's stage directories ------------------------------------------------------

def gather(dirs: dict[str, Path | None], settings: dict[str, Any] | None = None) -> Evidence:
    """Read the records from stage directories (decide, eval-baseline, eval-candidate, train, dataset).

    A run directory holds them all: pass it under every name (or use `read_run`).
    """
    ev = Evidence(settings=dict(settings or {}))
    d = {k: Path(v) for k, v in dirs.items() if v is not None}
    if "decide" in d:
        ev.decision = _record(ev, d["decide"] / "decision.json", Decision)
    for role in ROLES:
        root = d.get(f"eval-{role}")
        if root is None:
            continue
        rec = _record(ev, root / f"eval-{role}.json", EvalRecord)
        setattr(ev, role, rec)
        if rec is not None:
            ev.samples[role], problems = load_samples(rec, root)
            ev.problems += problems
    if "train" in d:
        ev.train = _record(ev, d["train"] / "train.json", TrainSummary)
        ev.log = _record(ev, d["train"] / "train.log", TrainLogLine, read_jsonl) or []
    if "dataset" in d:
        ev.dataset = _record(ev, d["dataset"] / "dataset.json", DatasetRecord)
    return ev


def settings_of(config: RunConfig | None) -> dict[str, Any]:
    """What the report and the summaries show of a run's config: recipe, goal, owner, primary, regression."""
    if config is None:
        return {}
    evals = config.evals if isinstance(config.evals, dict) else {}
    return {"recipe": config.recipe, "goal": config.goal, "owner": config.owner,
            "primary": evals.get("primary"), "regression": evals.get("regression")}


def read_run(run_dir: Path, *, samples: bool = True) -> Evidence:
    """Every record of a run directory. `samples=False` skips the samples files (and their digests)."""
    run_dir = Path(run_dir)
    ev = Evidence()
    ev.config = _record(ev, run_dir / "config.json", RunConfig)
    ev.settings = settings_of(ev.config)
    ev.manifest = _record(ev, run_dir / "run_manifest.json", RunManifest)
    dirs: dict[str, Path | None] = {k: run_dir for k in STAGE_DIRS}
    if not samples:
        for role in ROLES:
            setattr(ev, role, _record(ev, run_dir / f"eval-{role}.json", EvalRecord))
        dirs = {k: v for k, v in dirs.items() if not k.startswith("eval-")}
    rest = gather(dirs)
    for name in ("decision", "train", "log", "dataset", *(ROLES if samples else ())):
        setattr(ev, name, getattr(rest, name))
    ev.samples = rest.samples
    ev.problems += rest.problems
    for k, v in rest.unreadable.items():
        ev.unreadable.setdefault(k, v)
    ev.artifact = _record(ev, run_dir / "artifact.json", Artifact)
    ev.events = _record(ev, run_dir / "events.jsonl", Event, read_jsonl) or []
    ev.stops, problems = read_stops(run_dir)
    for text in problems:
        _problem(ev, text.split(":", 1)[0], text)
    try:
        ev.steps = training_steps(run_dir, ev.config_values())
    except FactoryError as e:
        _problem(ev, "training_plan.json", str(e))
    return ev
