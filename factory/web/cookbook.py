"""The SQL page's examples: the questions of docs/sql-cookbook.md, shipped with the package.

An installed copy has no docs/ folder, so the questions are kept beside the
templates in `cookbook.json`; a test checks that it matches the cookbook.
Regenerate it with `python -m factory.web.cookbook docs/sql-cookbook.md`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent / "cookbook.json"


def parse(markdown: str) -> list[dict[str, str]]:
    """[{"question", "sql"}] for every ### heading followed by a ```sql block, in order."""
    return [{"question": m.group(1).strip(), "sql": m.group(3).strip()}
            for m in re.finditer(r"^### (.+?)\n(.*?)```sql\n(.*?)```", markdown, re.S | re.M)]


def examples() -> list[dict[str, str]]:
    return json.loads(HERE.read_text())


if __name__ == "__main__":
    HERE.write_text(json.dumps(parse(Path(sys.argv[1]).read_text()), indent=1) + "\n")
    print(f"wrote {HERE}")
