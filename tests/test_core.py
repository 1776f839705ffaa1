"""The engine's promises, checked on a throwaway project whose stages only write files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import RECIPE, REPO

ALL = ["breadth", "dataset", "base", "eval-baseline", "power", "train", "eval-candidate", "decide", "report",
       "package"]


def poisoned_torch(tmp_path: Path) -> str:
    """A `torch` that fails on import, first on the path: proves a command never imports it."""
    d = tmp_path / "poison"
    for mod in ("torch", "transformers", "peft"):
        (d / mod).mkdir(parents=True, exist_ok=True)
        (d / mod / "__init__.py").write_text(f"raise ImportError('{mod} must not be imported here')\n")
    return str(d)


def tree_bytes(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_second_build_is_a_noop_without_torch(project, tmp_path):
    project.doit("recipe:demo")
    assert project.builds() == ALL
    runs = project.runs()
    assert len(runs) == 1
    before = tree_bytes(runs[0])
    project.reset_builds()
    env = project.env()
    r = project.doit("recipe:demo", PYTHONPATH=poisoned_torch(tmp_path) + os.pathsep + env["PYTHONPATH"])
    assert project.builds() == []
    assert project.runs() == runs
    assert tree_bytes(runs[0]) == before
    assert "must not be imported" not in r.stderr


def test_threshold_rebuilds_only_the_gate_and_after(project):
    project.doit("recipe:demo")
    first = project.runs()[0]
    first_bytes = tree_bytes(first)
    project.reset_builds()
    project.set_recipe(RECIPE.replace("primary_min: 0.8", "primary_min: 0.95"))
    project.doit("recipe:demo")
    # the gate: its power pre-check (which reads the criteria) and the decision, then what follows
    assert project.builds() == ["power", "decide", "report", "package"]
    (new_run,) = set(project.runs()) - {first}
    assert json.loads((new_run / "decision.json").read_text())["decision"] == "rework"

    project.reset_builds()
    project.set_recipe(RECIPE.replace("train: {method: sft-lora}", "train: {method: sft-lora, lr: 0.5}"))
    project.doit("recipe:demo")
    assert project.builds() == ["train", "eval-candidate", "decide", "report", "package"]

    # Back to the first recipe: everything comes from the store, and the first run is found again.
    project.reset_builds()
    project.set_recipe(RECIPE)
    project.doit("recipe:demo")
    assert project.builds() == []
    assert len(project.runs()) == 3
    assert tree_bytes(first) == first_bytes


def test_train_precision_is_the_familys_unless_the_recipe_names_one(project):
    def adapter():
        run = max(project.runs(), key=lambda r: r.stat().st_mtime_ns)  # the newest run
        return json.loads((run / "adapter" / "adapter.json").read_text())

    project.doit("recipe:demo")
    assert adapter()["precision"] == "bf16"  # the recipe says auto: the family's choice, in the key
    project.reset_builds()
    project.set_recipe(RECIPE.replace("train: {method: sft-lora}", "train: {method: sft-lora, precision: fp32}"))
    project.doit("recipe:demo")
    assert "train" in project.builds()
    assert adapter()["precision"] == "fp32"


def test_lost_run_dir_is_restored_from_the_store_byte_identical(project):
    project.doit("recipe:demo")
    run = project.runs()[0]
    before = {k: v for k, v in tree_bytes(run).items() if k not in ("events.jsonl", "run_manifest.json")}
    import shutil

    shutil.rmtree(run)
    project.reset_builds()
    project.doit("recipe:demo")
    assert project.builds() == []
    after = {k: v for k, v in tree_bytes(project.runs()[0]).items() if k not in ("events.jsonl", "run_manifest.json")}
    assert after == before
    events = [json.loads(line) for line in (project.runs()[0] / "events.jsonl").read_text().splitlines()]
    assert {e["status"] for e in events} == {"hit"} and len(events) == len(ALL)


def test_touch_does_not_rebuild_or_rehash(project):
    from factory import hashing

    project.doit("recipe:demo")
    data = project.root / "recipes" / "demo" / "lines.txt"
    time.sleep(0.05)
    os.utime(data)  # new mtime, same bytes
    project.reset_builds()
    project.doit("recipe:demo")
    assert project.builds() == []
    # The first check after the touch re-hashed the file once and remembered it: a new process reads
    # the stat cache and hashes nothing.
    cache = hashing.StatCache(project.root / "cache" / "statcache.json")
    digest = cache.digest(data)
    assert cache.hashed == 0
    assert digest == hashing.hash_file(data)


def test_kill_minus_9_leaves_store_consistent_and_redoes_only_that_stage(project):
    env = project.env(FAKE_SLEEP="train:60")
    proc = subprocess.Popen([sys.executable, "-m", "doit", "recipe:demo"], cwd=project.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while "train" not in project.builds() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert project.runs() == []

    from factory import hashing

    store = project.root / "cache"
    for man in (store / "stages").glob("*.json"):
        for rel, entry in json.loads(man.read_text())["outputs"].items():
            obj = store / "objects" / entry["digest"][:2] / entry["digest"]
            assert obj.exists() and hashing.hash_file(obj) == entry["digest"], (man, rel)
    assert len(list((store / "stages").glob("*.json"))) == 5  # breadth, dataset, base, eval-baseline, power

    project.reset_builds()
    project.doit("recipe:demo")
    assert project.builds() == ["train", "eval-candidate", "decide", "report", "package"]
    r = project.factory("cache", "gc")
    assert r.returncode == 0, r.stderr
    assert not any((store / "tmp").iterdir())


def test_corrupted_object_is_detected_and_rebuilt(project):
    project.doit("recipe:demo")
    store = project.root / "cache"
    train_man = next(m for m in (store / "stages").glob("*.json") if json.loads(m.read_text())["stage"] == "train")
    entry = json.loads(train_man.read_text())["outputs"]["adapter/adapter.json"]
    obj = store / "objects" / entry["digest"][:2] / entry["digest"]
    os.chmod(obj, 0o644)
    data = bytearray(obj.read_bytes())
    data[3] ^= 0xFF
    obj.write_bytes(bytes(data))
    # take the run away so the build must restore it from the store
    import shutil

    shutil.rmtree(project.runs()[0])
    project.reset_builds()
    r = project.doit("recipe:demo")
    assert "corrupted" in r.stderr
    assert project.builds() == ["train"]  # rebuilt bytes are the same, so everything after is a hit
    from factory import hashing

    assert hashing.hash_file(obj) == entry["digest"]


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda t: t.replace("goal: reverse lines", "goal: [unclosed"), "line"),
        (lambda t: t + "colour: blue\n", "colour"),
        (lambda t: t.replace("primary_min: 0.8", "primary_min: lots"), "criteria.primary_min"),
        (lambda t: t.replace("base: {family: fake, model: fake-1}\n", ""), "base"),
        (lambda t: t.replace("path: demo/lines.txt", "path: ../../../etc/passwd"), "data.sources.0.path"),
        (lambda t: t.replace("family: fake", "family: nope"), "nope"),
    ],
)
def test_malformed_recipe_is_one_line_naming_file_and_field(project, mutate, field):
    project.set_recipe(mutate(RECIPE))
    r = project.factory("check")
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "recipes/demo.yaml" in lines[0] and field in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    d = project.doit("recipe:demo", check=False)
    assert d.returncode != 0
    assert "Traceback" not in d.stdout + d.stderr
    assert field in d.stdout + d.stderr


def test_unknown_family_lists_registered_ones(project):
    project.set_recipe(RECIPE.replace("family: fake", "family: nope"))
    r = project.factory("check")
    assert "registered model families: fake" in r.stderr


def test_concurrent_builds_build_each_stage_once(project):
    env = project.env(FAKE_SLEEP="train:2")
    procs = [subprocess.Popen([sys.executable, "-m", "doit", "recipe:demo"], cwd=project.root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert sorted(project.builds()) == sorted(ALL)
    assert len(project.runs()) == 1


def test_parallel_build_with_doit_n(project):
    project.doit("-n", "2", "recipe:demo")
    assert sorted(project.builds()) == sorted(ALL)
    assert json.loads((project.runs()[0] / "decision.json").read_text())["decision"] == "ship"


def test_why_names_the_changed_input(project):
    project.doit("recipe:demo")
    project.set_recipe(RECIPE.replace("train: {method: sft-lora}", "train: {method: sft-lora, lr: 0.5}"))
    r = project.factory("why", "recipe:demo")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "dataset: up to date" in out
    assert "eval-baseline: up to date" in out
    assert "train: stale" in out and "config lr: 0.1 -> 0.5" in out
    assert "eval-candidate: stale" in out


def test_no_pickle_in_the_code():
    offenders = []
    for d in ("factory", "plugins"):
        for p in (REPO / d).rglob("*.py"):
            text = p.read_text()
            if "import pickle" in text or "pickle.load" in text or "pickle.dump" in text:
                offenders.append(str(p))
            for line in text.splitlines():
                if "torch.load(" in line and "weights_only=True" not in line:
                    offenders.append(f"{p}: {line.strip()}")
    assert offenders == []


def test_doit_list_and_help_never_import_torch(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = poisoned_torch(tmp_path) + os.pathsep + str(REPO)
    env.pop("FACTORY_LOAD_PLUGINS", None)
    r = subprocess.run([sys.executable, "-m", "doit", "list"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "recipe:pace-planner" in r.stdout
    r = subprocess.run([sys.executable, "-m", "factory.cli", "--help"], cwd=REPO, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "must not be imported" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "factory.cli", "plugins"], cwd=REPO, env=env, capture_output=True,
                       text=True)
    assert "must not be imported" not in r.stdout + r.stderr


def test_noop_rests_on_file_stats_alone(project):
    """A no-op build loads neither pydantic nor the plugins: stats of the recorded inputs suffice.

    That holds with another recipe beside it that was never built: its task graph is remembered too.
    """
    project.set_recipe(RECIPE.replace("primary_min: 0.8", "primary_min: 0.9"), name="other")
    project.doit("recipe:demo")
    project.reset_builds()
    r = project.doit("recipe:demo", PYTHONPROFILEIMPORTTIME="1")
    assert "-- recipe:demo" in r.stdout and project.builds() == []
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time")}
    assert "factory.tasks" in imported
    assert not imported & {"pydantic", "enginekit", "factory.plan", "factory.engine", "torch"}, imported & {"pydantic", "enginekit", "factory.plan", "factory.engine", "torch"}
    # Any recorded input that moves sends the check back through the store.
    data = project.root / "recipes" / "demo" / "lines.txt"
    data.write_text(data.read_text() + "line 50\n")
    project.doit("recipe:demo")
    assert project.builds()[0] == "dataset"


def test_a_run_is_named_by_id_part_or_recipe(project):
    from factory.errors import FactoryError
    from factory.runs import resolve_run

    project.doit("recipe:demo")
    project.set_recipe(RECIPE, name="demo-two")
    (project.root / "recipes" / "demo-two").mkdir()
    (project.root / "recipes" / "demo-two" / "lines.txt").write_text("x\n")
    project.set_recipe(RECIPE.replace("demo/lines.txt", "demo-two/lines.txt"), name="demo-two")
    project.doit("recipe:demo-two")
    runs = project.runs()
    assert len(runs) == 2
    demo = next(r for r in runs if "-demo-two-" not in r.name)
    assert resolve_run(project.root, "demo") == demo  # a recipe name, though "demo" is in both ids
    assert resolve_run(project.root, demo.name) == demo
    assert resolve_run(project.root, demo.name[-8:]) == demo
    with pytest.raises(FactoryError, match="no such run"):
        resolve_run(project.root, "nothing-like-it")
