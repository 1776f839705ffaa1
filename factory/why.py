"""`factory why recipe:<name>`: which stages are stale, and which input changed.

The current key material of each stage is compared with the material stored
in the manifest of the same stage in the recipe's latest run; the difference
is told in words: a config field, the code, or an input's digest, old vs new.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from factory.engine import Session
from factory.plan import NotBuilt


def _latest_keys(root: Path, recipe: str) -> dict[str, str]:
    best: tuple[str, dict[str, str]] | None = None
    for m in (root / "runs").glob(f"*-{recipe}-*/run_manifest.json"):
        try:
            data = json.loads(m.read_text())
        except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8, not JSON: not a run to compare with
            continue
        if not isinstance(data, dict) or data.get("recipe") != recipe or not isinstance(data.get("stage_keys"), dict):
            continue
        stamp = str(data.get("created", ""))
        if best is None or stamp > best[0]:
            best = (stamp, data["stage_keys"])
    return best[1] if best else {}


def _diff(old: Any, new: Any, path: str = "") -> Iterator[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            sub = f"{path}.{k}" if path else str(k)
            if k not in old:
                yield f"{sub} added ({_short(new[k])})"
            elif k not in new:
                yield f"{sub} removed (was {_short(old[k])})"
            else:
                yield from _diff(old[k], new[k], sub)
    elif old != new:
        yield f"{path}: {_short(old)} -> {_short(new)}"


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
    return s[:12] if len(s) == 32 and all(c in "0123456789abcdef" for c in s) else (s if len(s) <= 60 else s[:57] + "...")


def explain(root: Path, recipe: str) -> list[str]:
    s = Session(root)
    plan = s.plan(recipe)
    previous = _latest_keys(s.root, recipe)
    lines = []
    stale: set[str] = set()
    for name in plan.order():
        st = plan.stages[name]
        blocked = [u for u in st.upstream() if u in stale]
        try:
            key = plan.key(name)
        except NotBuilt as e:
            stale.add(name)
            lines.append(f"{name}: stale (waits for {', '.join(blocked) or e.args[0]}; its key is known once they are built)")
            continue
        if s.store.check(key) is not None:
            lines.append(f"{name}: up to date ({key[:12]})")
            continue
        stale.add(name)
        old_key = previous.get(name)
        if not (isinstance(old_key, str) and re.fullmatch(r"[0-9a-f]{8,128}", old_key)):
            old_key = None  # a run manifest edited by hand names no store path
        old = s.store.manifest(old_key) if old_key else None
        if old is not None and not isinstance(old.get("material"), dict):
            old = None
        if old is None or "material" not in old:
            why = "never built" if not old_key else f"previous build {old_key[:12]} is no longer in the store"
            lines.append(f"{name}: stale ({why})")
            continue
        new_mat = plan.material(name)
        reasons = []
        for part, label in (("config", "config"), ("code", "code"), ("inputs", "input")):
            for d in _diff(old["material"].get(part), new_mat.get(part)):
                reasons.append(f"{label} {d}")
        if not reasons:
            reasons = ["the stored output is missing or corrupted"]
        lines.append(f"{name}: stale ({old_key[:12]} -> {key[:12]})")
        lines.extend(f"  - {r}" for r in reasons)
    return lines
