"""Running stages through the store: is it up to date, restore it, or build it.

Up-to-date decisions come from the store alone (a manifest under the stage's
key, with every object intact), never from doit's own state file, so a lost
or stale doit database costs at most a cheap re-check, never a rebuild.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from factory import plugins
from factory.errors import FactoryError
from factory.plan import NotBuilt, Plan
from factory.recipe import Recipe, load_recipe
from factory.stages import BuildContext
from factory.store import Store


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Session:
    """Everything one process needs to plan and build: root, store, registries, plans."""

    root: Path
    store: Store = field(init=False)
    plans: dict[str, Plan] = field(default_factory=dict)
    recipes: dict[str, Recipe] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.store = Store(self.root / "cache")
        self._remote: Any = False  # not looked up yet

    def settings(self) -> dict[str, Any]:
        """The project's [tool.factory] settings (remote, executor, ...), read once."""
        if not hasattr(self, "_settings"):
            from factory.remote import settings

            self._settings = settings(self.root)
        return self._settings

    def context(self, recipe: str, stage: str, out: Path, work: Path) -> BuildContext:
        """What a stage's build receives: its config, inputs, output and scratch directories."""
        plan = self.plan(recipe)
        return BuildContext(
            recipe=plan.recipe, stage=stage, kind=plan.stages[stage].kind, key=plan.key(stage),
            config=plan.config(stage), inputs=plan.input_paths(stage), out=Path(out), root=self.root,
            registry=self.regs, work=Path(work), input_digests=plan.input_digests(stage),
            log=lambda msg: print(f"[{stage}] {msg}", flush=True),
            extra={"family": plan.family, "session": self},
        )

    def _build(self, recipe: str, ctx: BuildContext, kind: Any) -> None:
        """Run a stage's build here, or as a Ray task where the project says so (factory.executor)."""
        from factory import executor

        if executor.wanted(self.settings(), ctx.kind):
            ctx.facts.update(executor.build_on_cluster(
                remote_build, self.settings(), str(self.root), recipe, ctx.stage, str(ctx.out), str(ctx.work),
                executor.resources(ctx.recipe, ctx.kind, ctx.stage)))
        else:
            kind.build(ctx)

    def remote(self):
        """The project's remote cache (factory.remote.Remote), or None; settings are read once, fsspec later."""
        if self._remote is False:
            from factory.remote import from_settings

            self._remote = from_settings(self.root)
        return self._remote

    @property
    def regs(self):
        return plugins.registries()

    def recipe(self, name: str) -> Recipe:
        if name not in self.recipes:
            self.recipes[name] = load_recipe(self.root / "recipes" / f"{name}.yaml", self.root)
        return self.recipes[name]

    def plan(self, name: str) -> Plan:
        if name not in self.plans:
            self.plans[name] = Plan(self.recipe(name), self.root, self.regs, self.store)
        return self.plans[name]

    # --- events ---------------------------------------------------------------

    def events_path(self) -> Path:
        inv = os.environ.setdefault("FACTORY_INVOCATION", f"{os.getpid()}-{int(time.time() * 1000)}")
        return self.store.root / "events" / f"{inv}.jsonl"

    def record(self, **event: Any) -> None:
        if event.get("recipe") in self.plans and event.get("stage"):
            step = self.plans[event["recipe"]].stages[event["stage"]].step
            if step is not None and self.plans[event["recipe"]].recipe.multi_step:
                event.setdefault("step", step)
        p = self.events_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        event.setdefault("host", socket.gethostname())
        event.setdefault("pid", os.getpid())
        with open(p, "a") as f:  # one short line per write: appends from parallel stages do not interleave
            f.write(json.dumps(event, sort_keys=True) + "\n")

    def invocation_events(self) -> list[dict[str, Any]]:
        p = self.events_path()
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    # --- stages ---------------------------------------------------------------

    def stage_uptodate(self, recipe: str, stage: str) -> bool:
        plan = self.plan(recipe)
        try:
            key = plan.key(stage)
        except NotBuilt:
            return False
        ok = self.store.check(key) is not None
        self._report_corruption()
        return ok

    def _report_corruption(self) -> None:
        for c in self.store.corruptions:
            print(
                f"factory: cache object {c.path} of stage {c.key[:12]} is corrupted "
                f"(expected {c.expected[:12]}, found {c.found[:12]}); discarded, rebuilding",
                file=sys.stderr,
            )
        self.store.corruptions.clear()

    def run_stage(self, recipe: str, stage: str) -> str:
        """Make sure the stage's output is in the store; build it if it is not. Returns hit or built."""
        plan = self.plan(recipe)
        st = plan.stages[stage]
        key = plan.key(stage)
        start, t0 = utc_now(), time.perf_counter()
        with self.store.shared(), self.store.lock(key):
            man = self.store.check(key)
            self._report_corruption()
            if man is not None:
                self.store.touch_used(key)
                self.record(stage=stage, kind=st.kind, key=key, status="hit", start=start, end=utc_now(),
                            seconds=round(time.perf_counter() - t0, 4), recipe=recipe)
                return "hit"
            remote = self.remote()
            if remote is not None and remote.fetch(self.store, key, stage) is not None:
                self.record(stage=stage, kind=st.kind, key=key, status="restored", start=start, end=utc_now(),
                            seconds=round(time.perf_counter() - t0, 4), recipe=recipe, source=remote.name)
                return "restored"
            out = self.store.new_build_dir()
            kind = self.regs.stages.get(st.kind)
            stop = plan.stop_of(stage)
            if stop is not None and not kind.handles_stop:
                # An upstream check failed: nothing is built or trained; the stop record takes its place.
                (out / "stop.json").write_text(json.dumps(stop, indent=2, sort_keys=True) + "\n")
                self.store.publish(key, out, {"stage": stage, "kind": st.kind, "recipe": recipe,
                                              "created": utc_now(), "seconds": 0.0, "stopped": True,
                                              "material": plan.material(stage)})
                self.record(stage=stage, kind=st.kind, key=key, status="stopped", start=start, end=utc_now(),
                            seconds=round(time.perf_counter() - t0, 4), recipe=recipe,
                            stopped_by=stop["stopped_by"])
                print(f"[{stage}] not built: {stop['stopped_by']} did not pass "
                      f"({stop['verdict'].get('reason', '')})", flush=True)
                return "stopped"
            ctx = self.context(recipe, stage, out, self.store.work_dir(key))
            try:
                self._build(recipe, ctx, kind)
            except BaseException as e:  # noqa: BLE001 - recorded, then re-raised
                shutil.rmtree(out, ignore_errors=True)
                err = str(e) if isinstance(e, FactoryError) else f"{type(e).__name__}: {e}"
                self.record(stage=stage, kind=st.kind, key=key, status="failed", start=start, end=utc_now(),
                            seconds=round(time.perf_counter() - t0, 4), recipe=recipe, error=err)
                if not isinstance(e, (FactoryError, KeyboardInterrupt, SystemExit)):
                    traceback.print_exc()
                raise
            seconds = round(time.perf_counter() - t0, 4)
            self.store.publish(key, out, {"stage": stage, "kind": st.kind, "recipe": recipe,
                                          "created": utc_now(), "seconds": seconds,
                                          "material": plan.material(stage), "facts": ctx.facts})
            shutil.rmtree(self.store.work / key, ignore_errors=True)
            if remote is not None:
                remote.push(self.store, key)
            self.record(stage=stage, kind=st.kind, key=key, status="built", start=start, end=utc_now(),
                        seconds=seconds, recipe=recipe, **({"facts": ctx.facts} if ctx.facts else {}))
            return "built"

    def build(self, recipe: str) -> Path:
        """Build every stage of a recipe in order, then its run directory (no doit involved)."""
        from factory import runs

        plan = self.plan(recipe)
        for stage in plan.order():
            if not self.stage_uptodate(recipe, stage):
                self.run_stage(recipe, stage)
        return runs.RunWriter(self, recipe).finish()


def remote_build(root: str, recipe: str, stage: str, out: str, work: str) -> dict[str, Any]:
    """A stage's build where the executor runs it (a Ray worker): plan the recipe from the shared
    project, build into `out`, and return the build's facts with the node it ran on."""
    import socket

    s = Session(Path(root))
    ctx = s.context(recipe, stage, Path(out), Path(work))
    s.regs.stages.get(ctx.kind).build(ctx)
    return {**ctx.facts, "ray_node": socket.gethostname(), "ray_pid": os.getpid()}
