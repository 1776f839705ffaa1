"""The content-addressed store: read-only objects and one manifest per stage key.

    cache/objects/<aa>/<digest>   file contents, read-only, named by xxh3-128
    cache/stages/<key>.json       a stage's outputs: relative path -> digest, size
    cache/trees/<key>/            a stage's outputs as a directory of hardlinks (what builds read)
    cache/tmp/<random>/           where a build writes before it is published
    cache/work/<key>/             scratch a build keeps across a kill (checkpoints)
    cache/locks/<key>.lock        one builder per key at a time

Publishing moves every output into objects/ first and writes the manifest
last, with os.replace; a killed build therefore leaves at worst tmp litter and
unreferenced objects (both removed by `factory cache gc`), never a manifest
whose objects are missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from factory import hashing
from factory.errors import FactoryError
from factory.fastpath import note


@dataclass
class Corruption:
    key: str
    path: str
    expected: str
    found: str


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.stages = self.root / "stages"
        self.trees = self.root / "trees"
        self.tmp = self.root / "tmp"
        self.work = self.root / "work"
        self.locks = self.root / "locks"
        hashing.use_cache(self.root / "statcache.json")
        self.corruptions: list[Corruption] = []

    # --- objects -----------------------------------------------------------

    def object_path(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest

    def _put_file(self, src: Path) -> tuple[str, int]:
        digest = hashing.hash_file(src)
        size = src.stat().st_size
        dest = self.object_path(digest)
        if dest.exists():
            src.unlink()
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(src, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(src, dest)
        return digest, size

    # --- manifests ---------------------------------------------------------

    def manifest_path(self, key: str) -> Path:
        return self.stages / f"{key}.json"

    def manifest(self, key: str) -> dict[str, Any] | None:
        path = self.manifest_path(key)
        note(path)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a torn manifest cannot exist (atomic write), but never trust one

    def check(self, key: str) -> dict[str, Any] | None:
        """The stage's manifest if the store holds it whole and uncorrupted; else None.

        A corrupted object (its bytes no longer match its name) is discarded,
        with the manifest that needs it, so the stage rebuilds.
        """
        man = self.manifest(key)
        if man is None:
            return None
        for rel, entry in man["outputs"].items():
            obj = self.object_path(entry["digest"])
            try:
                found = hashing.digest_file(obj)
            except FileNotFoundError:
                found = None
            if found != entry["digest"]:
                self.corruptions.append(Corruption(key, rel, entry["digest"], found or "missing"))
                if found is not None:
                    with contextlib.suppress(FileNotFoundError):
                        obj.unlink()
                self.drop(key)
                return None
        return man

    def drop(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.manifest_path(key).unlink()
        tree = self.trees / key
        if tree.exists():
            shutil.rmtree(tree, ignore_errors=True)

    def publish(self, key: str, build_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """Move a finished build directory into the store and record its manifest."""
        outputs: dict[str, dict[str, Any]] = {}
        for f in hashing.tree_files(build_dir):
            rel = f.relative_to(build_dir).as_posix()
            if f.is_symlink():
                raise FactoryError(f"stage output {rel} is a symlink; stages must write real files")
            digest, size = self._put_file(f)
            outputs[rel] = {"digest": digest, "size": size}
        man = {
            "key": key,
            "outputs": outputs,
            "output_digest": hashing.digest_json({k: v["digest"] for k, v in outputs.items()}),
            **meta,
        }
        self.stages.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.stages, prefix=".manifest-")
        with os.fdopen(fd, "w") as fh:
            json.dump(man, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.manifest_path(key))
        shutil.rmtree(build_dir, ignore_errors=True)
        return man

    # --- reading outputs ---------------------------------------------------

    def tree(self, key: str, man: dict[str, Any] | None = None) -> Path:
        """A directory holding the stage's outputs (hardlinks to objects), made on first use."""
        dest = self.trees / key
        if dest.exists():
            return dest
        man = man or self.manifest(key)
        if man is None:
            raise FactoryError(f"stage {key[:12]} is not in the store")
        staging = Path(tempfile.mkdtemp(dir=self._tmpdir(), prefix=f"tree-{os.getpid()}-"))
        link_outputs(self, man, staging)
        self.trees.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, dest)
        except OSError:  # another process made it first
            shutil.rmtree(staging, ignore_errors=True)
        return dest

    def file(self, key: str, rel: str) -> Path:
        man = self.manifest(key)
        if man is None or rel not in man["outputs"]:
            raise FactoryError(f"stage {key[:12]} has no output {rel}")
        return self.object_path(man["outputs"][rel]["digest"])

    # --- building ----------------------------------------------------------

    def _tmpdir(self) -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self.tmp

    def new_build_dir(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self._tmpdir(), prefix=f"build-{os.getpid()}-"))

    def work_dir(self, key: str) -> Path:
        d = self.work / key
        d.mkdir(parents=True, exist_ok=True)
        return d

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the build lock of a key; a second builder of the same key waits here."""
        self.locks.mkdir(parents=True, exist_ok=True)
        with open(self.locks / f"{key}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # --- garbage collection -------------------------------------------------

    def gc(self, keep_digests: set[str] = frozenset(), dry_run: bool = False) -> dict[str, int]:
        """Remove build litter and objects that no manifest and no run references."""
        removed = {"tmp": 0, "objects": 0, "bytes": 0, "trees": 0, "locks": 0}
        if self.tmp.exists():
            for p in self.tmp.iterdir():
                if _owner_alive(p.name):
                    continue
                removed["tmp"] += 1
                if not dry_run:
                    _force_rmtree(p)
        live: set[str] = set(keep_digests)
        keys: set[str] = set()
        if self.stages.exists():
            for m in self.stages.glob("*.json"):
                man = self.manifest(m.stem)
                if man is None:
                    continue
                keys.add(m.stem)
                live.update(e["digest"] for e in man["outputs"].values())
        if self.objects.exists():
            for sub in self.objects.iterdir():
                for obj in sub.iterdir():
                    if obj.name not in live:
                        removed["objects"] += 1
                        removed["bytes"] += obj.stat().st_size
                        if not dry_run:
                            obj.unlink()
        if self.trees.exists():
            for t in self.trees.iterdir():
                if t.name not in keys:
                    removed["trees"] += 1
                    if not dry_run:
                        _force_rmtree(t)
        if self.work.exists():
            for w in self.work.iterdir():
                if w.name in keys:  # finished stages need no scratch
                    if not dry_run:
                        _force_rmtree(w)
        return removed


def link_outputs(store: Store, man: dict[str, Any], dest: Path, only: set[str] | None = None) -> None:
    """Hardlink a manifest's objects into dest (copy where links fail)."""
    for rel, entry in sorted(man["outputs"].items()):
        if only is not None and rel not in only:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        src = store.object_path(entry["digest"])
        try:
            os.link(src, target)
        except FileExistsError:
            if hashing.hash_file(target) != entry["digest"]:
                target.unlink()
                os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)
            os.chmod(target, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _owner_alive(name: str) -> bool:
    """Build dirs are named build-<pid>-...; one whose process still runs is not litter."""
    parts = name.split("-")
    if len(parts) >= 2 and parts[0] in ("build", "tree") and parts[1].isdigit():
        try:
            os.kill(int(parts[1]), 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    return False


def _force_rmtree(p: Path) -> None:
    def onerror(func, path, _exc):
        os.chmod(os.path.dirname(path), 0o755)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o644)
        func(path)

    if p.is_dir():
        shutil.rmtree(p, onerror=onerror)
    else:
        p.unlink()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
