"""Run validation and the terminal summary: `factory run validate <run>` and `factory run render <run>`.

`validate_run` checks every file of a run directory against its record model
and JSON Schema (the ones `factory.records.export_schemas` writes to
docs/schemas/), then cross-checks the digests between files: each samples file
against the digest in its eval record, the adapter files against train.json
and artifact.json, the adapter directory against the candidate's
adapter_digest, base and held-out digests across records, and every file named
in run_manifest.json. Finally it re-runs the gate on the evidence as it now
is: a decision.json that no longer follows from its evidence is a problem.
Digests here are always recomputed from the bytes (no stat cache): the point
is to catch a file changed after the fact.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from factory import hashing
from factory.errors import FactoryError
from factory.records import (
    JSONL_FILES,
    RUN_FILES,
    Artifact,
    DatasetRecord,
    Decision,
    EvalRecord,
    RunConfig,
    RunManifest,
    TrainSummary,
    read_jsonl,
    read_record,
)

REQUIRED = (
    "config.json",
    "dataset.json",
    "train.json",
    "train.log",
    "eval-baseline.json",
    "eval-candidate.json",
    "decision.json",
)


# `factory eval` and `factory import` runs: an evaluation, no training and no decision
EVAL_ONLY_REQUIRED = ("config.json", "run_manifest.json")


def _eval_only(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "run_manifest.json").read_text()).get("eval_only") is True
    except (OSError, ValueError, AttributeError):
        return False


def _schema_problems(path: Path, cls: Any, data: Any) -> list[str]:
    """JSON Schema check of one document; empty when jsonschema is not installed (pydantic already checked)."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - a dev dependency
        return []
    validator = jsonschema.Draft202012Validator(cls.model_json_schema())
    out = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))[:5]:
        loc = ".".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{path.name}: {loc}: {err.message} (JSON Schema)")
    return out


def _tree_digest_uncached(root: Path) -> str:
    return hashing.digest_json({p.relative_to(root).as_posix(): hashing.hash_file(p) for p in hashing.tree_files(root)})


def _check_refs(run_dir: Path, refs: list[Any], owner: str) -> tuple[list[str], dict[str, str]]:
    problems = []
    digests = {}
    for ref in refs:
        digests[ref.path] = ref.digest
        p = run_dir / ref.path
        if not p.resolve().is_relative_to(run_dir.resolve()):
            problems.append(f"{ref.path}: leads outside the run directory (named by {owner})")
            continue
        if not p.is_file():
            problems.append(f"{ref.path}: missing (named by {owner})")
            continue
        actual = hashing.hash_file(p)
        if actual != ref.digest:
            problems.append(f"{ref.path}: digest {actual[:12]} does not match {owner} ({ref.digest[:12]})")
        if ref.size is not None and p.stat().st_size != ref.size:
            problems.append(f"{ref.path}: size {p.stat().st_size} does not match {owner} ({ref.size})")
    return problems, digests


