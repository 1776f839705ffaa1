"""Where the project is: the one question every entry point asks first, answered without imports."""

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
