"""The example third-party plugin in examples/factory-family-toy: found through its entry point, and it works.

The fixture makes the package importable and gives it entry-point metadata in a
temporary dist-info directory, which is what `pip install -e` would write,
without touching the environment.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from factory import plugins
from factory.errors import FactoryError
from factory.interfaces import ModelFamily, TrainDefaultsContext
from factory.runs import RunInfo

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "factory-family-toy"


def entry_points_txt() -> str:
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    eps = meta["project"]["entry-points"]["factory"]
    return "[factory]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items())


def make_dist_info(where: Path) -> Path:
    dist = where / "factory_family_toy-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: factory-family-toy\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(entry_points_txt())
    return where


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The example package importable, with its `factory` entry point visible to importlib.metadata."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(make_dist_info(tmp_path / "site")))
    monkeypatch.delenv("FACTORY_LOAD_PLUGINS", raising=False)
    importlib.invalidate_caches()
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("factory_family_toy")]:
        del sys.modules[name]


def test_entry_point_names_the_package_module():
    assert entry_points_txt() == "[factory]\ntoy = factory_family_toy\n"


def test_family_registers_through_the_entry_point(toy):
    regs = plugins.load(only=["toy"])
    info = next(p for p in regs.plugins if p.name == "toy")
    assert (info.source, info.version, info.error) == ("entry point", "0.1.0", None)
    assert info.registered == {"family": ["toy-gpt2"], "stage": ["row-lengths"]}
    family = regs.families.get("toy-gpt2")
    assert isinstance(family, ModelFamily)
    assert regs.plugin_of("family", "toy-gpt2").name == "toy"


def test_register_model_families_hook_registers_one_family(toy):
    import factory_family_toy

    found = []
    factory_family_toy.register_model_families(found.append)
    assert [f.name for f in found] == ["toy-gpt2"] and isinstance(found[0], factory_family_toy.ToyGPT2Family)


def test_family_loads_beside_the_default_plugins(toy):
    regs = plugins.load()
    assert "toy-gpt2" in regs.families.names() and "tiny" in regs.families.names()
    assert "toy" in [p.name for p in regs.plugins if p.source == "entry point"]


def test_unknown_family_message_lists_the_toy_family(toy):
    regs = plugins.load(only=["toy"])
    with pytest.raises(FactoryError, match="registered model families: toy-gpt2"):
        regs.families.get("gpt-17")


def test_importing_the_plugin_does_not_import_torch(tmp_path):
    code = "import sys, factory_family_toy; sys.exit(1 if {'torch', 'transformers', 'peft'} & set(sys.modules) else 0)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(ROOT)])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_resolve_base_keys_on_options_and_rejects_typos(toy):
    family = plugins.load(only=["toy"]).families.get("toy-gpt2")
    a = family.resolve_base({"model": "toy-gpt2", "options": {}}, ROOT)
    b = family.resolve_base({"model": "toy-gpt2", "options": {"n_embd": 32}}, ROOT)
    assert a != b and a["options"]["n_embd"] == 64
    with pytest.raises(FactoryError, match="base.options.n_embed: Extra inputs are not permitted"):
        family.resolve_base({"model": "toy-gpt2", "options": {"n_embed": 32}}, ROOT)
    with pytest.raises(FactoryError, match="train.method: toy-gpt2 has no method 'dpo'; its methods: sft-lora"):
        family.trainer("dpo")
    params = family.default_train_params(TrainDefaultsContext("sft-lora", 100, 20, "cpu", 1, {}))
    assert params["lora"]["target_modules"] == ["c_attn", "c_proj", "c_fc"]


def test_run_finished_hook_reaches_the_plugin(toy, monkeypatch):
    log = toy / "runs.jsonl"
    monkeypatch.setenv("FACTORY_TOY_RUN_LOG", str(log))
    regs = plugins.load(only=["toy"])
    run = RunInfo(id="2025-01-01-demo-abcd1234", path=toy / "run", recipe="demo", decision="rework", stage_keys={})
    regs.pm.hook.run_finished(run=run)
    assert json.loads(log.read_text()) == {
        "decision": "rework", "path": str(toy / "run"), "recipe": "demo", "run": "2025-01-01-demo-abcd1234",
    }


def test_toy_base_builds_and_loads(toy, tmp_path):
    pytest.importorskip("transformers")
    from factory.ml.generate import generate
    from factory.stages import BuildContext

    breadth = tmp_path / "breadth"
    breadth.mkdir()
    rows = [{"id": str(i), "prompt": f"copy: w{i} x{i % 7}", "answer": f"w{i} x{i % 7}"} for i in range(200)]
    (breadth / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    family = plugins.load(only=["toy"]).families.get("toy-gpt2")
    config = {"family": "toy-gpt2", "base": family.resolve_base({"model": "toy-gpt2", "options": {"n_embd": 32}}, ROOT)}
    out = tmp_path / "base"
    out.mkdir()
    ctx = BuildContext(recipe=None, stage="base", kind="base", key="k", config=config, inputs={"breadth": breadth},
                       out=out, root=ROOT, registry=None, log=lambda m: None)
    family.build_base(ctx)
    assert {"model.safetensors", "config.json", "tokenizer.json", "base.json"} <= {p.name for p in out.iterdir()}
    lm = family.load(out, None, {"device": "cpu"})
    assert lm.format_prompt("hi") == "Q: hi\nA: "
    outputs = generate(lm, ["copy: w1 x1", "copy: w2 x2"], max_new_tokens=4, batch_size=2)
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)


TOY_RECIPE = textwrap.dedent(
    """\
    # Build: doit recipe:toy
    goal: "Show that a third-party family builds end to end."
    owner: "plugin authors"
    base: {family: toy-gpt2, model: toy-gpt2, options: {n_embd: 32}}
    breadth: {sources: [{kind: breadth-mix, options: {rows: 400, seed: 0}}], heldout_fraction: 0.1}
    data:
      sources: [{kind: jsonl, path: toy/traces.jsonl, options: {}}]
      contract: json-action
      heldout_fraction: 0.2
      options: {actions: {list: [day]}}
    train: {method: sft-lora, steps: 5, batch_size: 4}
    evals: {primary: json-action, regression: [breadth], limit: 8, max_new_tokens: 24}
    criteria: {primary_min: 0.95, breadth_drop_max_pp: 3.0}
    package: false
    """
)


@pytest.mark.slow
def test_recipe_naming_the_toy_family_builds_end_to_end(tmp_path):
    pytest.importorskip("factory.ml.sft")
    project = tmp_path / "project"
    (project / "recipes" / "toy").mkdir(parents=True)
    (project / "dodo.py").write_text((ROOT / "dodo.py").read_text())
    (project / "recipes" / "toy.yaml").write_text(TOY_RECIPE)
    days = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
    rows = [{"id": f"r{i}", "request": f"show {d} please {i}", "action": json.dumps({"action": "list", "args": {"day": d}})}
            for i, d in enumerate(days * 6)]
    (project / "recipes" / "toy" / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(make_dist_info(tmp_path / "site")), str(EXAMPLE), str(ROOT)])}
    env.pop("FACTORY_LOAD_PLUGINS", None)
    r = subprocess.run([sys.executable, "-m", "doit", "recipe:toy"], cwd=project, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = list((project / "runs").glob("*-toy-*"))
    assert len(runs) == 1
    decision = json.loads((runs[0] / "decision.json").read_text())
    assert decision["decision"] in ("ship", "rework", "reject", "blocked")
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["base"]["family"] == "toy-gpt2"


def test_a_recipe_places_the_plugins_stage_kind(toy, tmp_path):
    import shutil

    from factory.engine import Session
    from factory.stages import BuildContext

    root = tmp_path / "proj"
    shutil.copytree(ROOT / "recipes", root / "recipes")
    text = (ROOT / "recipes" / "pace-planner.yaml").read_text()
    placed = "stages:\n  lengths: {kind: row-lengths, inputs: {rows: 'dataset:train.jsonl'}, options: {buckets: [40, 80]}}\n"
    (root / "recipes" / "placed.yaml").write_text(text + placed)
    plan = Session(root).plan("placed")
    st = plan.stages["lengths"]
    assert st.kind == "row-lengths" and st.inputs["rows"].stage == "dataset" and st.run_prefix == "stages/lengths/"
    assert st.config["options"] == {"field": "prompt", "buckets": [40, 80]}
    assert st.code["plugin"] == "toy"
    (root / "recipes" / "bad.yaml").write_text(text + placed.replace("buckets", "bucket"))
    with pytest.raises(FactoryError, match="stages.lengths.options.bucket: unknown option; known: field, buckets"):
        Session(root).plan("bad")

    import factory_family_toy

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": "x" * n}) + "\n" for n in (10, 50, 100)))
    out = tmp_path / "out"
    out.mkdir()
    factory_family_toy.build_row_lengths(BuildContext(
        recipe=None, stage="lengths", kind="row-lengths", key="k", config={"options": {"buckets": [40, 80]}},
        inputs={"rows": rows}, out=out, root=tmp_path, registry=None))
    assert json.loads((out / "row-lengths.json").read_text())["counts"] == {"40": 1, "80": 1, "more": 1}