def validate_run(run_dir: Path) -> list[str]:
    """Problems with a run directory, each naming a file; an empty list means the run is valid."""
    from factory.gate import decide, load_samples

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return [f"{run_dir}: not a run directory"]
    problems: list[str] = []
    records: dict[str, Any] = {}

    # A check that failed upstream (a training step's promotion, the power check) stops what follows:
    # those stages left stop records in stopped/ instead of their files, and the decision is the check's.
    stops: dict[str, dict[str, Any]] = {}
    if (run_dir / "stopped").is_dir():
        for p in sorted((run_dir / "stopped").glob("*.json")):
            try:
                stops[p.stem] = json.loads(p.read_text())
            except (OSError, ValueError, UnicodeDecodeError):
                problems.append(f"stopped/{p.name}: not a readable stop record")
    explained = {"eval-candidate.json": "eval-candidate" in stops,
                 "train.json": any(s.startswith("train") for s in stops),
                 "train.log": any(s.startswith("train") for s in stops)}
    eval_only = _eval_only(run_dir)
    for name in EVAL_ONLY_REQUIRED if eval_only else REQUIRED:
        if not (run_dir / name).exists() and not explained.get(name):
            problems.append(f"{name}: missing")
    if eval_only and not any((run_dir / n).exists() for n in ("eval-baseline.json", "eval-candidate.json")):
        problems.append("eval-baseline.json: missing (an eval-only run holds an eval record)")

    for name, cls in RUN_FILES.items():
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            records[name] = read_record(path, cls)
        except FactoryError as e:
            problems.append(str(e).replace(str(path), name))
            continue
        problems += _schema_problems(path, cls, json.loads(path.read_text()))
    for name, cls in JSONL_FILES.items():
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            lines = read_jsonl(path, cls)
        except FactoryError as e:
            problems.append(str(e).replace(str(path), name))
            continue
        if name == "train.log":
            records[name] = lines

    # Samples files against the eval records.
    samples: dict[str, dict[str, list[dict]]] = {"baseline": {}, "candidate": {}}
    for role in ("baseline", "candidate"):
        rec: EvalRecord | None = records.get(f"eval-{role}.json")
        if rec is None:
            continue
        if rec.role != role:
            problems.append(f"eval-{role}.json: role is {rec.role!r}")
        samples[role], found = load_samples(rec, run_dir)
        problems += found

    base_rec: EvalRecord | None = records.get("eval-baseline.json")
    cand_rec: EvalRecord | None = records.get("eval-candidate.json")
    train: TrainSummary | None = records.get("train.json")
    artifact: Artifact | None = records.get("artifact.json")
    dataset: DatasetRecord | None = records.get("dataset.json")

    # Adapter files: on disk vs train.json vs artifact.json vs the candidate's adapter digest.
    train_digests: dict[str, str] = {}
    if train is not None:
        found, train_digests = _check_refs(run_dir, train.adapter, "train.json")
        problems += found
    if artifact is not None:
        found, art_digests = _check_refs(run_dir, artifact.adapter, "artifact.json")
        problems += [p for p in found if p not in problems]
        for path, digest in art_digests.items():
            if path in train_digests and train_digests[path] != digest:
                problems.append(f"artifact.json: {path} digest differs from train.json")
        if cand_rec is not None and cand_rec.model.base_digest != artifact.base_digest:
            problems.append("artifact.json: base_digest differs from eval-candidate.json model.base_digest")
        if artifact.shipped and records.get("decision.json") is not None and records["decision.json"].decision != "ship":
            problems.append(f"artifact.json: shipped, but decision.json says {records['decision.json'].decision}")
    if cand_rec is not None and cand_rec.model.adapter_digest and (run_dir / "adapter").is_dir():
        actual = _tree_digest_uncached(run_dir / "adapter")
        if actual != cand_rec.model.adapter_digest:
            problems.append(
                f"adapter/: digest {actual[:12]} does not match eval-candidate.json model.adapter_digest "
                f"({cand_rec.model.adapter_digest[:12]})"
            )

    # Digests shared between records.
    if base_rec is not None and cand_rec is not None:
        if base_rec.model.base_digest != cand_rec.model.base_digest:
            problems.append("eval-candidate.json: model.base_digest differs from eval-baseline.json")
        if base_rec.heldout_digest != cand_rec.heldout_digest:
            problems.append("eval-candidate.json: heldout_digest differs from eval-baseline.json")
    held = dataset.splits.get("heldout") if dataset is not None else None
    for rec in (base_rec, cand_rec):
        if rec is not None and held is not None and rec.heldout_digest and rec.heldout_digest != held.digest:
            problems.append(f"eval-{rec.role}.json: heldout_digest differs from dataset.json splits.heldout")

    manifest: RunManifest | None = records.get("run_manifest.json")
    if manifest is not None:
        for name, digest in sorted(manifest.files.items()):
            p = run_dir / name
            if not p.resolve().is_relative_to(run_dir.resolve()):
                problems.append(f"{name}: leads outside the run directory (named by run_manifest.json)")
            elif not p.exists():
                problems.append(f"{name}: missing (named by run_manifest.json)")
            elif p.is_file() and hashing.hash_file(p) != digest:
                problems.append(f"{name}: digest does not match run_manifest.json")
            elif p.is_dir() and _tree_digest_uncached(p) != digest:
                problems.append(f"{name}: digest does not match run_manifest.json")

    # The decision must still follow from the evidence.
    decision: Decision | None = records.get("decision.json")
    config: RunConfig | None = records.get("config.json")
    stop = stops.get("eval-candidate")
    if decision is not None and isinstance(stop, dict) and isinstance(stop.get("verdict"), dict):
        verdict = stop["verdict"]
        if decision.decision != verdict.get("decision") or decision.reason != verdict.get("reason"):
            problems.append(f"decision.json: says {decision.decision} ({decision.reason}), but the check that stopped "
                            f"the candidate, {stop.get('stopped_by')}, says {verdict.get('decision')} "
                            f"({verdict.get('reason')})")
    if decision is not None and config is not None and base_rec is not None and cand_rec is not None:
        evals = config.evals or {}
        primary = evals.get("primary")
        if primary:
            try:
                again = decide(
                    base_rec, cand_rec, samples, train, config.criteria or {}, primary,
                    list(evals.get("regression") or []), train_log=records.get("train.log"),
                    problems=[p for p in problems if p.startswith("samples/")],
                )
            except FactoryError as e:
                problems.append(f"decision.json: cannot re-run the gate: {e}")
            else:
                from factory.gate import rederive

                problems.extend(rederive(decision, again))
    return problems


