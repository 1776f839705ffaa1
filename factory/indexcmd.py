"""`factory sql`, `factory runs` and `factory index`: the commands over the run index.

The index itself (tables, refresh, self-healing reads) is `factory.index`; these print its answers.
duckdb and rich are imported inside functions: `factory --help` must not pay for them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from factory.errors import FactoryError

FORMATS = ("table", "csv", "json")


def cell(v: Any) -> str:
    """A value as a table cell shows it, in the terminal and on the web pages: empty for null."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def print_result(cols: list[str], rows: list[tuple], fmt: str = "table", out=None) -> None:
    out = out or sys.stdout
    if fmt == "csv":
        import csv

        w = csv.writer(out, lineterminator="\n")
        w.writerow(cols)
        w.writerows(["" if v is None else v for v in r] for r in rows)
    elif fmt == "json":
        out.write(json.dumps([dict(zip(cols, r)) for r in rows], default=str, indent=1) + "\n")
    elif fmt == "table":
        from rich.console import Console
        from rich.table import Table

        t = Table(show_edge=False, header_style="bold")
        for c in cols:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*(cell(v) for v in r))
        tty = hasattr(out, "isatty") and out.isatty()
        Console(file=out, width=None if tty else 240).print(t)  # piped output is not folded at 80 columns
        out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")
    else:
        raise FactoryError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")


def _shell(runs_dir: Path, fmt: str) -> int:
    """A small SQL shell: statements end with ';' (or a line on its own when stdin is not a terminal)."""
    from factory import index

    tty = sys.stdin.isatty()
    if tty:
        print(f"factory sql on {index.index_path(runs_dir)}; end statements with ';', .tables lists tables, .quit leaves")
    buf: list[str] = []
    status = 0
    while True:
        if tty:
            sys.stdout.write("sql> " if not buf else " ...> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        s = line.strip()
        if not buf and s in (".quit", ".exit", "\\q"):
            break
        if not buf and s == ".tables":
            s = "SELECT table_name, table_type FROM information_schema.tables ORDER BY table_name;"
        if not s and not buf:
            continue
        buf.append(s)
        stmt = " ".join(buf).strip()
        if not stmt.endswith(";") and tty:
            continue
        buf = []
        try:
            cols, rows = index.query_healed(runs_dir, stmt)
            if cols:
                print_result(cols, rows, fmt)
        except FactoryError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
    return status


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def cli_sql(root: Path, query_text: str | None, fmt: str = "table") -> int:
    """`factory sql [QUERY] [--format table|csv|json]`; with no query, an interactive shell."""
    from factory import index

    runs_dir = Path(root) / "runs"
    if fmt not in FORMATS:
        print(f"factory sql: --format: {fmt!r} is not one of {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    try:
        index.ready(runs_dir, log=_log)
        if query_text is None:
            return _shell(runs_dir, fmt)
        cols, rows = index.query_healed(runs_dir, query_text)
        print_result(cols, rows, fmt)
        return 0
    except FactoryError as e:
        print(f"factory sql: {e}", file=sys.stderr)
        return 1


def cli_runs(root: Path, limit: int = 20) -> int:
    """`factory runs`: the newest runs with their decision, primary scores and first regression suite's change."""
    from factory import index

    runs_dir = Path(root) / "runs"
    try:
        index.ready(runs_dir, log=_log)
        cols, rows = index.query_healed(
            runs_dir,
            "SELECT run_id, created::DATE AS date, recipe, method, lr, decision, primary_suite, "
            "round(primary_baseline, 3) AS baseline, round(primary_candidate, 3) AS candidate, "
            "regression_delta_pp FROM run_summary ORDER BY created DESC, run_id LIMIT ?",
            [int(limit)],
        )
    except FactoryError as e:
        print(f"factory runs: {e}", file=sys.stderr)
        return 1
    if not rows:
        print(f"no complete runs under {runs_dir}")
        return 0
    print_result(cols, rows, "table")
    return 0


def cli_index(runs_dir: Path, runs: list[str] | None = None, deep: bool = False, rebuild: bool = False) -> int:
    """`factory index [RUN ...] [--deep] [--rebuild] [--runs-dir DIR]`: refresh (or rebuild) the index and
    print what it did, as one JSON object."""
    from factory import index

    res = index.rebuild(runs_dir) if rebuild else index.refresh(runs_dir, deep=deep, only=runs or None)
    print(json.dumps(res, sort_keys=True))
    return 0
