"""The no-op fast path: prove a recipe unchanged from file stats alone.

After a recipe's run is complete, every file its keys were computed from is
recorded with its (inode, size, mtime_ns, ctime_ns): the recipe, its data, the code
modules, the store manifests and objects, the run's records, and the
site-packages directories (whose mtime moves when a package is installed or
removed). The next `doit` compares those stats; if none moved, the recipe is
up to date without importing pydantic, the plugins or anything else, and
without hashing a byte. Any difference, or any doubt, falls back to the full
check through the store. This module imports only the standard library.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

VERSION = 2

# Paths whose bytes decided a key in this process (filled by factory.hashing and factory.store).
TOUCHED: set[str] = set()


def note(path: str | os.PathLike) -> None:
    TOUCHED.add(os.path.abspath(path))


def cuda_available() -> bool:
    """Whether a CUDA device is present, without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    # ctime too: a write whose mtime was put back (bit rot, a careless tool) still moves it.
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def environment() -> dict[str, Any]:
    return {
        "version": VERSION,
        "python": sys.version,
        "prefix": sys.prefix,
        "cuda": cuda_available(),
        "plugins_env": os.environ.get("FACTORY_LOAD_PLUGINS"),
        # An install or uninstall moves the mtime of its site-packages directory.
        "site": {p: _stat(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))},
    }


def _record_path(root: Path, recipe: str, kind: str = "noop") -> Path:
    return Path(root) / "cache" / kind / f"{recipe}.json"


def record(root: Path, recipe: str, paths: Iterable[str], tasks: dict[str, Any], kind: str = "noop") -> None:
    """Remember the stats of every path the recipe's up-to-date verdict (or its task graph) rests on."""
    files = {}
    for p in sorted(set(paths)):
        st = _stat(p)
        if st is None:
            return  # something vanished meanwhile: record nothing rather than something wrong
        files[p] = st
    data = {"env": environment(), "files": files, "tasks": tasks}
    dest = _record_path(root, recipe, kind)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".noop-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, dest)


def forget(root: Path, recipe: str) -> None:
    try:
        _record_path(root, recipe).unlink()
    except FileNotFoundError:
        pass


def check(root: Path, recipe: str, kind: str = "noop") -> dict[str, Any] | None:
    """The recorded task graph if nothing the record rests on moved; else None.

    kind "noop": the recipe is up to date. kind "graph": only its task graph (stage names and
    dependencies) is known, so doit can list and order its tasks without loading the engine.
    """
    try:
        data = json.loads(_record_path(root, recipe, kind).read_text())
    except (OSError, ValueError):
        return None
    if data.get("env") != environment():
        return None
    for path, st in data["files"].items():
        if _stat(path) != st:
            return None
    return data["tasks"]


def module_files(prefixes: Iterable[str]) -> set[str]:
    """Source files of every loaded module under the given top-level packages."""
    tops = set(prefixes)
    out = set()
    for name, mod in list(sys.modules.items()):
        if name.split(".", 1)[0] in tops:
            f = getattr(mod, "__file__", None)
            if f:
                out.add(os.path.abspath(f))
    return out
