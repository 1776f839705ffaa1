"""factory-family-toy: an example plugin that registers the `toy-gpt2` model family.

factory loads this module through the `factory` entry point declared in
pyproject.toml and calls the hooks below. Importing it stays cheap: torch and
transformers are imported inside the family's methods, only when a build
needs them.
"""

from __future__ import annotations

import json
import os

from factory.hookspecs import hookimpl

from factory_family_toy.family import ToyGPT2Family

__version__ = "0.1.0"
__all__ = ["ToyGPT2Family", "__version__"]


@hookimpl
def register_model_families(register):
    register(ToyGPT2Family())


@hookimpl
def run_finished(run):
    # An export hook: with FACTORY_TOY_RUN_LOG set, append one JSON line per finished run.
    path = os.environ.get("FACTORY_TOY_RUN_LOG")
    if not path:
        return
    line = {"run": run.id, "recipe": run.recipe, "decision": run.decision, "path": str(run.path)}
    with open(path, "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
