"""Plugin discovery and the registries' rules: no silent shadowing, helpful unknown-name errors."""

import sys

import pytest

from factory import plugins
from factory.errors import FactoryError
from factory.plugins import Registry
from factory.stages import StageKind


class FamA:
    name = "shared"


class FamB:
    name = "shared"


def build_one(ctx):
    pass


def build_two(ctx):
    pass


def test_same_object_or_class_twice_is_a_no_op():
    reg = Registry("family")
    a = FamA()
    reg.register(a, plugin="p1")
    reg.register(a, plugin="p1")
    reg.register(FamA(), plugin="p2")
    assert reg.names() == ["shared"] and reg.get("shared") is a


def test_a_different_class_under_a_taken_name_raises_naming_both():
    reg = Registry("family")
    reg.register(FamA(), plugin="p1")
    with pytest.raises(FactoryError) as e:
        reg.register(FamB(), plugin="p2")
    msg = str(e.value)
    assert "test_plugins:FamA" in msg and "test_plugins:FamB" in msg and "p1" in msg and "p2" in msg


def test_stage_kinds_clash_on_their_build_function():
    reg = Registry("stage")
    reg.register(StageKind("dataset", build_one), plugin="p1")
    reg.register(StageKind("dataset", build_one), plugin="p1")
    with pytest.raises(FactoryError, match="build_one.*build_two"):
        reg.register(StageKind("dataset", build_two), plugin="p2")


def test_unknown_name_lists_every_registered_name_and_how_to_add_one():
    reg = Registry("suite")
    for n in ("b-suite", "a-suite"):
        reg.register(type("S", (), {"name": n})(), plugin="p")
    with pytest.raises(FactoryError) as e:
        reg.get("nope")
    msg = str(e.value)
    assert "registered eval suites: a-suite, b-suite" in msg
    assert "register_eval_suites" in msg and "plugin-guide" in msg


