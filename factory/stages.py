"""Stages: a kind, a resolved config and inputs; a key and a build.

A stage's key is the xxh3-128 of the canonical JSON of its kind, resolved
config, code identity and the digests of its inputs. Anything that can change
the output must be in one of those; nothing else may be.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from factory import hashing
from factory.errors import FactoryError


@dataclass
class StageKind:
    """A kind of stage a plugin can register: how to build it and which code it is."""

    name: str
    build: Callable[["BuildContext"], None]
    code_version: str | None = None  # an explicit pin; otherwise the AST digest of build's module
    description: str = ""
    modules: tuple[str, ...] = ()  # further modules whose code decides the output (AST digests join the key)
    # A kind a recipe can place (`stages:` in the recipe): the pydantic model of its options
    # (extra="forbid"), checked at plan time, and the input names its build reads.
    options: Any = None
    inputs: tuple[str, ...] = ()
    # Whether build runs when an upstream stage was stopped by a failed guard (the gate, the report);
    # otherwise the engine publishes a stop.json in its place and nothing is built or trained.
    handles_stop: bool = False


@dataclass
class BuildContext:
    """Everything a stage's build function may use. It writes its outputs into `out`."""

    recipe: Any  # factory.recipe.Recipe
    stage: str  # the stage's name in the plan: "train", "eval-baseline", ...
    kind: str
    key: str
    config: dict[str, Any]
    inputs: dict[str, Path]  # input name -> read-only file or directory
    out: Path  # an empty temporary directory; everything written here is published
    root: Path  # project root
    registry: Any  # factory.plugins.Registry
    work: Path | None = None  # persistent scratch for this key (checkpoints); removed after publish
    input_digests: dict[str, str] = field(default_factory=dict)  # input name -> digest (base digest, ...)
    log: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. "family": the ModelFamily object
    # Measurements of this execution (seconds, tokens/s, peak memory): they go to the stage manifest and
    # events.jsonl, never into `out`, whose bytes must be a function of the inputs alone.
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Input:
    """An input of a planned stage: another stage's output (or one file of it), or a source file."""

    stage: str | None = None
    file: str | None = None  # a path inside that stage's outputs; None means the whole output
    path: Path | None = None  # a source file or directory in the project


@dataclass
class Stage:
    """A planned stage: everything needed to compute its key once its inputs exist."""

    name: str
    kind: str
    config: dict[str, Any]
    inputs: dict[str, Input]
    code: dict[str, Any]
    run_files: bool = True  # materialize outputs into the run directory
    doc: str = ""
    # Stages whose verdict.json must pass before this one builds. A passing guard is not part of
    # the key (a threshold that still passes rebuilds nothing); a failing one stops this stage.
    guards: list[str] = field(default_factory=list)
    run_prefix: str = ""  # where its files land in the run directory ("steps/<name>/", ...)
    step: str | None = None  # the training step a train or promote stage belongs to

    def upstream(self) -> list[str]:
        return sorted({i.stage for i in self.inputs.values() if i.stage} | set(self.guards))


_code_cache: dict[str, str] = {}


def code_identity(kind: StageKind, plugin: str = "", plugin_version: str = "") -> dict[str, Any]:
    """Identity of the code that builds a stage: plugin name/version and the module's AST digest."""
    ident: dict[str, Any] = {"plugin": plugin, "plugin_version": plugin_version}
    if kind.code_version is not None:
        ident["code_version"] = kind.code_version
    else:
        module = getattr(kind.build, "__module__", None)
        ident["module"] = module
        ident["ast"] = module_ast_digest(module) if module else None
    if kind.modules:
        ident["modules"] = {m: module_ast_digest(m) for m in kind.modules}
    return ident


def module_ast_digest(module_name: str) -> str:
    """Digest of a module's AST: comments and formatting do not change it."""
    if module_name in _code_cache:
        return _code_cache[module_name]
    spec = importlib.util.find_spec(module_name)
    origin = spec.origin if spec is not None else None
    if origin is None or not origin.endswith(".py"):
        digest = hashing.digest_json({"module": module_name})
    else:
        digest = hashing.stat_cache().derived("ast", origin, _ast_digest)
    _code_cache[module_name] = digest
    return digest


def _ast_digest(path: str) -> str:
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):  # docstrings are prose, not behaviour
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
            getattr(body[0], "value", None), ast.Constant
        ) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    return hashing.digest_bytes(ast.dump(tree, annotate_fields=False).encode())


def stage_key(stage: Stage, input_digests: dict[str, str]) -> str:
    missing = set(stage.inputs) - set(input_digests)
    if missing:
        raise FactoryError(f"stage {stage.name}: no digest for inputs {sorted(missing)}")
    return hashing.digest_json(
        {"kind": stage.kind, "config": stage.config, "code": stage.code, "inputs": input_digests}
    )
