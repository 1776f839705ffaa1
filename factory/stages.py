"""Stages: a kind, a resolved config and inputs; a key and a build.

A stage's key is the xxh3-128 of the canonical JSON of its kind, resolved
config, code identity and the digests of its inputs. Anything that can change
the output must be in one of those; nothing else may be.
"""

from __future__ import annotations

import ast
import importlib.util
import re
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
    code_version: str | None = None  # an explicit pin; otherwise computed from what build reaches
    description: str = ""
    modules: tuple[str, ...] = ()  # further modules to count whole (those build imports are found)
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


# --- code identity -----------------------------------------------------------------
#
# A stage's code identity is computed from what its build reaches: the AST digests of the build
# function and of every module it imports, transitively, following only factory's own packages
# and the plugin's top-level package (a library upgrade that changes numbers is config: `libs`).
# Imports are read statically, including those inside functions (where heavy imports live), so
# nothing is imported to compute a key.

FOLLOW = ("factory", "factory_plugins")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_files: dict[str, str | None] = {}
_closures: dict[tuple, dict[str, str]] = {}


def numerics_versions() -> dict[str, str | None]:
    """Versions of the libraries whose upgrades change numbers: part of model stages' keys (and of
    the per-sample generation cache's). Read from package metadata, without importing them."""
    from importlib import metadata

    out = {}
    for pkg in ("torch", "transformers", "peft", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def module_file(name: str) -> str | None:
    """The .py file of a module, found without importing it (only its top-level package is looked up)."""
    if name in _files:
        return _files[name]
    parts = name.split(".")
    found = None
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        if len(parts) == 1:
            found = spec.origin if spec.origin and spec.origin.endswith(".py") else None
        for base in (spec.submodule_search_locations or ()) if len(parts) > 1 else ():
            p = Path(base, *parts[1:])
            if p.with_suffix(".py").is_file():
                found = str(p.with_suffix(".py"))
                break
            if (p / "__init__.py").is_file():
                found = str(p / "__init__.py")
                break
    _files[name] = found
    return found


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):  # docstrings are prose, not behaviour
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
            getattr(body[0], "value", None), ast.Constant
        ) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    return tree


def _dump_digest(nodes: list[ast.AST]) -> str:
    return hashing.digest_bytes("\n".join(ast.dump(n, annotate_fields=False) for n in nodes).encode())


def _imports(nodes: list[ast.AST]) -> list[list]:
    """[level, module, names] of every import under nodes; a module launched as a process
    (`"-m", "factory.ml.sft_worker"` in a command line) counts as imported."""
    out: list[list] = []
    for top in nodes:
        for n in ast.walk(top):
            if isinstance(n, ast.Import):
                out.extend([0, a.name, []] for a in n.names)
            elif isinstance(n, ast.ImportFrom):
                out.append([n.level, n.module or "", [a.name for a in n.names]])
            elif isinstance(n, (ast.List, ast.Tuple, ast.Call)):
                items = n.args if isinstance(n, ast.Call) else n.elts
                for flag, arg in zip(items, items[1:]):
                    if (isinstance(flag, ast.Constant) and flag.value in ("-m", "--module")
                            and isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                            and _DOTTED.match(arg.value)):
                        out.append([0, arg.value, []])
    return out


