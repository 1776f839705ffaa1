"""doit task generators: the only module that speaks to doit.

`doit recipe:<name>` builds a recipe; each of its stages is a task
`stage:<name>.<stage>` whose up-to-date check asks the store (see
factory.engine), so doit's own database is a convenience, never the truth.

A recipe whose run is complete and whose every input file still has the
stats it had then is up to date without loading the engine at all (see
factory.fastpath): listing tasks and a no-op build cost little more than doit.
"""

from __future__ import annotations

import atexit
import sys
from typing import Any

from doit.exceptions import TaskFailed

from factory import fastpath
from factory.cli import install_interrupt_hook as _install_interrupt_hook
from factory.project import find_root

DOIT_CONFIG = {
    "backend": "sqlite3",  # atomic, unlike the dbm.dumb fallback
    "dep_file": "cache/doit.sqlite3",
    "verbosity": 2,
}

ROOT = find_root()
_install_interrupt_hook("doit")  # Ctrl-C during a build: one line, exit 130
# doit opens its database before it asks for tasks, so its folder must exist first.
(ROOT / "cache").mkdir(exist_ok=True)

_session = None
_graphs: list[tuple[str, dict[str, Any] | None, str | None, bool]] | None = None


def session():
    from factory import hashing
    from factory.engine import Session

    global _session
    if _session is None:
        _session = Session(ROOT)
        atexit.register(lambda: hashing.stat_cache().save())
    return _session


def _save_stat_cache() -> None:
    if _session is not None:
        from factory import hashing

        hashing.stat_cache().save()


def _fail(message: str) -> TaskFailed:
    return TaskFailed(message)


def _graph(plan) -> dict[str, Any]:
    goal = plan.recipe.goal.strip()
    return {
        "doc": goal.splitlines()[0] if goal else f"build {plan.recipe.name}",
        "stages": [[name, st.kind, st.upstream()] for name, st in plan.stages.items()],
    }


def _remember(recipe: str) -> None:
    """Record what the recipe's complete, up-to-date run rests on, for the next no-op."""
    from factory.runs import RunWriter

    s = session()
    plan = s.plan(recipe)
    run = RunWriter(s, recipe).find()
    if run is None:
        return
    paths = set(fastpath.TOUCHED) | {str(run / "decision.json"), str(run / "run_manifest.json")}
    for name in plan.order():
        key = plan.key(name)
        paths.add(str(s.store.manifest_path(key)))
        man = s.store.manifest(key) or {"outputs": {}}
        paths.update(str(s.store.object_path(e["digest"])) for e in man["outputs"].values())
    tops = {"factory", "factory_plugins"} | {p.name.split(".", 1)[0] for p in s.regs.plugins}
    paths |= fastpath.module_files(tops)
    fastpath.record(ROOT, recipe, paths, _graph(plan))


def _stage_uptodate(recipe: str, stage: str) -> bool:
    from factory.errors import FactoryError

    try:
        return session().stage_uptodate(recipe, stage)
    except FactoryError as e:
        print(f"factory: {e}", file=sys.stderr)
        return False


def _run_stage(recipe: str, stage: str):
    from factory.errors import FactoryError

    fastpath.forget(ROOT, recipe)
    try:
        session().run_stage(recipe, stage)
    except FactoryError as e:
        return TaskFailed(f"{recipe}/{stage}: {e}")
    finally:
        _save_stat_cache()
    return None


def _run_uptodate(recipe: str) -> bool:
    from factory.errors import FactoryError
    from factory.runs import RunWriter

    try:
        ok = RunWriter(session(), recipe).uptodate()
    except FactoryError:
        return False
    if ok:
        _remember(recipe)
    return ok


def _runs_finished() -> bool:
    from factory.project import unfinished

    return not unfinished(ROOT / "runs")


def _finish(recipe: str):
    from factory.errors import FactoryError
    from factory.runs import RunWriter

    try:
        run_dir = RunWriter(session(), recipe).finish()
        _remember(recipe)
    except FactoryError as e:
        return TaskFailed(f"{recipe}: {e}")
    finally:
        _save_stat_cache()
    _print_summary(run_dir)
    return None


def _print_summary(run_dir) -> None:
    import json

    try:
        d = json.loads((run_dir / "decision.json").read_text())
        print(f"{run_dir.name}: {d.get('decision')} ({d.get('reason')})")
    except (OSError, ValueError):
        print(run_dir.name)
    print(f"run directory: {run_dir}")


def _recipes() -> list[tuple[str, dict[str, Any] | None, str | None, bool]]:
    """(name, task graph, error, fast) for every recipe file, loading the engine only when needed."""
    global _graphs
    if _graphs is None:
        _graphs = []
        for path in sorted((ROOT / "recipes").glob("*.yaml")):
            name = path.stem
            graph = fastpath.check(ROOT, name)
            if graph is not None:
                _graphs.append((name, graph, None, True))
                continue
            graph = fastpath.check(ROOT, name, kind="graph")
            if graph is not None:  # stale or never built, but its tasks are known: no engine needed yet
                _graphs.append((name, graph, None, False))
                continue
            from factory.errors import FactoryError

            try:
                graph = _graph(session().plan(name))
            except FactoryError as e:
                _graphs.append((name, None, str(e), False))
                continue
            _graphs.append((name, graph, None, False))
            tops = {"factory", "factory_plugins"} | {p.name.split(".", 1)[0] for p in session().regs.plugins}
            fastpath.record(ROOT, name, {str(path)} | fastpath.module_files(tops), graph, kind="graph")
    return _graphs


def task_recipe():
    """Build a recipe end to end: dataset, training, both evals, the gate, the report and the package."""
    for name, graph, error, fast in _recipes():
        # A top-level task per recipe, so a plain `doit list` shows every recipe:<name>.
        if error is not None:
            yield {"basename": f"recipe:{name}", "doc": f"INVALID: {error}", "actions": [(_fail, [error])],
                   "uptodate": [False]}
            continue
        yield {
            "basename": f"recipe:{name}",
            "doc": graph["doc"],
            "actions": [(_finish, [name])],
            "task_dep": [f"stage:{name}.{s}" for s, _, _ in graph["stages"]],
            # not up to date while a run waits for its run_finished handlers (a build killed before they ran)
            "uptodate": ([True] if fast else [(_run_uptodate, [name])]) + [(_runs_finished, [])],
            "verbosity": 2,
        }


def task_stage():
    """One stage of a recipe (`doit recipe:<name>` runs them all, in order)."""
    for name, graph, error, fast in _recipes():
        if error is not None:
            continue
        for stage_name, kind, upstream in graph["stages"]:
            yield {
                "name": f"{name}.{stage_name}",
                "doc": f"{kind} stage of {name}",
                "actions": [(_run_stage, [name, stage_name])],
                "task_dep": [f"stage:{name}.{u}" for u in upstream],
                "uptodate": [True] if fast else [(_stage_uptodate, [name, stage_name])],
                "verbosity": 2,
            }
