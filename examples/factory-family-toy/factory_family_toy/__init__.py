"""factory-family-toy: an example plugin that registers the `toy-gpt2` model family and a
`row-lengths` stage kind a recipe can place in its graph.

factory loads this module through the `factory` entry point declared in
pyproject.toml and calls the hooks below. Importing it stays cheap: torch and
transformers are imported inside the family's methods, only when a build
needs them.
"""

from __future__ import annotations

import json
import os

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from factory.hookspecs import hookimpl
from factory.stages import StageKind

from factory_family_toy.family import ToyGPT2Family

__version__ = "0.1.0"
__all__ = ["ToyGPT2Family", "__version__"]


@hookimpl
def register_model_families(register):
    register(ToyGPT2Family())


class RowLengthOptions(BaseModel):
    """Options of a placed `row-lengths` stage (recipe: stages.<name>.options), checked at plan time."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field("prompt", description="which field of each row to measure")
    buckets: list[int] = Field(default_factory=lambda: [32, 64, 128], description="upper bounds of the histogram's bins")


def build_row_lengths(ctx):
    """A histogram of one field's length over the rows of input `rows` (a jsonl file): row-lengths.json."""
    from factory.records import read_rows

    opts = RowLengthOptions.model_validate(ctx.config["options"])
    counts = {str(b): 0 for b in opts.buckets} | {"more": 0}
    for row in read_rows(Path(ctx.inputs["rows"])):
        n = len(str(row.get(opts.field, "")))
        bucket = next((str(b) for b in opts.buckets if n <= b), "more")
        counts[bucket] += 1
    (Path(ctx.out) / "row-lengths.json").write_text(json.dumps({"field": opts.field, "counts": counts}, indent=2) + "\n")


@hookimpl
def register_stage_kinds(register):
    # `inputs` and `options` make the kind placeable: a recipe names it under `stages:`.
    register(StageKind("row-lengths", build_row_lengths, options=RowLengthOptions, inputs=("rows",),
                       description="histogram of a field's length over a jsonl input"))


@hookimpl
def run_finished(run):
    # An export hook: with FACTORY_TOY_RUN_LOG set, append one JSON line per finished run.
    path = os.environ.get("FACTORY_TOY_RUN_LOG")
    if not path:
        return
    line = {"run": run.id, "recipe": run.recipe, "decision": run.decision, "path": str(run.path)}
    with open(path, "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
