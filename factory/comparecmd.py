"""`factory compare <run> <run> ...`: prints what factory.compare finds, one table a section."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from factory.errors import FactoryError

MAX_FLIPS = 20  # flipped samples shown per suite; the count is always complete


def _delta(c: dict[str, Any] | None, first: dict[str, Any] | None) -> str:
    if not c or not first or c.get("candidate") is None or first.get("candidate") is None:
        return ""
    d = c["candidate"] - first["candidate"]
    both_rates = all(0.0 <= x <= 1.0 for x in (c["candidate"], first["candidate"]))
    return f"{d * 100:+.1f}pp" if both_rates else f"{d:+.4g}"


def _table(title: str, firsts: list[str], runs: int, fold: bool = True) -> Any:
    """A rich table with the given first columns and one column a run ([1], [2], ...)."""
    from rich.table import Table

    t = Table(title=title, show_edge=False, header_style="bold")
    for h in firsts:
        t.add_column(h)
    for i in range(runs):
        t.add_column(f"[{i + 1}]", overflow="fold" if fold else "ellipsis")
    return t


def cli_compare(root: Path, runs: list[str]) -> int:
    """Print the comparison; 0, or 1 with a one-line error."""
    from factory.compare import compare, show

    try:
        res = compare(Path(root), runs)
    except FactoryError as e:
        print(f"factory compare: {e}", file=sys.stderr)
        return 1
    from rich.console import Console

    con = Console(width=None if sys.stdout.isatty() else 200)
    names = res["runs"]
    short = [f"[{i + 1}] {n}" for i, n in enumerate(names)]
    for s in short:
        con.print(s)

    n = len(names)
    t = _table("decision", [""], n)
    t.add_row("decision", *[show(d) for d in res["decisions"]])
    t.add_row("reason", *[show(d) for d in res["reasons"]])
    con.print(t)

    t = _table("training steps", ["#"], n)
    for pos, cells in res["steps"]:
        t.add_row(str(pos), *cells)
    con.print(t)

    t = _table("config differences", ["key"], n)
    for k, vals in res["config"]:
        t.add_row(k, *[show(v) for v in vals])
    con.print(t if res["config"] else "config: identical")

    t = _table("stage keys that differ", ["stage"], n, fold=False)
    for stage, vals in res["stage_keys"]:
        t.add_row(stage, *[(v or "-")[:12] for v in vals])
    con.print(t if res["stage_keys"] else "stage keys: identical")
    if res["shared_stages"]:
        con.print("shared stages (same key, built once): " + ", ".join(res["shared_stages"]))

    t = _table("criteria (baseline -> candidate; change of the candidate against [1])", ["criterion", "threshold"], n,
               fold=False)
    for name, metric, per_run in res["criteria"]:
        first = per_run[0]
        cells = []
        for i, c in enumerate(per_run):
            if c is None:
                cells.append("-")
                continue
            mark = "pass" if c.get("passed") else "FAIL"
            text = f"{show(c.get('baseline'))} -> {show(c.get('candidate'))} {mark}"
            if i:
                text += f" {_delta(c, first)}"
            cells.append(text.strip())
        thr = next((c.get("threshold") for c in per_run if c), None)
        t.add_row(f"{name} ({metric})", show(thr), *cells)
    con.print(t)

    flipped = res["flipped"]
    if not flipped:
        con.print("flipped samples: none (the candidates agree on every sample they share)")
    for suite, flips in flipped.items():
        t = _table(f"{suite}: {len(flips)} sample(s) whose correctness differs", ["sample"], n, fold=False)
        for sid, vals in flips[:MAX_FLIPS]:
            t.add_row(sid, *["right" if v else "wrong" for v in vals])
        if len(flips) > MAX_FLIPS:
            t.add_row(f"... {len(flips) - MAX_FLIPS} more", *[""] * n)
        con.print(t)
    return 0
