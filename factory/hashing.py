"""Digests: xxh3-128 of bytes, files, trees and canonical JSON, with a persistent stat cache.

A file's digest is remembered against its (inode, size, mtime_ns, ctime_ns); a
later check whose stat matches reuses it without reading the file, so `touch`ing
a large input costs one re-hash, once, and nothing after. ctime is kept as git's
index keeps it: a write that puts the mtime back (what bit rot or a careless
tool looks like) still moves the ctime, which no user call can set back, so the
cache never vouches for bytes that may have changed. Large files are hashed
through fixed-size mmap windows: fast (no copy, page-aligned) and in constant
memory whatever the file's size.
"""

from __future__ import annotations

import json
import mmap
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import xxhash

from factory.fastpath import note

WINDOW = 64 << 20  # bytes mapped at a time: bounds resident memory while hashing
SMALL = 1 << 20  # below this a plain read is cheaper than setting up a map
RACY_NS = 20_000_000  # an mtime this close to the hashing time may hide a same-tick write


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON value that digests are taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def digest_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def digest_json(obj: Any) -> str:
    return digest_bytes(canonical_json(obj))


def hash_file(path: str | os.PathLike) -> str:
    """Read and hash a file now, with no cache."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < SMALL:
            h.update(f.read())
            return h.hexdigest()
        offset = 0
        while offset < size:
            length = min(WINDOW, size - offset)
            with mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=offset) as mm:
                h.update(mm)
            offset += length
    return h.hexdigest()


class StatCache:
    """path -> (inode, size, mtime_ns, digest, hashed_at, ctime_ns), kept in one JSON file, saved atomically."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        self.hashed = 0  # files actually read in this process: tests and benches look at it
        if path is not None and path.exists():
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache only costs re-hashing

    def digest(self, path: str | os.PathLike) -> str:
        p = os.path.abspath(path)
        note(p)
        st = os.stat(p)
        entry = self.entries.get(p)
        if entry is not None and len(entry) == 6:  # older 5-field entries lack ctime: hash again
            ino, size, mtime, digest, hashed_at, ctime = entry
            if (ino, size, mtime, ctime) == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) and (
                mtime < hashed_at - RACY_NS and ctime < hashed_at - RACY_NS
            ):
                return digest
        wait = max(st.st_mtime_ns, st.st_ctime_ns) + RACY_NS - time.time_ns()
        if 0 < wait <= RACY_NS:
            # Written moments ago: a write in the same clock tick after we hash would keep this mtime,
            # so let the tick pass first; then the remembered digest can be trusted.
            time.sleep(wait / 1e9)
        now = time.time_ns()
        digest = hash_file(p)
        self.hashed += 1
        self.entries[p] = [st.st_ino, st.st_size, st.st_mtime_ns, digest, now, st.st_ctime_ns]
        self.dirty = True
        return digest

    def derived(self, kind: str, path: str, compute) -> str:
        """A value computed from a file's bytes (an AST digest, say), remembered by the file's digest."""
        digest = self.digest(path)
        table = self.entries.setdefault(f"#{kind}", {})
        value = table.get(digest)
        if value is None:
            value = table[digest] = compute(path)
            self.dirty = True
        return value

    def save(self) -> None:
        if not self.dirty or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".statcache-")
        with os.fdopen(fd, "w") as f:
            json.dump(self.entries, f, separators=(",", ":"))
        os.replace(tmp, self.path)
        self.dirty = False


_cache = StatCache(None)


def use_cache(path: Path | None) -> StatCache:
    """Point the process-wide stat cache at a file (the store calls this with cache/statcache.json)."""
    global _cache
    if _cache.path != path:
        _cache.save()
        _cache = StatCache(path)
    return _cache


def stat_cache() -> StatCache:
    return _cache


def digest_file(path: str | os.PathLike) -> str:
    return _cache.digest(path)


def tree_files(root: Path) -> list[Path]:
    """Every regular file under root, sorted by relative path (hidden files included)."""
    root = Path(root)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            files.append(Path(dirpath) / name)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def tree_manifest(root: Path) -> dict[str, str]:
    root = Path(root)
    return {p.relative_to(root).as_posix(): digest_file(p) for p in tree_files(root)}


def digest_tree(root: Path) -> str:
    """Digest of a directory: its files' relative paths and digests."""
    return digest_json(tree_manifest(root))


def digest_path(path: Path) -> str:
    path = Path(path)
    return digest_tree(path) if path.is_dir() else digest_file(path)
