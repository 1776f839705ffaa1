"""`factory cache ...` and `factory pin`: gc, verify, push, pull and status of the store.

Domain work lives in factory.store and factory.remote; this module parses the
command's arguments and prints what happened.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from factory.errors import FactoryError

_SIZE = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_AGE = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)[bB]?\s*", text)
    if not m:
        raise FactoryError(f"--max-size {text!r}: give a size such as 20G, 500M or 1T")
    return int(float(m.group(1)) * _SIZE[m.group(2).lower()])


def parse_age(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not m:
        raise FactoryError(f"--older-than {text!r}: give an age such as 30d, 12h or 90m")
    return float(m.group(1)) * _AGE[m.group(2)]


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


# --- pins -------------------------------------------------------------------------

def _pins_path(root: Path) -> Path:
    return root / "cache" / "pins.json"


def read_pins(root: Path) -> list[str]:
    try:
        data = json.loads(_pins_path(root).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        raise FactoryError(f"{_pins_path(root)}: not a JSON list of run ids") from None
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise FactoryError(f"{_pins_path(root)}: not a JSON list of run ids")
    return data


def _run_keys(run_dir: Path) -> set[str]:
    try:
        man = json.loads((run_dir / "run_manifest.json").read_text())
        keys = man.get("stage_keys") or {}
        return {k for k in keys.values() if isinstance(k, str)} if isinstance(keys, dict) else set()
    except (OSError, ValueError, AttributeError):
        return set()


def pinned_keys(root: Path) -> set[str]:
    """Stage keys gc never evicts: those of pinned runs and of every packaged specialist's run."""
    keys: set[str] = set()
    runs = root / "runs"
    for run_id in read_pins(root):
        keys |= _run_keys(runs / run_id)
    for m in sorted((root / "specialists").glob("*/manifest.json")):
        try:
            spec = json.loads(m.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(spec, dict):
            continue
        sk = spec.get("stage_keys")
        if isinstance(sk, dict):
            keys |= {k for k in sk.values() if isinstance(k, str)}
        if isinstance(spec.get("run_id"), str) and "/" not in spec["run_id"]:
            keys |= _run_keys(runs / spec["run_id"])
    return keys


def cli_pin(root: Path, ref: str, remove: bool = False) -> int:
    from factory.runs import resolve_run

    run_dir = resolve_run(root, ref)
    if not (run_dir / "run_manifest.json").is_file():
        raise FactoryError(f"{run_dir}: not a run directory (no run_manifest.json)")
    pins = read_pins(root)
    if remove:
        pins = [p for p in pins if p != run_dir.name]
    elif run_dir.name not in pins:
        pins.append(run_dir.name)
    p = _pins_path(root)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(sorted(pins), indent=1) + "\n")
    tmp.replace(p)
    print(f"{'unpinned' if remove else 'pinned'} {run_dir.name}: gc "
          f"{'may evict' if remove else 'keeps'} its {len(_run_keys(run_dir))} stages")
    return 0


# --- gc and verify ------------------------------------------------------------------

def cli_gc(root: Path, dry_run: bool = False, older_than: str | None = None, max_size: str | None = None) -> int:
    from factory.store import Store

    age = parse_age(older_than) if older_than else None
    size = parse_size(max_size) if max_size else None
    store = Store(root / "cache")
    removed = store.gc(dry_run=dry_run, older_than=age, max_size=size, pinned_keys=pinned_keys(root))
    verb = "would free" if dry_run else "freed"
    print(f"{verb} {_human(removed['bytes'])}: {removed['objects']} objects, {removed['stages']} stages evicted, "
          f"{removed['tmp']} temporary build dirs, {removed['trees']} stale trees")
    for e in removed["evicted"]:
        print(f"  evicted {e.get('recipe') or '-'}:{e.get('stage') or '-'} {e['key'][:12]}")
    return 0


