"""Meta-test: every hookspec is documented in the plugin guide, with its signature, and has a test of its own
(a function test_hook_<name> in tests/, which runs a real build: see tests/test_hooks.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugin-guide.md"


def hookspecs() -> list[tuple[str, str, str | None]]:
    """(name, signature, docstring) of every function marked @hookspec in factory/hookspecs.py."""
    tree = ast.parse((ROOT / "factory" / "hookspecs.py").read_text())
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
            (isinstance(d, ast.Name) and d.id == "hookspec")
            or (isinstance(d, ast.Call) and getattr(d.func, "id", None) == "hookspec")
            for d in node.decorator_list
        ):
            args = ", ".join(a.arg for a in node.args.args)
            found.append((node.name, f"{node.name}({args})", ast.get_docstring(node)))
    return found


SPECS = hookspecs()


def test_hookspecs_are_found():
    assert {"register_model_families", "register_eval_suites", "register_dataset_sources",
            "register_stage_kinds", "run_finished"} <= {name for name, _, _ in SPECS}


@pytest.mark.parametrize("name, signature, doc", SPECS, ids=[s[0] for s in SPECS])
def test_hookspec_is_documented_in_the_guide(name, signature, doc):
    guide = GUIDE.read_text()
    assert f"### `{signature}`" in guide, f"docs/plugin-guide.md has no section for {signature}"
    assert doc and "\n" not in doc.strip(), f"{name} needs a one-line docstring"


def defined_tests() -> dict[str, str]:
    """Every test function defined in tests/ (name -> file): a name in a comment or a string does not count."""
    found = {}
    for p in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                found[node.name] = p.name
    return found


@pytest.mark.parametrize("name, signature, doc", SPECS, ids=[s[0] for s in SPECS])
def test_hookspec_has_a_test(name, signature, doc):
    assert f"test_hook_{name}" in defined_tests(), f"no test function test_hook_{name} in tests/"


def test_a_hook_named_only_in_a_comment_has_no_test():
    # this file names test_hook_never_written in a comment and a string; neither defines it
    assert "test_hook_never_written" not in defined_tests()
    assert "test_hook_run_finished" in defined_tests()


def test_guide_python_examples_parse():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        ast.parse(block)


def test_guide_covers_discovery_and_registry_rules():
    guide = GUIDE.read_text()
    for needle in ("FACTORY_LOAD_PLUGINS", "factory plugins", "[project.entry-points.factory]",
                   "is taken", "registered model families", "inside the functions"):
        assert needle in guide, needle


def test_interface_reference_is_current():
    from factory import reference

    committed = (ROOT / "docs" / "interfaces.md").read_text()
    assert committed == reference.markdown(), "docs/interfaces.md is stale: python -m factory.reference > docs/interfaces.md"


def _methods(tree: ast.AST, cls: str) -> dict[str, str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return {f.name: ast.dump(f) for f in node.body if isinstance(f, ast.FunctionDef)}
    return {}


def test_guide_family_snippet_is_the_example_plugins_code():
    example = ast.parse((ROOT / "examples" / "factory-family-toy" / "factory_family_toy" / "family.py").read_text())
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S) if "class ToyGPT2Family" in b]
    shown = _methods(ast.parse(block), "ToyGPT2Family")
    assert {"resolve_base", "trainer"} <= set(shown)
    real = _methods(example, "ToyGPT2Family")
    for name, dump in shown.items():
        assert dump == real[name], f"the guide's ToyGPT2Family.{name} differs from the example plugin's"
