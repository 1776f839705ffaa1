"""Plugin discovery and the strict registries of families, suites, sources and stage kinds.

Plugins come from DEFAULT_PLUGINS (first-party modules, registered exactly as
a third party would), then the `factory` entry-point group. Setting
FACTORY_LOAD_PLUGINS=name,name loads only those (handy to isolate a broken
plugin), plus the engine's own modules (ENGINE_PLUGINS: the stage kinds every
graph has), which then fill only the names the named plugins leave free. A
plugin that fails to import is reported and the others still load.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from factory import hookspecs
from factory.errors import FactoryError

DEFAULT_PLUGINS: tuple[str, ...] = (
    "factory.builtin_stages",
    "factory_plugins.datasets",
    "factory_plugins.breadth",
    "factory_plugins.preferences",
    "factory_plugins.tiny",
    "factory_plugins.hf",
    "factory_plugins.merge",
    "factory_plugins.evals",
)

# The engine's own stage kinds: kept when an allowlist names only some plugins, so that
# FACTORY_LOAD_PLUGINS=toy still builds; there they yield a name a named plugin registers.
ENGINE_PLUGINS: tuple[str, ...] = ("factory.builtin_stages", "factory_plugins.datasets")

KINDS = {
    "family": ("model families", "register_model_families"),
    "suite": ("eval suites", "register_eval_suites"),
    "source": ("dataset sources", "register_dataset_sources"),
    "stage": ("stage kinds", "register_stage_kinds"),
}


def _qualname(obj: Any) -> str:
    build = getattr(obj, "build", None)
    if callable(build) and not isinstance(obj, type):  # a StageKind: the code is its build function
        return f"{build.__module__}:{getattr(build, '__qualname__', build)}"
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


class Registry:
    """A name -> object map that never silently shadows a name."""

    def __init__(self, kind: str):
        self.kind = kind
        self.items: dict[str, Any] = {}
        self.owner: dict[str, str] = {}

    def register(self, obj: Any, plugin: str = "?") -> None:
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise FactoryError(f"plugin {plugin}: {self.kind} {_qualname(obj)} has no name")
        if name in self.items:
            old = self.items[name]
            if old is obj or _qualname(old) == _qualname(obj):
                return
            raise FactoryError(
                f"{self.kind} name {name!r} is taken: {_qualname(old)} (plugin {self.owner[name]}) "
                f"and {_qualname(obj)} (plugin {plugin}) both register it"
            )
        self.items[name] = obj
        self.owner[name] = plugin

    def get(self, name: str) -> Any:
        try:
            return self.items[name]
        except KeyError:
            plural, hook = KINDS[self.kind]
            known = ", ".join(sorted(self.items)) or "(none)"
            raise FactoryError(
                f"unknown {self.kind} {name!r}; registered {plural}: {known} "
                f"(add one with a plugin implementing {hook}; see docs/plugin-guide.md)"
            ) from None

    def names(self) -> list[str]:
        return sorted(self.items)


@dataclass
class PluginInfo:
    name: str
    version: str
    source: str  # "default", "entry point" or "env"
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Registries:
    pm: pluggy.PluginManager
    families: Registry
    suites: Registry
    sources: Registry
    stages: Registry
    plugins: list[PluginInfo]

    @property
    def errors(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]

    def plugin_of(self, kind: str, name: str) -> PluginInfo | None:
        reg = {"family": self.families, "suite": self.suites, "source": self.sources, "stage": self.stages}[kind]
        owner = reg.owner.get(name)
        return next((p for p in self.plugins if p.name == owner), None)


def _module_version(mod: Any) -> str:
    return str(getattr(mod, "__version__", None) or getattr(mod, "VERSION", None) or "0")


def load(only: list[str] | None = None, extra_modules: tuple[str, ...] = ()) -> Registries:
    """Discover plugins, call their registration hooks, and return the filled registries."""
    pm = pluggy.PluginManager("factory")
    pm.add_hookspecs(hookspecs)
    env = os.environ.get("FACTORY_LOAD_PLUGINS")
    if only is None and env:
        only = [n.strip() for n in env.split(",") if n.strip()]

    infos: list[PluginInfo] = []
    candidates: list[tuple[str, str, Any]] = []  # (name, source, loader)
    for modname in DEFAULT_PLUGINS + tuple(extra_modules):
        candidates.append((modname, "default", lambda m=modname: importlib.import_module(m)))
    try:
        eps = metadata.entry_points(group="factory")
    except Exception:  # pragma: no cover - broken metadata
        eps = []
    for ep in eps:
        candidates.append((ep.name, "entry point", ep.load))

    known = {c[0] for c in candidates} | {c[0].rsplit(".", 1)[-1] for c in candidates}
    engine: set[str] = set()
    if only is not None:
        engine = {m for m in ENGINE_PLUGINS if m not in only and m.rsplit(".", 1)[-1] not in only}
        only = [*only, *sorted(engine)]
    for name in only or ():
        if name not in known:  # a module named only in the allowlist: load it too (one-off plugins)
            candidates.append((name, "env", lambda m=name: importlib.import_module(m)))
    for name, source, loader in candidates:
        if only is not None and name not in only and name.rsplit(".", 1)[-1] not in only:
            continue
        try:
            mod = loader()
            pm.register(mod, name=name)
            infos.append(PluginInfo(name=name, version=_module_version(mod), source=source))
        except Exception as e:  # a broken plugin must not take the others down
            infos.append(PluginInfo(name=name, version="?", source=source, error=f"{type(e).__name__}: {e}"))

    regs = {k: Registry(k) for k in KINDS}
    by_name = {p.name: p for p in infos}
    for kind, (_, hook) in KINDS.items():
        impls = getattr(pm.hook, hook).get_hookimpls()
        for impl in sorted(impls, key=lambda i: i.plugin_name in engine):  # the engine's kept modules last
            info = by_name[impl.plugin_name]

            def register(obj: Any, _info: PluginInfo = info, _kind: str = kind) -> None:
                if _info.name in engine and getattr(obj, "name", None) in regs[_kind].items:
                    return  # a named plugin supplies this one
                regs[_kind].register(obj, plugin=_info.name)
                _info.registered.setdefault(_kind, []).append(obj.name)

            try:
                impl.function(register)
            except FactoryError:
                raise
            except Exception as e:
                info.error = f"{hook} failed: {type(e).__name__}: {e}"
    return Registries(
        pm=pm,
        families=regs["family"],
        suites=regs["suite"],
        sources=regs["source"],
        stages=regs["stage"],
        plugins=infos,
    )


_cached: Registries | None = None


def registries() -> Registries:
    """The process-wide registries, loaded once."""
    global _cached
    if _cached is None:
        _cached = load()
    return _cached


def reset() -> None:
    global _cached
    _cached = None
