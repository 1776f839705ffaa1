"""Run directories: the files people read and archive, linked from the store.

A run is identified by the keys of all its stages; `runs/<date>-<recipe>-<key8>/`
is created once, in a temporary directory first and renamed into place, so a
reader never sees half a run. Re-running an unchanged recipe finds the run
already there and touches nothing. Once a run directory is in place (or a build added
events to it), the `run_finished` handlers receive it: the engine's own plugin publishes a
shipped specialist and refreshes the run index there, so this module imports neither.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from factory import hashing
from factory.errors import FactoryError
from factory.fastpath import note
from factory.project import UNFINISHED_DIR, unfinished
from factory.store import link_outputs

RUN_STAGE_FILES = {"dataset", "train", "eval-baseline", "eval-candidate", "decide", "report", "package"}


@dataclass
class RunInfo:
    """What the run_finished hook receives."""

    id: str
    path: Path
    recipe: str
    decision: str | None
    stage_keys: dict[str, str]

    @classmethod
    def of(cls, run_dir: Path) -> "RunInfo":
        """The RunInfo of a run directory, from its manifest and decision."""
        run_dir = Path(run_dir)
        man = json.loads((run_dir / "run_manifest.json").read_text())
        decision = None
        try:
            decision = json.loads((run_dir / "decision.json").read_text()).get("decision")
        except (OSError, ValueError, AttributeError):
            pass
        return cls(id=run_dir.name, path=run_dir, recipe=man["recipe"], decision=decision,
                   stage_keys=dict(man["stage_keys"]))


class RunWriter:
    """The run directory of one recipe in a session: its stage keys, whether it is up to date, and
    writing it (or finding it already written), then handing it to the `run_finished` handlers."""

    def __init__(self, session, recipe: str):
        self.session = session
        self.recipe = recipe

    @property
    def plan(self):
        return self.session.plan(self.recipe)

    def keys(self) -> dict[str, str]:
        plan = self.plan
        return {name: plan.key(name) for name in plan.order()}

    def find(self) -> Path | None:
        """The complete run directory of the current stage keys, if one exists."""
        return find_run(self.session.root, self.recipe, run_key(self.keys()))

    def uptodate(self) -> bool:
        from factory.plan import NotBuilt

        try:
            keys = self.keys()
        except NotBuilt:
            return False
        if any(self.session.store.manifest(k) is None for k in keys.values()):
            return False
        return find_run(self.session.root, self.recipe, run_key(keys)) is not None

    def finish(self) -> Path:
        """Write (or find) the run directory for the recipe's current stage keys.

        A run directory this build writes or adds events to is marked unfinished until every
        `run_finished` handler has returned; a build that finds a mark a dead build left runs the
        handlers for that run again (they are idempotent), so a kill in between loses nothing.
        """
        keys = self.keys()
        rkey = run_key(keys)
        events = self.events(keys)
        runs_dir = self.session.root / "runs"
        existing = find_run(self.session.root, self.recipe, rkey)
        if existing is not None:
            if any(e["status"] != "hit" for e in events):
                mark_unfinished(runs_dir, existing.name)
                _append_events(existing, events)
                self._finished(existing)
            self.finish_left_over()
            return existing

        runs_dir.mkdir(parents=True, exist_ok=True)
        date = datetime.now().strftime("%Y-%m-%d")
        run_id = f"{date}-{self.recipe}-{rkey[:8]}"
        _remove_dead_staging(runs_dir)
        staging = Path(tempfile.mkdtemp(dir=runs_dir, prefix=f".tmp-{os.getpid()}-"))
        try:
            self._write(staging, run_id, keys, events)
            dest = runs_dir / run_id
            if dest.exists():  # same key built earlier today but left incomplete
                shutil.rmtree(dest)
            mark_unfinished(runs_dir, run_id)  # a kill from here until the handlers return: the next build runs them
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._finished(dest)
        self.finish_left_over()
        return dest

    def _write(self, staging: Path, run_id: str, keys: dict[str, str], events: list[dict[str, Any]]) -> None:
        from factory.records import RunManifest, dump_record

        session, plan = self.session, self.plan
        for name, key in keys.items():
            st = plan.stages[name]
            man = session.store.manifest(key)
            if man.get("stopped"):  # not built: an upstream check failed; its stop record says which
                link_outputs(session.store, man, staging / "stopped", only={"stop.json"}, copy=True)
                os.replace(staging / "stopped" / "stop.json", staging / "stopped" / f"{name}.json")
                continue
            if not st.run_files:
                continue
            link_outputs(session.store, man, staging / st.run_prefix, copy=True)
            if name == plan.final_train and st.run_prefix:  # the candidate is the last step's
                link_outputs(session.store, man, staging, copy=True)
        if plan.recipe.multi_step or any(plan.stages[n].kind == "promote" for n in keys):
            (staging / "training_plan.json").write_text(
                json.dumps(self.training_plan(keys), indent=2, sort_keys=True) + "\n")
        config = self.config_record(keys)
        (staging / "config.json").write_text(dump_record(config))
        if plan.recipe.path and Path(plan.recipe.path).is_file():  # the recipe as built: `factory reproduce` reads it
            shutil.copyfile(plan.recipe.path, staging / "recipe.yaml")
        _append_events(staging, events)
        files = {p.relative_to(staging).as_posix(): hashing.hash_file(p) for p in hashing.tree_files(staging)
                 if p.name != "events.jsonl"}
        train_cfg = plan.config(plan.final_train)
        manifest = RunManifest(
            run_id=run_id, recipe=self.recipe,
            recipe_path=os.path.relpath(plan.recipe.path, session.root) if plan.recipe.path else "",
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            git=_git(session.root), versions=_versions(), device=train_cfg.get("device"),
            seeds={"train": int(plan.recipe.steps()[-1].seed),
                   **{f"train.{st.name}": int(st.seed) for st in plan.recipe.steps() if plan.recipe.multi_step},
                   **config.seeds},
            stage_keys=keys, files=files,
        )
        (staging / "run_manifest.json").write_text(dump_record(manifest))

    def _finished(self, run_dir: Path) -> None:
        """Hand the run to every `run_finished` handler (the engine's own publish the specialist and
        refresh the index, after a plugin's), then clear its unfinished mark."""
        self.session.regs.pm.hook.run_finished(run=RunInfo.of(run_dir))
        (run_dir.parent / UNFINISHED_DIR / run_dir.name).unlink(missing_ok=True)

    def finish_left_over(self) -> None:
        """Run the handlers of every run a dead build marked unfinished; drop the marks of runs it never
        moved into place."""
        runs_dir = self.session.root / "runs"
        for run_id in unfinished(runs_dir):
            mark = runs_dir / UNFINISHED_DIR / run_id
            try:
                pid = int(mark.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and pid_alive(pid):
                continue  # its build is still at work
            run_dir = runs_dir / run_id
            if (run_dir / "run_manifest.json").is_file():
                self._finished(run_dir)
            elif pid != os.getpid():
                mark.unlink(missing_ok=True)

    def config_record(self, keys: dict[str, str]):
        from factory.records import SCHEMA_VERSION, BaseModelInfo, RunConfig

        session, plan = self.session, self.plan
        r = plan.recipe
        base_digest = session.store.manifest(keys["base"])["output_digest"]
        return RunConfig(
            schema_version=SCHEMA_VERSION,
            recipe=self.recipe,
            goal=r.goal,
            owner=r.owner,
            base=BaseModelInfo(family=r.base.family, model=r.base.model, digest=base_digest),
            method=r.steps()[-1].method,
            data=plan.config("dataset"),
            train=plan.config(plan.final_train),
            evals={"primary": r.evals.primary, "regression": r.evals.regression, "extra": r.evals.extra,
                   **plan.config("eval-candidate")["settings"]},
            criteria=r.criteria.model_dump(mode="json"),
            stage_keys=keys,
            stages={name: plan.config(name) for name in keys},
            stage_outputs={name: session.store.manifest(k)["output_digest"] for name, k in keys.items()},
            seeds=all_seeds({name: plan.config(name) for name in keys}),
        )

    def events(self, keys: dict[str, str]) -> list[dict[str, Any]]:
        """This invocation's events for the recipe's stages; stages it did not touch count as hits."""
        from factory.records import Event

        mine = [e for e in self.session.invocation_events()
                if e.get("recipe") == self.recipe or e.get("key") in keys.values()]
        seen = {e["key"] for e in mine}
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        plan = self.plan
        for name, key in keys.items():
            if key not in seen:
                mine.append({"stage": name, "kind": plan.stages[name].kind, "key": key, "status": "hit",
                             "start": now, "end": now, "seconds": 0.0, "host": platform.node(), "pid": os.getpid()})
        lines = []
        for e in mine:
            e = {k: v for k, v in e.items() if k != "recipe"}
            lines.append(Event.model_validate(e).model_dump(mode="json", exclude_none=True))
        return lines

    def training_plan(self, keys: dict[str, str]) -> dict[str, Any]:
        """training_plan.json: the steps in order, their methods, data digests and settings as resolved,
        whether each was trained or stopped, and each promotion check's verdict."""
        store, plan = self.session.store, self.plan
        steps = []
        for name, st in plan.stages.items():
            if st.kind != "train":
                continue
            step = plan.steps[name]
            man = store.manifest(keys[name]) or {}
            material = man.get("material") or {}
            entry: dict[str, Any] = {
                "name": step.name, "stage": name, "key": keys[name], "method": step.method, "data": step.data,
                "data_digest": (material.get("inputs") or {}).get("train"),
                "starts_from": st.inputs["init"].stage if "init" in st.inputs else "base",
                "settings": plan.config(name), "status": "stopped" if man.get("stopped") else "trained",
                "final_loss": None, "promote": None,
            }
            if not man.get("stopped") and "train.json" in (man.get("outputs") or {}):
                entry["final_loss"] = json.loads(store.file(keys[name], "train.json").read_text()).get("final_loss")
            pname = f"promote-{step.name}"
            if pname in plan.stages:
                pman = store.manifest(keys[pname]) or {}
                verdict = None
                if not pman.get("stopped") and "verdict.json" in (pman.get("outputs") or {}):
                    verdict = json.loads(store.file(keys[pname], "verdict.json").read_text())
                entry["promote"] = {"stage": pname, "criteria": dict(step.promote),
                                    "passed": None if verdict is None else bool(verdict.get("pass")),
                                    "reason": None if verdict is None else verdict.get("reason"),
                                    "checks": [] if verdict is None else verdict.get("checks", [])}
            steps.append(entry)
        return {"schema_version": "1.0", "recipe": plan.recipe.name, "final": plan.final_train, "steps": steps}


def run_key(keys: dict[str, str]) -> str:
    return hashing.digest_json(keys)



def find_run(root: Path, recipe: str, key: str) -> Path | None:
    runs = root / "runs"
    if not runs.is_dir():
        return None
    for d in sorted(runs.glob(f"*-{recipe}-{key[:8]}")):
        if (d / "run_manifest.json").exists() and (d / "decision.json").exists():
            note(d / "run_manifest.json")
            note(d / "decision.json")
            return d
    return None



def _git(root: Path) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}



def _versions() -> dict[str, str | None]:
    from factory.stages import numerics_versions

    # the libraries that change numbers exactly as the stage keys record them, and the rest of the toolchain
    out: dict[str, str | None] = {"python": platform.python_version(), **numerics_versions()}
    for pkg in ("factory", "safetensors", "doit", "duckdb", "pydantic", "pluggy"):
        out[pkg] = _installed(pkg)
    torch = sys.modules.get("torch")  # only if a stage already paid for importing it
    out["cuda"] = getattr(getattr(torch, "version", None), "cuda", None) if torch else None
    return out


def _installed(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def all_seeds(obj: Any, where: str = "") -> dict[str, int]:
    """Every integer under a key named seed (or *_seed), by its dotted path: config.json keeps them all."""
    out: dict[str, int] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            path = f"{where}.{k}" if where else str(k)
            if (k == "seed" or str(k).endswith("_seed")) and isinstance(v, int) and not isinstance(v, bool):
                out[path] = v
            else:
                out.update(all_seeds(v, path))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(all_seeds(v, f"{where}.{i}"))
    return out


def mark_unfinished(runs_dir: Path, run_id: str) -> None:
    """Note, before a run directory is moved into place or added to, that its handlers must run;
    written whole or not at all (a kill leaves no half mark)."""
    d = Path(runs_dir) / UNFINISHED_DIR
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{run_id}.{os.getpid()}.tmp"
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, d / run_id)


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid is running (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_staging(runs_dir: Path) -> None:
    """Remove the staging directories of builds that died before moving them into place
    (`.tmp-<pid>-*` whose process is gone; a kill -9 runs no cleanup)."""
    for d in runs_dir.glob(".tmp-*"):
        pid = d.name.split("-")[1] if d.name.count("-") >= 2 else ""
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)



def _append_events(run_dir: Path, events: list[dict[str, Any]]) -> None:
    with open(run_dir / "events.jsonl", "a") as f:
        for e in events:
            f.write(json.dumps(e, sort_keys=True) + "\n")



def resolve_run(root: Path, ref: str) -> Path:
    """A run directory from a path, a run id, a recipe name (its newest run), or a unique part of an id."""
    p = Path(ref)
    if p.is_dir():
        return p
    runs = root / "runs"
    cands = [d for d in runs.iterdir() if d.is_dir() and not d.name.startswith(".")] if runs.is_dir() else []
    exact = [d for d in cands if d.name == ref]
    if exact:
        return exact[0]
    # A recipe name means its newest run: ids are <YYYY-MM-DD>-<recipe>-<key8>.
    of_recipe = [d for d in cands if d.name[11:].rsplit("-", 1)[0] == ref]
    if of_recipe:
        return max(of_recipe, key=lambda d: ((d / "run_manifest.json").stat().st_mtime_ns
                                             if (d / "run_manifest.json").exists() else 0, d.name))
    partial = [d for d in cands if ref in d.name]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise FactoryError(f"{ref}: no such run (see `factory runs`)")
    raise FactoryError(f"{ref}: matches {len(partial)} runs: {', '.join(sorted(d.name for d in partial)[:5])}")
