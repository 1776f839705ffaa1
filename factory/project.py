"""Where the project is: the one question every entry point asks first, answered without imports;
and which of its runs still wait for their run_finished handlers (the no-op build asks that too)."""

from __future__ import annotations

import os
from pathlib import Path


def find_root(start: Path | None = None) -> Path:
    """The project root: FACTORY_ROOT, else the nearest directory above holding recipes/ or dodo.py."""
    env = os.environ.get("FACTORY_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "recipes").is_dir() or (d / "dodo.py").exists():
            return d
    return here


UNFINISHED_DIR = ".unfinished"  # runs/.unfinished/<run id>: a run whose run_finished handlers have not all returned


def unfinished(runs_dir: Path) -> list[str]:
    """Runs marked by `factory.runs.mark_unfinished` whose handlers have not all returned (one small listing)."""
    try:
        return sorted(n for n in os.listdir(Path(runs_dir) / UNFINISHED_DIR) if not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
