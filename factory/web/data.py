"""Reading the index for the pages: one read-only connection per request, closed before the page is sent.

DuckDB lets a file be open for writing by one process only, and a reader blocks
a writer. A build refreshes `runs/index.duckdb` after every run, so the server
never keeps the file open between requests: it opens it read-only, waits
briefly if a refresh holds it, runs its queries and closes it. A new run shows
on the next page load. Queries typed on the SQL page run on a connection with
external access turned off (no files read or written outside the index), must
be one SELECT, and are interrupted after a time limit.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from factory.errors import FactoryError

SQL_TIMEOUT_S = 10.0
OPEN_WAIT_S = 2.0


class IndexUnavailable(FactoryError):
    """The index is missing or stays locked; `hint` says what to do."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


class QueryError(FactoryError):
    """A query typed by a person failed: the DuckDB error, or why it was refused."""


class Reader:
    """`with Reader(runs_dir) as r: r.rows(sql, params)`; the file is open only inside the block."""

    def __init__(self, runs_dir: Path, wait_s: float = OPEN_WAIT_S):
        self.runs_dir = Path(runs_dir)
        self.wait_s = wait_s
        self.con = None

    def __enter__(self) -> "Reader":
        from factory import index

        path = index.index_path(self.runs_dir)
        try:
            self.con = index.connect(self.runs_dir, read_only=True, wait_s=self.wait_s)
        except index.IndexMissing:
            raise IndexUnavailable(
                f"{path} does not exist yet",
                "build a recipe (doit recipe:<name>), or index the run directories that are there with "
                "`factory index`, then reload this page") from None
        except index.IndexBusy as e:
            raise IndexUnavailable(str(e), "a build is updating the index; reload this page in a few seconds") from None
        # nothing typed on the SQL page may read or write files outside the index
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")
        return self

    def __exit__(self, *exc) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

    def rows(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        cols, rows = self.table(sql, params)
        return [dict(zip(cols, r)) for r in rows]

    def table(self, sql: str, params: Any = None) -> tuple[list[str], list[tuple]]:
        cur = self.con.execute(sql, params) if params is not None else self.con.execute(sql)
        if cur.description is None:
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()

    def scalar(self, sql: str, params: Any = None) -> Any:
        row = self.con.execute(sql, params).fetchone() if params is not None else self.con.execute(sql).fetchone()
        return row[0] if row else None

    def user_query(self, sql: str, limit: int | None, timeout_s: float = SQL_TIMEOUT_S) -> tuple[list[str], list[tuple], bool]:
        """Run one SELECT a person typed: (columns, rows, truncated). QueryError with DuckDB's message otherwise."""
        import duckdb

        check_select(sql)
        timer = threading.Timer(timeout_s, self.con.interrupt)
        timer.start()
        try:
            cur = self.con.execute(sql)
            cols = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchmany(limit + 1) if limit is not None else cur.fetchall()
        except duckdb.InterruptException:
            raise QueryError(f"the query ran past the time limit of {timeout_s:g} s and was stopped") from None
        except duckdb.Error as e:
            if not timer.is_alive() and "interrupt" in str(e).lower():
                raise QueryError(f"the query ran past the time limit of {timeout_s:g} s and was stopped") from None
            raise QueryError(str(e).strip()) from None
        finally:
            timer.cancel()
        truncated = limit is not None and len(rows) > limit
        return cols, rows[:limit] if limit is not None else rows, truncated


def check_select(sql: str) -> None:
    """Refuse anything that is not exactly one SELECT (a write, a SET, an ATTACH, two statements)."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(str(e).strip()) from None
    if not statements:
        raise QueryError("the query is empty")
    if len(statements) > 1:
        raise QueryError(f"one statement at a time, please: this text holds {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        name = str(kind).rsplit(".", 1)[-1]
        raise QueryError(f"refused: this page only runs SELECT queries, and this is a {name} statement; "
                         "nothing here can change the index")
