"""`factory compare <run> <run> ...`: what differs between runs, side by side.

Four sections: the resolved config values that differ, the stage keys that
differ (so you see which stages were rebuilt and which were shared), every
criterion with each run's baseline and candidate values and the candidate's
change against the first run, and the samples whose correctness flipped
between the runs' candidates. Everything is read from the run directories
(through `factory.evidence`), so it works without the index. `compare()`
returns the data; `factory.comparecmd` prints it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from factory.errors import FactoryError
from factory.evidence import read_run


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def show(v: Any) -> str:
    """A config or criterion value in one short cell."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _resolve(root: Path, ref: str) -> Path:
    from factory.runs import resolve_run

    return resolve_run(root, ref)


def config_differences(configs: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """(dotted key, value per run) for every config value that is not the same in all runs."""
    flat = [_flatten({k: v for k, v in c.items() if k != "stage_keys"}) for c in configs]
    keys = sorted(set().union(*flat))
    missing = object()
    out = []
    for k in keys:
        vals = [f.get(k, missing) for f in flat]
        if any(json.dumps(v, sort_keys=True, default=str) != json.dumps(vals[0], sort_keys=True, default=str)
               for v in vals):
            out.append((k, [None if v is missing else v for v in vals]))
    return out


def stage_key_differences(keys: list[dict[str, str]]) -> tuple[list[tuple[str, list[str | None]]], list[str]]:
    """Stages whose keys differ (with each run's key) and the stages all runs share."""
    names = sorted(set().union(*keys))
    differ, same = [], []
    for n in names:
        vals = [k.get(n) for k in keys]
        (same if len(set(vals)) == 1 and vals[0] is not None else differ).append(n)
    return [(n, [k.get(n) for k in keys]) for n in differ], same


def criteria_table(decisions: list[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any] | None]]]:
    """(criterion name, metric, the criterion record of each run) for every criterion of any run."""
    order: list[tuple[str, str]] = []
    for d in decisions:
        for c in d.get("criteria", []):
            if (c.get("name"), c.get("metric")) not in order:
                order.append((c.get("name"), c.get("metric")))
    out = []
    for name, metric in order:
        per_run = []
        for d in decisions:
            per_run.append(next((c for c in d.get("criteria", [])
                                 if c.get("name") == name and c.get("metric") == metric), None))
        out.append((name, metric, per_run))
    return out


def flipped_samples(
    samples: list[dict[str, dict[str, dict[str, Any]]]],
) -> dict[str, list[tuple[str, list[bool | None]]]]:
    """suite -> [(sample id, correct per run)] for samples scored in every run whose correctness differs."""
    suites = sorted(set().union(*samples)) if samples else []
    out = {}
    for suite in suites:
        per_run = [s.get(suite, {}) for s in samples]
        ids = sorted(set().union(*per_run))
        flips = []
        for i in ids:
            vals = [r[i].get("correct") if i in r else None for r in per_run]
            if None in vals:
                continue
            if len(set(vals)) > 1:
                flips.append((i, vals))
        if flips:
            out[suite] = flips
    return out


def step_cell(step: dict[str, Any] | None) -> str:
    if not step:
        return "-"
    st = step.get("settings") if isinstance(step.get("settings"), dict) else {}
    text = f"{step.get('name')}: {step.get('method')} on {step.get('data')}, {st.get('steps')} steps, lr {st.get('lr')}"
    if step.get("status") == "stopped":
        text += ", not trained (stopped)"
    promote = step.get("promote") if isinstance(step.get("promote"), dict) else None
    if promote and promote.get("passed") is not None:
        text += "; promoted" if promote["passed"] else f"; not promoted ({promote.get('reason')})"
    return text


def steps_table(per_run: list[list[dict[str, Any]]]) -> list[tuple[int, list[str]]]:
    """(position, one cell per run) for every step position any run has."""
    depth = max((len(s) for s in per_run), default=0)
    return [(i + 1, [step_cell(s[i] if i < len(s) else None) for s in per_run]) for i in range(depth)]


def compare(root: Path, refs: list[str]) -> dict[str, Any]:
    """Everything `factory compare` prints, as data; FactoryError when a run's records cannot be read."""
    if len(refs) < 2:
        raise FactoryError("compare: name at least two runs")
    runs = [_resolve(Path(root), r) for r in refs]
    evidence = [read_run(r) for r in runs]
    for ev in evidence:
        ev.require("config.json", "run_manifest.json", "decision.json", "eval-candidate.json", "training_plan.json")
    decisions = [ev.decision.model_dump(mode="json") if ev.decision is not None else {} for ev in evidence]
    differ, same = stage_key_differences([ev.stage_keys for ev in evidence])
    return {
        "runs": [r.name for r in runs],
        "decisions": [d.get("decision") for d in decisions],
        "reasons": [d.get("reason") for d in decisions],
        "config": config_differences([ev.config_values() for ev in evidence]),
        "stage_keys": differ,
        "shared_stages": same,
        "criteria": criteria_table(decisions),
        "steps": steps_table([ev.steps for ev in evidence]),
        "flipped": flipped_samples([{suite: {str(s["id"]): s for s in rows}
                                     for suite, rows in ev.samples["candidate"].items()} for ev in evidence]),
    }
