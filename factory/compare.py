"""`factory compare <run> <run> ...`: what differs between runs, side by side.

Four sections: the resolved config values that differ, the stage keys that
differ (so you see which stages were rebuilt and which were shared), every
criterion with each run's baseline and candidate values and the candidate's
change against the first run, and the samples whose correctness flipped
between the runs' candidates. Everything is read from the run directories,
so it works without the index.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from factory.errors import FactoryError

MAX_FLIPS = 20  # flipped samples shown per suite; the count is always complete


def _load(path: Path, lists: tuple[str, ...] = ()) -> dict[str, Any]:
    """A record as a dict; `lists` name fields that must be lists of objects (one line if not)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise FactoryError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise FactoryError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except IsADirectoryError:
        raise FactoryError(f"{path}: a directory, not a file") from None
    except RecursionError:
        raise FactoryError(f"{path}: nested too deeply") from None
    if not isinstance(data, dict):
        raise FactoryError(f"{path}: (root): a JSON object expected, found {type(data).__name__}")
    for field in lists:
        v = data.get(field)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, dict) for x in v)):
            raise FactoryError(f"{path}: {field}: a list of objects expected")
    for field in ("stage_keys",):
        if data.get(field) is not None and not isinstance(data[field], dict):
            raise FactoryError(f"{path}: {field}: an object expected")
    return data


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _show(v: Any) -> str:
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


