"""The per-sample generation cache: one file per (model, exact input tokens, generation settings).

An eval stage that is killed loses its outputs (the store publishes whole stages only), but
every batch of generations it finished is already here, so running it again generates only
what was left. A stage that re-runs because only scoring changed (a suite's scorer option, a
suite's code) finds every generation here and only scores.

The key covers everything that can change a greedy output: the model (the base's digest, the
adapter's tree digest, the family and how it was loaded: dtype, device kind), the exact token
ids fed to the model (so the prompt, the template, the tokenizer and any truncation), the
generation budget, the context limit, the stop tokens, the generation code's own digest and the
versions of the numerics libraries. A changed adapter, a re-templated prompt or an upgraded
torch is a different key: an older model's answer can never come back. The batch size is not
in the key: outputs do not depend on it (`factory.ml.generate`).

Entries live in `cache/samples/<aa>/<key>.json`, written to a temporary file beside them and
published with `os.replace`, so a kill never leaves a half-written entry. `FACTORY_SAMPLE_CACHE=0`
turns the cache off.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from factory import hashing

_active: contextvars.ContextVar["SampleCache | None"] = contextvars.ContextVar("sample_cache", default=None)


class SampleCache:
    """Generations of one loaded model, looked up by their exact inputs and settings."""

    def __init__(self, root: Path, model: dict[str, Any]) -> None:
        self.root = Path(root)
        from factory.stages import module_file, numerics_versions

        # the generation code's own bytes: found by name, so this module never imports it
        self.model = {**model, "libs": numerics_versions(),
                      "code": hashing.digest_file(module_file("factory.ml.generate"))}
        self._model_digest = hashing.digest_json(self.model)
        self.hits = 0
        self.misses = 0

    def key(self, ids: list[int], settings: dict[str, Any]) -> str:
        return hashing.digest_json({"model": self._model_digest, "input": ids, "settings": settings})

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> tuple[list[int], str] | None:
        try:
            entry = json.loads(self._path(key).read_text())
            out = ([int(t) for t in entry["ids"]], str(entry["stop"]))
        except (OSError, ValueError, KeyError, TypeError):
            self.misses += 1
            return None  # missing or unreadable: generate again (and overwrite)
        self.hits += 1
        return out

    def put(self, key: str, ids: list[int], stop: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"ids": ids, "stop": stop}, f, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def enabled() -> bool:
    return os.environ.get("FACTORY_SAMPLE_CACHE", "1") not in ("0", "false", "no", "off")


@contextlib.contextmanager
def using(cache: SampleCache | None) -> Iterator[SampleCache | None]:
    """Generation inside the block reads and fills `cache` (None: no cache)."""
    token = _active.set(cache if enabled() else None)
    try:
        yield cache
    finally:
        _active.reset(token)


def current() -> SampleCache | None:
    return _active.get()


def for_model(root: Path, base_digest: str, adapter_digest: str | None, family: str, lm: Any) -> SampleCache:
    """The cache of one loaded model under `<root>/cache/samples`."""
    info = getattr(lm, "info", None) or {}
    device = str(getattr(lm, "device", "cpu")).split(":")[0]
    return SampleCache(Path(root) / "cache" / "samples", {
        "base": base_digest, "adapter": adapter_digest, "family": family,
        "dtype": str(info.get("dtype") or _dtype_of(lm)), "device": device,
    })


def _dtype_of(lm: Any) -> str:
    try:
        return str(next(lm.model.parameters()).dtype)
    except (AttributeError, StopIteration, TypeError):
        return "unknown"
