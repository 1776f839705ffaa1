"""doit task generators: the only module that speaks to doit.

`doit recipe:<name>` builds a recipe; each of its stages is a task
`stage:<name>.<stage>` whose up-to-date check asks the store (see
factory.engine), so doit's own database is a convenience, never the truth.
"""

from __future__ import annotations

import atexit
import sys

from doit.exceptions import TaskFailed

from factory import hashing
from factory.engine import Session, find_root
from factory.errors import FactoryError
from factory.recipe import recipe_files

DOIT_CONFIG = {
    "backend": "sqlite3",  # atomic, unlike the dbm.dumb fallback
    "dep_file": "cache/doit.sqlite3",
    "verbosity": 2,
    }

_session: Session | None = None

# doit opens its database before it asks for tasks, so its folder must exist first.
(find_root() / "cache").mkdir(exist_ok=True)


def session() -> Session:
    global _session
    if _session is None:
        _session = Session(find_root())
        (_session.root / "cache").mkdir(exist_ok=True)
        atexit.register(lambda: hashing.stat_cache().save())
    return _session


def _fail(message: str) -> TaskFailed:
    return TaskFailed(message)


def _stage_uptodate(recipe: str, stage: str) -> bool:
    try:
        return session().stage_uptodate(recipe, stage)
    except FactoryError as e:
        print(f"factory: {e}", file=sys.stderr)
        return False


def _run_stage(recipe: str, stage: str):
    try:
        session().run_stage(recipe, stage)
    except FactoryError as e:
        return TaskFailed(f"{recipe}/{stage}: {e}")
    finally:
        hashing.stat_cache().save()
    return None


def _run_uptodate(recipe: str) -> bool:
    from factory.runs import run_uptodate

    try:
        return run_uptodate(session(), recipe)
    except FactoryError:
        return False


def _finish(recipe: str):
    from factory.runs import finish_run

    try:
        run_dir = finish_run(session(), recipe)
    except FactoryError as e:
        return TaskFailed(f"{recipe}: {e}")
    finally:
        hashing.stat_cache().save()
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


def _plans():
    s = session()
    for path in recipe_files(s.root):
        name = path.stem
        try:
            yield name, s.plan(name), None
        except FactoryError as e:
            yield name, None, str(e)


def task_recipe():
    """Build a recipe end to end: dataset, training, both evals, the gate, the report and the package."""
    for name, plan, error in _plans():
        # A top-level task per recipe, so a plain `doit list` shows every recipe:<name>.
        if error is not None:
            yield {"basename": f"recipe:{name}", "doc": f"INVALID: {error}", "actions": [(_fail, [error])],
                   "uptodate": [False]}
            continue
        goal = plan.recipe.goal.strip().splitlines()[0] if plan.recipe.goal.strip() else f"build {name}"
        yield {
            "basename": f"recipe:{name}",
            "doc": goal,
            "actions": [(_finish, [name])],
            "task_dep": [f"stage:{name}.{s}" for s in plan.order()],
            "uptodate": [(_run_uptodate, [name])],
            "verbosity": 2,
        }


def task_stage():
    """One stage of a recipe (`doit recipe:<name>` runs them all, in order)."""
    for name, plan, error in _plans():
        if error is not None:
            continue
        for stage_name, st in plan.stages.items():
            yield {
                "name": f"{name}.{stage_name}",
                "doc": f"{st.kind} stage of {name}",
                "actions": [(_run_stage, [name, stage_name])],
                "task_dep": [f"stage:{name}.{u}" for u in st.upstream()],
                "uptodate": [(_stage_uptodate, [name, stage_name])],
                "verbosity": 2,
            }