def _samples(run: Path, ev: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """suite -> sample id -> sample record, for one eval record."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for s in ev.get("suites") or []:
        ref = s.get("samples") or {}
        if not isinstance(ref, dict) or not isinstance(ref.get("path"), str) or not isinstance(s.get("suite"), str):
            continue
        path = run / ref["path"]
        if not path.resolve().is_relative_to(run.resolve()):
            raise FactoryError(f"{run / 'eval-candidate.json'}: suites: samples.path {ref['path']!r} "
                               "leads outside the run directory")
        if not path.is_file():
            continue
        rows, n = {}, 0
        try:
            with open(path) as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        rec = json.loads(line)
                        if not isinstance(rec, dict):
                            raise ValueError("not a JSON object")
                        rows[str(rec.get("id"))] = rec
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise FactoryError(f"{path}:{n}: not a sample record ({str(e).splitlines()[0]})") from None
        out[s["suite"]] = rows
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


def training_steps(run: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's training steps, in order: its training_plan.json, or its one train section."""
    plan = _load(run / "training_plan.json", ("steps",))
    if plan.get("steps"):
        return [s for s in plan["steps"] if isinstance(s, dict)]
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    return [{"name": "train", "method": train.get("method") or config.get("method"), "data": "data",
             "status": "trained", "settings": train, "promote": None}] if train else []


def _step_cell(step: dict[str, Any] | None) -> str:
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
    return [(i + 1, [_step_cell(s[i] if i < len(s) else None) for s in per_run]) for i in range(depth)]


def compare(root: Path, refs: list[str]) -> dict[str, Any]:
    """Everything `factory compare` prints, as data."""
    if len(refs) < 2:
        raise FactoryError("compare: name at least two runs")
    runs = [_resolve(Path(root), r) for r in refs]
    configs = [_load(r / "config.json") for r in runs]
    manifests = [_load(r / "run_manifest.json") for r in runs]
    decisions = [_load(r / "decision.json", ("criteria",)) for r in runs]
    evals = [_load(r / "eval-candidate.json", ("suites",)) for r in runs]
    keys = [m.get("stage_keys") or c.get("stage_keys") or {} for m, c in zip(manifests, configs)]
    differ, same = stage_key_differences(keys)
    from factory import pairing

    # an imported run names its suites and samples its own way: pair by sample id or prompt digest
    paired = pairing.compare_runs(runs) if any(m.get("imported") is True for m in manifests) else []
    return {
        "paired": paired,
        "runs": [r.name for r in runs],
        "decisions": [d.get("decision") for d in decisions],
        "reasons": [d.get("reason") for d in decisions],
        "config": config_differences(configs),
        "stage_keys": differ,
        "shared_stages": same,
        "criteria": criteria_table(decisions),
        "steps": steps_table([training_steps(r, c) for r, c in zip(runs, configs)]),
        "flipped": flipped_samples([_samples(r, e) for r, e in zip(runs, evals)]),
    }


def _delta(c: dict[str, Any] | None, first: dict[str, Any] | None) -> str:
    if not c or not first or c.get("candidate") is None or first.get("candidate") is None:
        return ""
    d = c["candidate"] - first["candidate"]
    both_rates = all(0.0 <= x <= 1.0 for x in (c["candidate"], first["candidate"]))
    return f"{d * 100:+.1f}pp" if both_rates else f"{d:+.4g}"


def cli_compare(root: Path, runs: list[str]) -> int:
    """Print the comparison; 0, or 1 with a one-line error."""
    try:
        res = compare(Path(root), runs)
    except FactoryError as e:
        print(f"factory compare: {e}", file=sys.stderr)
        return 1
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 200)
    names = res["runs"]
    short = [f"[{i + 1}] {n}" for i, n in enumerate(names)]
    for s in short:
        con.print(s)

    t = Table(title="decision", show_edge=False, header_style="bold")
    t.add_column("")
    for i in range(len(names)):
        t.add_column(f"[{i + 1}]", overflow="fold")
    t.add_row("decision", *[_show(d) for d in res["decisions"]])
    t.add_row("reason", *[_show(d) for d in res["reasons"]])
    con.print(t)

    t = Table(title="training steps", show_edge=False, header_style="bold")
    t.add_column("#")
    for i in range(len(names)):
        t.add_column(f"[{i + 1}]", overflow="fold")
    for pos, cells in res["steps"]:
        t.add_row(str(pos), *cells)
    con.print(t)

    t = Table(title="config differences", show_edge=False, header_style="bold")
    t.add_column("key")
    for i in range(len(names)):
        t.add_column(f"[{i + 1}]", overflow="fold")
    for k, vals in res["config"]:
        t.add_row(k, *[_show(v) for v in vals])
    con.print(t if res["config"] else "config: identical")

    t = Table(title="stage keys that differ", show_edge=False, header_style="bold")
    t.add_column("stage")
    for i in range(len(names)):
        t.add_column(f"[{i + 1}]")
    for stage, vals in res["stage_keys"]:
        t.add_row(stage, *[(v or "-")[:12] for v in vals])
    con.print(t if res["stage_keys"] else "stage keys: identical")
    if res["shared_stages"]:
        con.print("shared stages (same key, built once): " + ", ".join(res["shared_stages"]))

    t = Table(title="criteria (baseline -> candidate; change of the candidate against [1])",
              show_edge=False, header_style="bold")
    t.add_column("criterion")
    t.add_column("threshold")
    for i in range(len(names)):
        t.add_column(f"[{i + 1}]")
    for name, metric, per_run in res["criteria"]:
        first = per_run[0]
        cells = []
        for i, c in enumerate(per_run):
            if c is None:
                cells.append("-")
                continue
            mark = "pass" if c.get("passed") else "FAIL"
            text = f"{_show(c.get('baseline'))} -> {_show(c.get('candidate'))} {mark}"
            if i:
                text += f" {_delta(c, first)}"
            cells.append(text.strip())
        thr = next((c.get("threshold") for c in per_run if c), None)
        t.add_row(f"{name} ({metric})", _show(thr), *cells)
    con.print(t)

    _print_paired(con, res)
    flipped = res["flipped"]
    if not flipped:
        con.print("flipped samples: none (the candidates agree on every sample they share)")
    for suite, flips in flipped.items():
        t = Table(title=f"{suite}: {len(flips)} sample(s) whose correctness differs", show_edge=False,
                  header_style="bold")
        t.add_column("sample")
        for i in range(len(names)):
            t.add_column(f"[{i + 1}]")
        for sid, vals in flips[:MAX_FLIPS]:
            t.add_row(sid, *["right" if v else "wrong" for v in vals])
        if len(flips) > MAX_FLIPS:
            t.add_row(f"... {len(flips) - MAX_FLIPS} more", *[""] * len(names))
        con.print(t)
    return 0


def _print_paired(con: Any, res: dict[str, Any]) -> None:
    """The paired statistics of an imported run against the others, one table per pair of evaluations."""
    from rich.table import Table

    for p in res.get("paired") or []:
        i = p["run"] + 1
        t = Table(title=f"paired samples: [1] {p['role_a']} vs [{i}] {p['role_b']} (the gate's paired statistics)",
                  show_edge=False, header_style="bold")
        for col in ("suite [1]", f"suite [{i}]", "paired by", "paired", "unpaired [1]", f"unpaired [{i}]",
                    "[1]", f"[{i}]", "delta", "interval", "McNemar p"):
            t.add_column(col)
        for r in p["rows"]:
            if not r["paired"]:
                t.add_row(r["suite"], "-", "-", "0", str(r["only_a"]), "-", *["-"] * 5)
                continue
            conf = f"{r['confidence'] * 100:g}%"
            t.add_row(r["suite"], r["other"], r["by"], str(r["paired"]), str(r["only_a"]), str(r["only_b"]),
                      f"{r['a']:.3f}", f"{r['b']:.3f}", f"{r['delta'] * 100:+.1f}pp",
                      f"{conf} {r['interval'][0] * 100:+.1f}..{r['interval'][1] * 100:+.1f}pp",
                      f"{r['p_value']:.3g}")
        con.print(t)