def test_default_plugins_register_families_suites_sources_and_stage_kinds():
    regs = plugins.load()
    assert {"tiny", "hf"} <= set(regs.families.names())
    assert {"json-action", "breadth", "perplexity", "risk-probes"} <= set(regs.suites.names())
    assert {"jsonl", "breadth-mix"} <= set(regs.sources.names())  # register_dataset_sources
    assert {"dataset", "base", "train", "eval", "decide", "report", "package"} <= set(regs.stages.names())  # register_stage_kinds
    assert not regs.errors


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_load(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    regs = plugins.load(only=["broken_plugin", "factory_plugins.tiny", "factory.builtin_stages"])
    (broken,) = [p for p in regs.plugins if p.name == "broken_plugin"]
    assert "RuntimeError: boom at import" in broken.error
    assert regs.families.names() == ["tiny"]


def test_allowlist_env_var_loads_only_the_named_plugins(monkeypatch):
    monkeypatch.setenv("FACTORY_LOAD_PLUGINS", "factory_plugins.evals")
    regs = plugins.load()
    assert [p.name for p in regs.plugins] == ["factory.builtin_stages", "factory_plugins.datasets",
                                              "factory_plugins.evals"]  # the engine's own kinds stay
    assert regs.families.names() == []
    assert regs.suites.names() == ["benchmark", "breadth", "json-action", "json-schema", "lm-eval", "perplexity",
                                   "risk-probes"]


def test_allowlist_keeps_the_engine_kinds_and_they_yield_to_a_named_plugin(monkeypatch):
    monkeypatch.setenv("FACTORY_LOAD_PLUGINS", "factory_plugins.tiny")
    regs = plugins.load()
    assert regs.families.names() == ["tiny"]
    assert {"dataset", "base", "train", "eval", "decide", "report", "package"} <= set(regs.stages.names())
    import enginekit

    regs = plugins.load(only=["enginekit"])  # it registers every kind itself: the engine's fill none
    assert regs.stages.get("train").build is enginekit.train
    assert regs.stages.owner["dataset"] == regs.stages.owner["report"] == "enginekit"
    assert not regs.errors


def _listener(tmp_path, monkeypatch, name: str):
    """Load only a plugin module `name` whose run_finished handler appends each run to its SEEN."""
    (tmp_path / f"{name}.py").write_text(
        "from factory.hookspecs import hookimpl\n"
        "SEEN = []\n"
        "@hookimpl\n"
        "def run_finished(run):\n"
        "    SEEN.append(run)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return plugins.load(only=[name])


def test_run_finished_reaches_every_plugin(tmp_path, monkeypatch):
    regs = _listener(tmp_path, monkeypatch, "listener_plugin")
    from factory.runs import RunInfo

    # a real RunInfo, as the hookspec says: the engine's own handler (publishing shipped specialists) sees it too
    run = RunInfo(id="r1", path=tmp_path / "runs" / "r1", recipe="demo", decision="rework", stage_keys={})
    regs.pm.hook.run_finished(run=run)
    assert sys.modules["listener_plugin"].SEEN == [run]


def test_factory_plugins_command_lists_versions_and_registrations():
    import subprocess

    r = subprocess.run([sys.executable, "-m", "factory.cli", "plugins"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "factory_plugins.tiny" in r.stdout and "family: tiny" in r.stdout


def _plan_without_breadth(tmp_path, monkeypatch, sources_module: str):
    """A demo recipe with no breadth section, planned with enginekit and a module of extra sources."""
    from conftest import RECIPE

    from factory.plan import Plan
    from factory.recipe import load_recipe
    from factory.store import Store

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "default_sources.py").write_text(sources_module)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("default_sources", None)
    root = tmp_path / "proj"
    (root / "recipes" / "demo").mkdir(parents=True)
    (root / "recipes" / "demo" / "lines.txt").write_text("line 0\nline 1\n")
    text = "".join(line + "\n" for line in RECIPE.splitlines() if not line.startswith("breadth:"))
    (root / "recipes" / "demo.yaml").write_text(text)
    regs = plugins.load(only=["enginekit", "default_sources"])
    return lambda: Plan(load_recipe(root / "recipes" / "demo.yaml", root), root, regs, Store(root / "cache"))


SOURCES = (
    "from factory.hookspecs import hookimpl\n"
    "import enginekit\n"
    "class Corpus(enginekit.Lines):\n"
    "    name = 'corpus'\n"
    "    default_for = {'breadth': {'heldout_fraction': 0.1}}\n"
    "class Other(enginekit.Lines):\n"
    "    name = 'other'\n"
    "    default_for = {'breadth': {}}\n"
    "@hookimpl\n"
    "def register_dataset_sources(register):\n"
    "    register(Corpus())\n"
)


def test_a_left_out_breadth_section_is_the_one_a_source_declares(tmp_path, monkeypatch):
    plan = _plan_without_breadth(tmp_path, monkeypatch, SOURCES)()
    config = plan.config("breadth")
    assert [s["kind"] for s in config["sources"]] == ["corpus"] and config["heldout_fraction"] == 0.1
    assert config["sources"][0]["options"] == {}  # the source's own defaults


def test_no_default_or_two_defaults_is_one_line_asking_for_the_section(tmp_path, monkeypatch):
    none = _plan_without_breadth(tmp_path / "none", monkeypatch, "")
    with pytest.raises(FactoryError, match=r"^recipes/demo.yaml: breadth: the recipe has no breadth section and "
                                           r"no registered dataset source declares itself its default; give one"):
        none()
    two = SOURCES + "    register(Other())\n"
    both = _plan_without_breadth(tmp_path / "two", monkeypatch, two)
    with pytest.raises(FactoryError, match="the dataset sources corpus, other each declare themselves its default"):
        both()


def test_the_engine_publishes_first_and_refreshes_the_index_last(tmp_path, monkeypatch):
    """A plugin's run_finished sees the published specialist, and the index reads what every handler wrote."""
    regs = _listener(tmp_path, monkeypatch, "late_listener")
    # pluggy calls hookimpls last-registered first, tryfirst ones before, trylast ones after
    order = [f"{impl.plugin_name.rsplit('.', 1)[-1]}:{impl.function.__name__}"
             for impl in reversed(regs.pm.hook.run_finished.get_hookimpls())]
    assert order[0] == "builtin_stages:publish_shipped" and order[-1] == "builtin_stages:refresh_index"
    assert "late_listener:run_finished" in order[1:-1]