def cli_verify(root: Path, dry_run: bool = False) -> int:
    from factory.store import Store

    store = Store(root / "cache")
    found = store.verify(repair=not dry_run)
    print(f"verified {found['objects']} objects ({_human(found['bytes'])}): {len(found['damaged'])} damaged, "
          f"{len(found['missing'])} missing")
    for d in found["damaged"]:
        print(f"  damaged object {d[:16]}{' (removed)' if not dry_run else ''}")
    for e in found["dropped"]:
        print(f"  stage {e.get('recipe') or '-'}:{e.get('stage') or '-'} {e['key'][:12]} "
              f"{'dropped: the next build restores it' if not dry_run else 'would be dropped'}")
    return 1 if (found["damaged"] or found["missing"]) and dry_run else 0


# --- remote -------------------------------------------------------------------------

def _remote(session):
    remote = session.remote()
    if remote is None:
        raise FactoryError("no remote cache configured: set remote in pyproject.toml [tool.factory], "
                           "factory.toml, or FACTORY_REMOTE")
    remote.required = True  # an explicit push or pull that cannot reach the remote is an error
    return remote


def _recipe_keys(session, recipe: str, pull: bool) -> list[tuple[str, str | None]]:
    """(stage, key) in build order; pulling as it goes, since a stage's key needs its inputs' digests."""
    from factory.plan import NotBuilt

    plan = session.plan(recipe)
    out: list[tuple[str, str | None]] = []
    for stage in plan.order():
        try:
            key = plan.key(stage)
        except NotBuilt:
            out.append((stage, None))
            continue
        if pull and session.store.check(key) is None:
            session.remote().fetch(session.store, key, stage)
        out.append((stage, key))
    return out


def cli_cache_remote(root: Path, action: str, recipe: str | None) -> int:
    from factory.engine import Session

    s = Session(root)
    remote = _remote(s)
    if recipe:
        pairs = _recipe_keys(s, recipe, pull=action == "pull")
    else:
        if action == "pull":
            remote._connect()
            listed = remote._fs.glob(remote._path("stages", "*.json"))
            pairs = [("", Path(p).stem) for p in sorted(listed)]
        else:
            pairs = [("", m.stem) for m in sorted(s.store.stages.glob("*.json"))] if s.store.stages.exists() else []
    counts = {"pushed": 0, "pulled": 0, "local": 0, "remote": 0, "missing": 0}
    for stage, key in pairs:
        label = stage or ((s.store.manifest(key) or {}).get("stage", "") if key else "")
        if key is None:
            print(f"  {stage:<16} not built here or remotely: upstream stages are missing")
            counts["missing"] += 1
            continue
        local = s.store.check(key) is not None
        if action == "push":
            if local and remote.push(s.store, key):
                counts["pushed"] += 1
                print(f"  {label:<16} {key[:12]} pushed")
        elif action == "pull":
            if not local and remote.fetch(s.store, key, label) is not None:
                local = True
            if local:
                counts["pulled"] += 1
            print(f"  {label:<16} {key[:12]} {'in the store' if local else 'not on the remote'}")
        else:
            there = remote.has(key)
            counts["local"] += local
            counts["remote"] += there
            print(f"  {label:<16} {key[:12]} local: {'yes' if local else 'no':<3} remote: {'yes' if there else 'no'}")
    s._report_corruption()
    if action == "push":
        print(f"pushed {counts['pushed']} stages to {remote.name}")
    elif action == "pull":
        print(f"{counts['pulled']} of {len(pairs)} stages in the local store after pulling from {remote.name}")
    else:
        print(f"{len(pairs)} stages: {counts['local']} local, {counts['remote']} on {remote.name}")
    return 0


def main_args(args: Any) -> int:
    from factory.project import find_root

    root = find_root()
    if args.cache_command == "gc":
        return cli_gc(root, args.dry_run, args.older_than, args.max_size)
    if args.cache_command == "verify":
        return cli_verify(root, args.dry_run)
    return cli_cache_remote(root, args.cache_command, args.recipe)

