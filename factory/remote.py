"""A remote cache: the store's objects and stage manifests behind any fsspec URL.

    <remote>/objects/<aa>/<digest>   the same content-addressed objects as cache/objects/
    <remote>/stages/<key>.json       the same manifests as cache/stages/

Before a stage builds, its key is looked up remotely and its objects downloaded
instead; every object's bytes are checked against its digest on the way in (a
mismatch is discarded and reported, and the stage builds locally). After a
build, objects are pushed first and the manifest last, each under a temporary
name moved into place, so no reader ever sees a manifest without its objects.
There are no remote locks: objects are named by their content and written
once, and two pushers of the same key write the same outputs.

The remote is a project setting (`remote` in pyproject.toml's [tool.factory] or
in factory.toml), overridden by FACTORY_REMOTE. fsspec is imported only when a
remote is configured and a stage actually misses locally: the no-op path never
touches the network. Credentials come from the protocol's own mechanism (AWS_*
variables, ~/.aws, ...) and are never written anywhere: every URL that is
printed or recorded has its user, password and query removed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from factory.errors import FactoryError

SETTINGS = ("remote", "remote_required", "remote_options", "executor")


def settings(root: Path) -> dict[str, Any]:
    """The project's [tool.factory] settings (factory.toml wins over pyproject.toml; the environment over both)."""
    root = Path(root)
    out: dict[str, Any] = {}
    for name, table in (("pyproject.toml", ("tool", "factory")), ("factory.toml", ())):
        path = root / name
        if not path.is_file():
            continue
        try:
            data: Any = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise FactoryError(f"{path}: not valid TOML ({e})") from None
        for part in table:
            data = data.get(part, {}) if isinstance(data, dict) else {}
        if not isinstance(data, dict):
            raise FactoryError(f"{path}: [{'.'.join(table) or 'top level'}] must be a table")
        if name == "factory.toml" and isinstance(data.get("factory"), dict):
            data = data["factory"]
        for k in SETTINGS:
            if k in data:
                out[k] = data[k]
        where = f"{path}: {'.'.join((*table, ''))}"
        if "remote" in out and not isinstance(out["remote"], str):
            raise FactoryError(f"{where}remote must be a URL string")
        if "remote_options" in out and not isinstance(out["remote_options"], dict):
            raise FactoryError(f"{where}remote_options must be a table")
    env = os.environ.get("FACTORY_REMOTE")
    if env is not None:
        out["remote"] = env or None  # FACTORY_REMOTE= (empty) turns a configured remote off
    if os.environ.get("FACTORY_REMOTE_REQUIRED"):
        out["remote_required"] = os.environ["FACTORY_REMOTE_REQUIRED"] not in ("0", "", "false")
    if os.environ.get("FACTORY_EXECUTOR"):
        out["executor"] = os.environ["FACTORY_EXECUTOR"]
    return out