def _names(node: ast.AST) -> list[str]:
    """Names a definition refers to: bare names and `self.<attr>`."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"):
            out.add("." + n.attr)
    return sorted(out)


def _parse(path: str) -> dict[str, Any]:
    """What identity needs of one file: its AST digest, its imports, and the same per definition."""
    tree = _strip_docstrings(ast.parse(Path(path).read_text()))
    defs: dict[str, Any] = {}
    rest = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = {"ast": _dump_digest([node]), "imports": _imports([node]), "names": _names(node)}
            if isinstance(node, ast.ClassDef):  # a method counts with its class's own statements
                body = [sub for sub in node.body if not isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef))]
                defs[f"{node.name}.__body__"] = {"ast": _dump_digest(body), "imports": _imports(body),
                                                 "names": _names(ast.Module(body=body, type_ignores=[]))}
            for sub in node.body if isinstance(node, ast.ClassDef) else ():
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    defs[f"{node.name}.{sub.name}"] = {"ast": _dump_digest([sub]), "imports": _imports([sub]),
                                                       "names": [*_names(sub), ".__body__"]}
        else:
            rest.append(node)
    return {"ast": _dump_digest([tree]), "imports": _imports([tree]),
            "top": {"ast": _dump_digest(rest), "imports": _imports(rest)}, "defs": defs}


def _info(path: str) -> dict[str, Any]:
    return hashing.stat_cache().derived("code", path, _parse)


def _resolve(module: str, path: str, imp: list, follow: tuple[str, ...]) -> list[str]:
    """Module names an import statement loads, among those followed."""
    level, name, names = imp
    if level:
        pkg = module.split(".")
        pkg = pkg[: len(pkg) - level + (1 if path.endswith("__init__.py") else 0)]
        name = ".".join([*pkg, name] if name else pkg)
    if name.split(".")[0] not in follow:
        return []
    subs = [f"{name}.{n}" for n in names if n != "*" and module_file(f"{name}.{n}")]
    out = subs if names and len(subs) == len(names) else [name, *subs]  # `from pkg import mod`: mod only
    return [m for m in out if module_file(m)]


def _function_root(fn: Any) -> tuple[str, str | None]:
    """(module, top-level qualname) of a function or bound method; None: the whole module."""
    fn = getattr(fn, "__func__", fn)
    fn = getattr(fn, "func", fn)  # functools.partial
    module = getattr(fn, "__module__", None) or type(fn).__module__
    qual = getattr(fn, "__qualname__", None)
    if not isinstance(qual, str) or not callable(fn) or isinstance(fn, type):
        return module, None
    qual = qual.split(".<locals>", 1)[0]  # a closure: the function that makes it
    return module, qual


def code_closure(roots: list[Any], follow: tuple[str, ...] = ()) -> dict[str, str]:
    """AST digests of the code that roots reach: {"module:qualname" or "module": digest}.

    A root is a module name (the whole module) or a function or bound method: then only that
    definition counts, with the module's top-level statements and the module-level functions,
    classes and `self.` methods it names, so two kinds built by one module do not share edits.
    Every module they import (at the top or inside a function) counts whole, transitively, when it
    is under `factory`, `factory_plugins`, a root's own top-level package or `follow`.
    """
    parsed = [(r, None) if isinstance(r, str) else _function_root(r) for r in roots]
    cache_key = (tuple(parsed), follow)
    if cache_key in _closures:
        return _closures[cache_key]
    allowed = tuple({*FOLLOW, *follow, *(m.split(".")[0] for m, _ in parsed if m)})
    out: dict[str, str] = {}
    todo: list[str] = []
    for module, qual in parsed:
        path = module_file(module) if module else None
        if path is None:
            out[module or "?"] = hashing.digest_json({"module": module})
            continue
        info = _info(path)
        if qual is None or qual not in info["defs"]:
            todo.append(module)
            continue
        seen, stack = set(), [qual]
        while stack:
            q = stack.pop()
            if q in seen or q not in info["defs"]:
                continue
            seen.add(q)
            d = info["defs"][q]
            cls = q.split(".")[0] if "." in q else None
            for n in d["names"]:
                stack.append(f"{cls}{n}" if n.startswith(".") and cls else n)
        imps = list(info["top"]["imports"])
        parts = {"top": info["top"]["ast"]}
        for q in sorted(seen):
            parts[q] = info["defs"][q]["ast"]
            imps.extend(info["defs"][q]["imports"])
        out[f"{module}:{qual}"] = hashing.digest_json(parts)
        for imp in imps:
            todo.extend(_resolve(module, path, imp, allowed))
    while todo:
        module = todo.pop()
        if module in out:
            continue
        path = module_file(module)
        info = _info(path)
        out[module] = info["ast"]
        for imp in info["imports"]:
            todo.extend(_resolve(module, path, imp, allowed))
    result = dict(sorted(out.items()))
    _closures[cache_key] = result
    return result


def code_identity(kind: StageKind, plugin: str = "", plugin_version: str = "",
                  roots: tuple[Any, ...] = ()) -> dict[str, Any]:
    """Identity of the code that builds a stage: plugin name/version and what the build reaches.

    The kind's build function is a root unless the kind pins `code_version` (Dagster-style: the
    plugin then decides when its code changed); `roots` adds the plugin objects the build hands
    over to (a family's entry points, suites, sources), and a kind's `modules` add whole modules.
    """
    ident: dict[str, Any] = {"plugin": plugin, "plugin_version": plugin_version}
    all_roots: list[Any] = list(roots)
    if kind.code_version is not None:
        ident["code_version"] = kind.code_version
    else:
        all_roots.append(kind.build)
    all_roots.extend(kind.modules)
    ident["modules"] = code_closure(all_roots)
    return ident


def module_ast_digest(module_name: str) -> str:
    """Digest of a module's AST: comments, docstrings and formatting do not change it."""
    path = module_file(module_name)
    if path is None:
        return hashing.digest_json({"module": module_name})
    return _info(path)["ast"]


def stage_key(stage: Stage, input_digests: dict[str, str]) -> str:
    missing = set(stage.inputs) - set(input_digests)
    if missing:
        raise FactoryError(f"stage {stage.name}: no digest for inputs {sorted(missing)}")
    return hashing.digest_json(
        {"kind": stage.kind, "config": stage.config, "code": stage.code, "inputs": input_digests}
    )
