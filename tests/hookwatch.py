"""A plugin that implements every hook and writes what each one was called with to $HOOKWATCH_LOG.

It registers one object of each kind (family `watched`, suite `watched-primary`, source
`watched-lines`, placeable stage kind `watched-count`), and those objects log the calls the
build makes into them, so a test sees each hook's argument at work in a real build.
"""

import json
import os
from pathlib import Path

from factory.hookspecs import hookimpl
from factory.stages import StageKind

import enginekit

__version__ = "1"


def note(**event):
    with open(os.environ["HOOKWATCH_LOG"], "a") as f:
        f.write(json.dumps(event, sort_keys=True, default=str) + "\n")


class WatchedFamily(enginekit.Fake):
    name = "watched"

    def default_train_params(self, ctx):
        note(call="family.default_train_params", type=type(ctx).__name__, method=ctx.method,
             train_rows=ctx.train_rows, heldout_rows=ctx.heldout_rows)
        return super().default_train_params(ctx)


class WatchedLines(enginekit.Lines):
    name = "watched-lines"

    def files(self, spec, root):
        note(call="source.files", spec=spec)
        return super().files(spec, root)


def build_watched_count(ctx):
    rows = Path(ctx.inputs["rows"]).read_text().splitlines()
    note(call="kind.build", stage=ctx.stage, kind=ctx.kind, key=ctx.key, rows=len(rows))
    (ctx.out / "count.json").write_text(json.dumps({"rows": len(rows)}) + "\n")


def _registered(hook, register, obj):
    note(call=hook, register_callable=callable(register), name=obj.name)
    register(obj)


@hookimpl
def register_model_families(register):
    _registered("register_model_families", register, WatchedFamily())


@hookimpl
def register_eval_suites(register):
    _registered("register_eval_suites", register, enginekit.Suite("watched-primary"))


@hookimpl
def register_dataset_sources(register):
    _registered("register_dataset_sources", register, WatchedLines())


@hookimpl
def register_stage_kinds(register):
    _registered("register_stage_kinds", register, StageKind("watched-count", build_watched_count, inputs=("rows",)))


@hookimpl
def run_finished(run):
    note(call="run_finished", type=type(run).__module__ + "." + type(run).__qualname__, id=run.id,
         path=str(run.path), recipe=run.recipe, decision=run.decision, stage_keys=run.stage_keys)
