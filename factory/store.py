"""The content-addressed store: read-only objects and one manifest per stage key.

    cache/objects/<aa>/<digest>   file contents, read-only, named by xxh3-128
    cache/stages/<key>.json       a stage's outputs: relative path -> digest, size
    cache/trees/<key>/            a stage's outputs as a directory of hardlinks (what builds read)
    cache/tmp/<random>/           where a build writes before it is published
    cache/work/<key>/             scratch a build keeps across a kill (checkpoints)
    cache/locks/<key>.lock        one builder per key at a time
    cache/locks/store.lock        builds hold it shared, gc exclusive: they exclude each other
    cache/used/<key>              its mtime is the stage's last use (gc evicts by it)
    cache/pins.json               runs whose objects gc never evicts (`factory pin <run>`)

Publishing moves every output into objects/ first and writes the manifest
last, with os.replace; a killed build therefore leaves at worst tmp litter and
unreferenced objects (both removed by `factory cache gc`), never a manifest
whose objects are missing. gc takes the store lock exclusively, and every
build and publish holds it shared, so gc never sees objects that a manifest
being written is about to reference.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import sys
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
        with self.shared():
            return self._publish(key, build_dir, meta)

    def _publish(self, key: str, build_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
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
        self.touch_used(key)
        return man

    def put_manifest(self, man: dict[str, Any]) -> None:
        """Record a manifest whose objects are already in place (a pull from a remote)."""
        self.stages.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.stages, prefix=".manifest-")
        with os.fdopen(fd, "w") as fh:
            json.dump(man, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.manifest_path(man["key"]))
        self.touch_used(man["key"])

    def put_object(self, src: Path, digest: str) -> bool:
        """Move a downloaded file in as an object if its bytes match the digest; False (and removed) if not."""
        if hashing.hash_file(src) != digest:
            src.unlink()
            return False
        dest = self.object_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(src, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(src, dest)
        return True

    def touch_used(self, key: str) -> None:
        """Note that a stage was just used (hit or built): gc evicts the least recently used first."""
        p = self.root / "used" / key
        try:
            os.utime(p)
        except FileNotFoundError:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()

    def last_used(self, key: str) -> float:
        for p in (self.root / "used" / key, self.manifest_path(key)):
            try:
                return p.stat().st_mtime
            except FileNotFoundError:
                continue
        return 0.0

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
    def shared(self) -> Iterator[None]:
        """Held by every build and publish: gc waits until none is running, and none starts during gc."""
        with self._store_lock(fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def _store_lock(self, mode: int, waiting: str = "") -> Iterator[None]:
        self.locks.mkdir(parents=True, exist_ok=True)
        with open(self.locks / "store.lock", "a") as fh:
            try:
                fcntl.flock(fh, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    print(waiting, file=sys.stderr, flush=True)
                fcntl.flock(fh, mode)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

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

    def gc(self, keep_digests: set[str] = frozenset(), dry_run: bool = False, older_than: float | None = None,
           max_size: int | None = None, pinned_keys: set[str] = frozenset()) -> dict[str, Any]:
        """Remove build litter and unreferenced objects; evict stage outputs by last use.

        With `older_than` (seconds), stages unused for longer are evicted; with `max_size` (bytes),
        the least recently used stages go until the objects fit. Pinned keys are never evicted.
        Runs exclusively of every build (the store lock).
        """
        with self._store_lock(fcntl.LOCK_EX, waiting="factory: waiting for running builds before gc"):
            return self._gc(set(keep_digests), dry_run, older_than, max_size, set(pinned_keys))

    def _gc(self, keep_digests: set[str], dry_run: bool, older_than: float | None, max_size: int | None,
            pinned_keys: set[str]) -> dict[str, Any]:
        removed: dict[str, Any] = {"tmp": 0, "objects": 0, "bytes": 0, "trees": 0, "locks": 0, "stages": 0,
                                   "evicted": []}
        if self.tmp.exists():
            for p in self.tmp.iterdir():
                if _owner_alive(p.name):
                    continue
                removed["tmp"] += 1
                if not dry_run:
                    _force_rmtree(p)
        mans: dict[str, dict[str, Any]] = {}
        if self.stages.exists():
            for m in self.stages.glob("*.json"):
                man = self.manifest(m.stem)
                if man is not None and isinstance(man.get("outputs"), dict):
                    mans[m.stem] = man
        sizes: dict[str, int] = {}
        if self.objects.exists():
            for sub in self.objects.iterdir():
                for obj in sub.iterdir():
                    with contextlib.suppress(FileNotFoundError):
                        sizes[obj.name] = obj.stat().st_size

        # Eviction: least recently used first; pinned stages stay whatever their age.
        evict: set[str] = set()
        order = sorted((k for k in mans if k not in pinned_keys), key=self.last_used)
        now = time.time()
        if older_than is not None:
            evict.update(k for k in order if now - self.last_used(k) > older_than)
        if max_size is not None:
            def live_bytes() -> int:
                live = set(keep_digests)
                for k, man in mans.items():
                    if k not in evict:
                        live.update(e["digest"] for e in man["outputs"].values())
                return sum(sizes.get(d, 0) for d in live)

            for k in order:
                if live_bytes() <= max_size:
                    break
                evict.add(k)
        for k in sorted(evict):
            removed["stages"] += 1
            removed["evicted"].append({"key": k, "stage": mans[k].get("stage"), "recipe": mans[k].get("recipe")})
            if not dry_run:
                self.drop(k)
                with contextlib.suppress(FileNotFoundError):
                    (self.root / "used" / k).unlink()
            del mans[k]

        live: set[str] = set(keep_digests)
        for man in mans.values():
            live.update(e["digest"] for e in man["outputs"].values())
        for digest, size in sizes.items():
            if digest not in live:
                removed["objects"] += 1
                removed["bytes"] += size
                if not dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        self.object_path(digest).unlink()
        if self.trees.exists():
            for t in self.trees.iterdir():
                if t.name not in mans:
                    removed["trees"] += 1
                    if not dry_run:
                        _force_rmtree(t)
        if self.work.exists():
            for w in self.work.iterdir():
                if w.name in mans:  # finished stages need no scratch
                    if not dry_run:
                        _force_rmtree(w)
        return removed

    # --- verification ---------------------------------------------------------

    def verify(self, repair: bool = True) -> dict[str, Any]:
        """Re-hash every object (no stat cache); a damaged one is removed with the manifests that need it.

        The stages those manifests described rebuild (or are pulled again) on the next build.
        """
        found: dict[str, Any] = {"objects": 0, "bytes": 0, "damaged": [], "dropped": [], "missing": []}
        with self.shared():
            bad: set[str] = set()
            if self.objects.exists():
                for sub in sorted(self.objects.iterdir()):
                    for obj in sorted(sub.iterdir()):
                        found["objects"] += 1
                        found["bytes"] += obj.stat().st_size
                        if hashing.hash_file(obj) != obj.name:
                            bad.add(obj.name)
                            found["damaged"].append(obj.name)
                            if repair:
                                obj.unlink()
            if self.stages.exists():
                for m in sorted(self.stages.glob("*.json")):
                    man = self.manifest(m.stem)
                    if man is None:
                        continue
                    need = {e["digest"] for e in man["outputs"].values()}
                    gone = {d for d in need if d in bad or not self.object_path(d).exists()}
                    if gone:
                        found["missing"].extend(sorted(gone - bad))
                        found["dropped"].append({"key": m.stem, "stage": man.get("stage"),
                                                 "recipe": man.get("recipe")})
                        if repair:
                            self.drop(m.stem)
        return found


def link_outputs(store: Store, man: dict[str, Any], dest: Path, only: set[str] | None = None,
                 copy: bool = False) -> None:
    """Hardlink a manifest's objects into dest (copy where links fail, or always with `copy`).

    Run directories copy (the kernel reflinks where the filesystem can): a file that shares its
    inode with an object would carry damage both ways, and would keep an evicted object's bytes.
    """
    for rel, entry in sorted(man["outputs"].items()):
        if only is not None and rel not in only:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        src = store.object_path(entry["digest"])
        if copy:
            shutil.copyfile(src, target)
            os.chmod(target, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            continue
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