def cli_validate(run_dir: str) -> int:
    """Print each problem of a run directory; exit code 0 when valid, 1 when not."""
    from rich.console import Console

    console = Console(highlight=False)
    problems = validate_run(Path(run_dir))
    if not problems:
        console.print(f"[green]valid[/green]: {run_dir}")
        return 0
    for p in problems:
        console.print(f"[red]✗[/red] {p}", markup=True, soft_wrap=True)
    console.print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {run_dir}")
    return 1


def cli_render(run_dir: str) -> int:
    """Print a terminal summary of a run: decision, criteria, scores and training."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    from factory.report import _suite_names, _unit, criteria_rows, fmt, gather

    path = Path(run_dir)
    if not path.is_dir():
        raise FactoryError(f"{run_dir}: not a run directory")
    if not any((path / n).is_file() for n in ("config.json", "decision.json", "run_manifest.json",
                                               "eval-candidate.json", "eval-baseline.json", "train.json")):
        raise FactoryError(f"{run_dir}: not a run directory (no config.json, decision.json, run_manifest.json, "
                           "eval or train record)")
    config: dict[str, Any] = {}
    if (path / "config.json").is_file():
        raw = read_record(path / "config.json", RunConfig)
        evals = raw.evals if isinstance(raw.evals, dict) else {}
        config = {"recipe": raw.recipe, "goal": raw.goal, "primary": evals.get("primary")}
    ev = gather({k: path for k in ("decide", "eval-baseline", "eval-candidate", "train", "dataset")}, config)
    tty = sys.stdout.isatty()
    # piped or redirected output is not cut at 80 columns
    console = Console(highlight=False, width=None if tty else 200)
    colour = {"ship": "green", "rework": "yellow", "reject": "red", "blocked": "magenta"}
    d = ev.decision
    if d is not None:
        body = f"[bold]{d.reason}[/bold]"
        if d.next_action:
            body += f"\nnext: {d.next_action}"
        for b in d.blocked_by:
            body += f"\nblocked by: {b}"
        console.print(Panel(body, title=f"{config.get('recipe') or path.name}: {d.decision.upper()}",
                            border_style=colour.get(d.decision, "white"), expand=tty))
    else:
        console.print(Panel("no decision.json yet", title=str(path.name), expand=tty))

    rows = criteria_rows(ev)
    if rows:
        t = Table(title="criteria")
        for h in ("criterion", "metric", "baseline", "candidate", "threshold", "delta [95% CI]", "p", "pass"):
            t.add_column(h)
        for r in rows:
            ok = r["pass"] == "yes"
            t.add_row(r["criterion"], r["metric"], r["baseline"], r["candidate"], r["threshold"], r["delta"], r["p"],
                      "[green]yes[/green]" if ok else "[red]no[/red]")
        console.print(t)

    t = Table(title="scores")
    for h in ("suite", "metric", "baseline", "candidate"):
        t.add_column(h)
    for name in _suite_names(ev):
        b = next((s for s in ev.baseline.suites if s.suite == name), None) if ev.baseline else None
        c = next((s for s in ev.candidate.suites if s.suite == name), None) if ev.candidate else None
        ref = c or b
        if ref is None or ref.status != "ok":
            t.add_row(name, "", "", f"[red]failed[/red] {ref.error if ref else ''}")
            continue
        m = ref.primary_metric
        bs = b.scores.get(m) if b and b.status == "ok" else None
        cs = c.scores.get(m) if c and c.status == "ok" else None
        unit = _unit(cs or bs)
        t.add_row(name, m, fmt(bs.value if bs else None, unit), fmt(cs.value if cs else None, unit))
    console.print(t)

    if ev.train is not None:
        tr = ev.train
        console.print(
            f"training: {tr.method}, {tr.steps} steps, final loss {tr.final_loss:.4f}, "
            + (f"{tr.seconds:.1f} s, " if tr.seconds is not None else "")
            + (f"{tr.tokens_per_s:,.0f} tokens/s " if tr.tokens_per_s is not None else "")
            + f"on {tr.device}"
        )
    if (path / "training_plan.json").is_file():
        from factory.compare import _step_cell, training_steps

        t = Table(title="training steps")
        for h in ("#", "step"):
            t.add_column(h)
        for i, step in enumerate(training_steps(path, {}), 1):
            t.add_row(str(i), _step_cell(step))
        console.print(t)
    for p in ev.problems:
        console.print(f"[red]✗[/red] {p}")
    return 0
