"""`factory run validate <run>` and `factory run render <run>`: one run directory, in the terminal.

Domain work lives in factory.validate (the checks) and factory.evidence and factory.report (what the
records say); this module prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from factory.errors import FactoryError

MARKERS = ("config.json", "decision.json", "run_manifest.json", "eval-candidate.json", "eval-baseline.json",
             "train.json")


def cli_validate(run_dir: str) -> int:
    """Print each problem of a run directory; exit code 0 when valid, 1 when not."""
    from rich.console import Console

    from factory.validate import validate_run

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

    from factory.compare import step_cell
    from factory.evidence import read_run
    from factory.report import _unit, criteria_rows, fmt

    path = Path(run_dir)
    if not path.is_dir():
        raise FactoryError(f"{run_dir}: not a run directory")
    if not any((path / n).is_file() for n in MARKERS):
        raise FactoryError(f"{run_dir}: not a run directory (no config.json, decision.json, run_manifest.json, "
                           "eval or train record)")
    ev = read_run(path)
    ev.require("config.json")
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
        console.print(Panel(body, title=f"{ev.settings.get('recipe') or path.name}: {d.decision.upper()}",
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
    for name in ev.suite_names():
        b, c = ev.suite("baseline", name), ev.suite("candidate", name)
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
        ev.require("training_plan.json")
        t = Table(title="training steps")
        for h in ("#", "step"):
            t.add_column(h)
        for i, step in enumerate(ev.steps, 1):
            t.add_row(str(i), step_cell(step))
        console.print(t)
    for p in ev.problems:
        console.print(f"[red]✗[/red] {p}")
    return 0
