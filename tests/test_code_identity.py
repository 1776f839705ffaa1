"""Code identity is computed from what a stage's build reaches: checked on the real flagship plan.

An edit is simulated by pointing a module name at an edited copy of its file (the repository's
files are never touched), then planning again. Keys of breadth and dataset are computable without
building; for later stages the `code` part of the stage is compared (their full keys need
upstream outputs).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from conftest import REPO

from factory import plugins, stages
from factory.plan import Plan
from factory.recipe import load_recipe
from factory.store import Store

FLAGSHIP = REPO / "recipes" / "pace-planner.yaml"
STAGES = ["breadth", "dataset", "base", "eval-baseline", "power", "train", "eval-candidate", "decide", "report", "package"]


@pytest.fixture(scope="module")
def regs():
    return plugins.load(only=[m for m in plugins.DEFAULT_PLUGINS])


def plan(regs, tmp_path) -> Plan:
    stages._closures.clear()
    return Plan(load_recipe(FLAGSHIP, REPO), REPO, regs, Store(tmp_path / "cache"))


def codes(p: Plan) -> dict[str, dict]:
    return {name: p.stages[name].code for name in STAGES}


@contextlib.contextmanager
def edited(module: str, tmp_path: Path, change):
    """The module's file replaced, for code identity, by change(text)."""
    src = Path(stages.module_file(module))
    copy = tmp_path / "edited" / module / src.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    text = src.read_text()
    new = change(text)
    assert new != text, f"the edit of {module} matched nothing: the test would compare a module with itself"
    copy.write_text(new)
    saved = stages._files[module]
    stages._files[module] = str(copy)
    try:
        yield
    finally:
        stages._files[module] = saved
        stages._closures.clear()


def statement(text: str) -> str:
    return text + "\n_EDITED = 1\n"


def changed_by(regs, tmp_path, module: str, change=statement) -> set[str]:
    before = codes(plan(regs, tmp_path))
    with edited(module, tmp_path, change):
        after = codes(plan(regs, tmp_path))
    return {name for name in STAGES if before[name] != after[name]}


def reached(p: Plan, name: str) -> set[str]:
    return {m.split(":")[0] for m in p.stages[name].code["modules"]}


def test_every_reached_module_is_in_the_key_of_exactly_the_stages_that_reach_it(regs, tmp_path):
    p = plan(regs, tmp_path)
    modules = sorted(set().union(*(reached(p, n) for n in STAGES)))
    assert {"factory.records", "factory.ml.sft", "factory.ml.sft_worker", "factory.report",
            "factory_plugins.tiny.pretrain", "factory_plugins.evals.common"} <= set(modules)
    for module in modules:
        want = {n for n in STAGES if module in reached(p, n)}
        assert changed_by(regs, tmp_path, module) == want, module


def test_the_flagship_stages_reach_what_builds_them(regs, tmp_path):
    p = plan(regs, tmp_path)
    assert "factory.records" in reached(p, "decide")  # it defines the bytes of decision.json
    assert {"factory.gate", "factory.stats"} <= reached(p, "decide")
    # the one reader of a run's records, for the gate, the report and the model card
    assert "factory.evidence" in reached(p, "decide") & reached(p, "report") & reached(p, "package")
    assert {"factory.ml.sft", "factory.ml.sft_worker", "factory.ml.lora", "factory.ml.text"} <= reached(p, "train")
    assert {"factory.evaluate", "factory.ml.generate", "factory_plugins.evals.json_action"} <= reached(p, "eval-baseline")
    assert {"factory_plugins.tiny.pretrain", "factory_plugins.tiny.base"} <= reached(p, "base")
    for name in ("train", "eval-baseline", "base", "decide"):
        assert "factory.report" not in reached(p, name)
    assert "factory.ml.sft" not in reached(p, "base") | reached(p, "eval-baseline")


def test_editing_the_report_changes_only_the_report(regs, tmp_path):
    assert changed_by(regs, tmp_path, "factory.report") == {"report"}


def test_editing_one_kinds_wrapper_changes_only_that_kind(regs, tmp_path):
    def report_line(text):
        return text.replace("    from factory.report import build_report as run\n",
                            "    from factory.report import build_report as run\n    run = run\n")

    def power_line(text):
        return text.replace("    from factory.gate import build_power as run\n",
                            "    from factory.gate import build_power as run\n    run = run\n")

    assert changed_by(regs, tmp_path, "factory.builtin_stages", report_line) == {"report"}
    assert changed_by(regs, tmp_path, "factory.builtin_stages", power_line) == {"power"}


def test_the_familys_entry_points_decide_which_stages_it_is_in(regs, tmp_path):
    def pretrain_call(text):  # TinyFamily.build_base
        return text.replace("        build_base(ctx)\n", "        build_base(ctx)\n        return None\n", 1)

    def loading(text):  # TinyFamily.load
        return text.replace("model.train(bool(settings.get(\"train\")))", "model.train(bool(settings.get(\"train\", False)))")

    def defaults(text):  # default_train_params reaches keys as config, not code
        return text.replace("batch, passes = int(ctx.intent.get(\"batch_size\", 32)), PASSES",
                            "batch, passes = int(ctx.intent.get(\"batch_size\", 32)), PASSES + 0")

    assert changed_by(regs, tmp_path, "factory_plugins.tiny.family", pretrain_call) == {"base"}
    assert changed_by(regs, tmp_path, "factory_plugins.tiny.family", loading) == {
        "train", "eval-baseline", "eval-candidate"}
    assert changed_by(regs, tmp_path, "factory_plugins.tiny.family", defaults) == set()
    assert changed_by(regs, tmp_path, "factory_plugins.tiny.pretrain") == {"base"}


def test_comments_and_docstrings_change_nothing(regs, tmp_path):
    def prose(text):
        return text.replace('"""', '"""Edited prose. ', 1) + "\n# a comment\n"

    for module in ("factory.records", "factory.ml.sft", "factory_plugins.tiny.pretrain"):
        assert changed_by(regs, tmp_path, module, prose) == set(), module


def test_breadth_and_dataset_keys(regs, tmp_path):
    def keys():
        p = plan(regs, tmp_path)
        return p.key("breadth"), p.key("dataset")

    before = keys()
    with edited("factory_plugins.breadth", tmp_path, statement):
        b, d = keys()
    assert b != before[0] and d == before[1]  # the breadth source is the breadth stage's only
    with edited("factory_plugins.datasets", tmp_path, statement):
        b, d = keys()
    assert b != before[0] and d != before[1]  # the dataset kind builds both
    with edited("factory.report", tmp_path, statement):
        assert keys() == before
    assert keys() == before


def test_a_pinned_code_version_replaces_the_kinds_own_code():
    from factory.stages import StageKind, code_identity

    def build(ctx):
        from factory import report  # noqa: F401

    pinned = code_identity(StageKind("k", build, code_version="7"))
    assert pinned["code_version"] == "7" and pinned["modules"] == {}
    computed = code_identity(StageKind("k", build))
    assert "factory.report" in computed["modules"] and "code_version" not in computed