def redact(url: str) -> str:
    """A URL fit to print: no user, password, query or fragment (where credentials hide)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<remote>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def from_settings(root: Path) -> "Remote | None":
    cfg = settings(root)
    url = cfg.get("remote")
    if not url:
        return None
    return Remote(url, required=bool(cfg.get("remote_required")), options=cfg.get("remote_options") or {})


class Remote:
    """One remote cache; after a failure to reach it, this process stops trying (one warning line)."""

    def __init__(self, url: str, required: bool = False, options: dict[str, Any] | None = None):
        self.url = url
        self.required = required
        self.options = dict(options or {})
        self.down = False
        self._fs = None
        self._base = ""

    @property
    def name(self) -> str:
        return redact(self.url)

    def _connect(self):
        if self._fs is None:
            try:
                import fsspec
            except ImportError:
                raise FactoryError('a remote cache needs fsspec: pip install -e ".[remote]"') from None
            self._fs, self._base = fsspec.core.url_to_fs(self.url, **self.options)
            self._base = self._base.rstrip("/")
        return self._fs

    def _path(self, *parts: str) -> str:
        return "/".join((self._base, *parts))

    def _obj(self, digest: str) -> str:
        return self._path("objects", digest[:2], digest)

    def _man(self, key: str) -> str:
        return self._path("stages", f"{key}.json")

    def _failed(self, e: BaseException, doing: str) -> None:
        """One line, no credentials: the exception's type only, with the redacted URL."""
        self.down = True
        msg = f"remote cache {self.name} unreachable while {doing} ({type(e).__name__})"
        if self.required:
            raise FactoryError(f"{msg}; the project requires it (remote_required)") from None
        print(f"factory: warning: {msg}; going on with the local store", file=sys.stderr, flush=True)

    # --- reading --------------------------------------------------------------

    def manifest(self, key: str) -> dict[str, Any] | None:
        fs = self._connect()
        try:
            with fs.open(self._man(key), "rb") as f:
                man = json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a manifest is written whole; one that does not parse is not trusted
        if not isinstance(man, dict) or man.get("key") != key or not isinstance(man.get("outputs"), dict):
            return None
        return man

    def fetch(self, store, key: str, stage: str = "") -> dict[str, Any] | None:
        """Download a stage's outputs into the local store; its manifest if every object arrived intact."""
        if self.down:
            return None
        with store.shared():  # gc must not take the objects before the manifest names them
            return self._fetch(store, key, stage)

    def _fetch(self, store, key: str, stage: str) -> dict[str, Any] | None:
        try:
            man = self.manifest(key)
            if man is None:
                return None
            fs = self._connect()
            tmp = store.new_build_dir()
            try:
                for rel, entry in sorted(man["outputs"].items()):
                    digest = entry["digest"]
                    if store.object_path(digest).exists():
                        continue
                    local = tmp / digest
                    fs.get_file(self._obj(digest), str(local))
                    if not store.put_object(local, digest):
                        print(f"factory: remote object {rel} of stage {stage or key[:12]} does not match its "
                              f"digest {digest[:12]}; discarded, building locally", file=sys.stderr, flush=True)
                        try:
                            fs.rm_file(self._obj(digest))  # a damaged copy would be skipped by every push
                        except Exception:  # noqa: BLE001 - best effort
                            pass
                        return None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if all(store.object_path(e["digest"]).exists() for e in man["outputs"].values()):
                store.put_manifest({**man, "pulled": True})
                return man
            return None
        except FileNotFoundError:
            return None  # an object went missing remotely: build here
        except FactoryError:
            raise
        except Exception as e:  # noqa: BLE001 - the network may fail in any way
            self._failed(e, f"fetching {stage or key[:12]}")
            return None

    # --- writing --------------------------------------------------------------

    def push(self, store, key: str) -> bool:
        """Upload a stage: objects first (each under a temporary name, then moved), the manifest last."""
        if self.down:
            return False
        man = store.manifest(key)
        if man is None:
            return False
        try:
            fs = self._connect()
            for entry in sorted(man["outputs"].values(), key=lambda e: e["digest"]):
                dest = self._obj(entry["digest"])
                if fs.exists(dest):
                    continue
                self._put(fs, str(store.object_path(entry["digest"])), dest)
            clean = {k: v for k, v in man.items() if k != "pulled"}
            staged = store.new_build_dir() / "manifest.json"
            staged.write_text(json.dumps(clean, indent=1, sort_keys=True))
            self._put(fs, str(staged), self._man(key))
            staged.unlink()
            staged.parent.rmdir()
            return True
        except FactoryError:
            raise
        except Exception as e:  # noqa: BLE001
            self._failed(e, f"pushing {man.get('stage') or key[:12]}")
            return False

    def _put(self, fs, local: str, dest: str) -> None:
        tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
        fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(local, tmp)
        fs.mv(tmp, dest)

    def has(self, key: str) -> bool:
        return self.manifest(key) is not None
