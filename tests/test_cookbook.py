"""Every query in docs/sql-cookbook.md runs against an index of generated runs and answers something."""

import re
import sys
from pathlib import Path

import pytest

from factory import index

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from make_runs import make_runs  # noqa: E402

COOKBOOK = REPO / "docs" / "sql-cookbook.md"


def cookbook_queries() -> list[tuple[str, str]]:
    """(question heading, SQL) for every ```sql block, in order."""
    text = COOKBOOK.read_text()
    out = []
    for m in re.finditer(r"^### (.+?)\n(.*?)```sql\n(.*?)```", text, re.S | re.M):
        out.append((m.group(1).strip(), m.group(3)))
    return out


QUERIES = cookbook_queries()


def test_cookbook_has_at_least_ten_questions_and_every_block_is_found():
    assert len(QUERIES) >= 10
    assert len(QUERIES) == COOKBOOK.read_text().count("```sql")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cookbook")
    make_runs(root / "runs", 400, seed=11, imported=True)
    index.refresh(root / "runs")
    return root / "runs"


# Questions whose answer may legitimately be empty on generated data.
MAY_BE_EMPTY = ("became specialists",)


@pytest.mark.parametrize("question,sql", QUERIES, ids=[q[:40] for q, _ in QUERIES])
def test_cookbook_query_runs(runs_dir, question, sql):
    cols, rows = index.query(runs_dir, sql)
    assert cols
    assert "primary" not in [c.lower() for c in cols]
    if not any(k in question for k in MAY_BE_EMPTY):
        assert rows, f"{question}: no rows on 400 generated runs"
