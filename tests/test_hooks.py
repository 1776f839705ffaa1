"""One test per hookspec (tests/test_hook_docs.py checks there is one): each runs a real build
with a plugin that implements the hook and sees the hook called, and its argument used."""

import json
import textwrap

import pytest

from conftest import Project, REPO

WATCHED = textwrap.dedent(
    """\
    # Build: doit recipe:watched
    goal: reverse lines
    base: {family: watched, model: fake-1}
    breadth: {sources: [{kind: lines, options: {rows: 20}}]}
    data: {sources: [{kind: watched-lines, path: demo/lines.txt}]}
    train: {method: sft-lora}
    evals: {primary: watched-primary, regression: [fake-breadth]}
    criteria: {primary_min: 0.8}
    stages:
      counted: {kind: watched-count, inputs: {rows: 'dataset:train.jsonl'}}
    """
)


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """One real build of a recipe that uses every object the watching plugin registers."""
    import shutil

    root = tmp_path_factory.mktemp("hooks") / "proj"
    (root / "recipes" / "demo").mkdir(parents=True)
    (root / "recipes" / "watched.yaml").write_text(WATCHED)
    (root / "recipes" / "demo" / "lines.txt").write_text("".join(f"line {i}\n" for i in range(50)))
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    log = root.parent / "hooks.jsonl"
    project = Project(root)
    project.doit("recipe:watched", FACTORY_LOAD_PLUGINS="enginekit,hookwatch", HOOKWATCH_LOG=str(log))
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return project, events


def calls(events, name):
    return [e for e in events if e["call"] == name]


def test_hook_register_model_families(watched):
    project, events = watched
    assert calls(events, "register_model_families")[0] == {
        "call": "register_model_families", "register_callable": True, "name": "watched"}
    asked = calls(events, "family.default_train_params")  # the recipe's family is the one registered
    assert asked and asked[0] == {"call": "family.default_train_params", "type": "TrainDefaultsContext",
                                  "method": "sft-lora", "train_rows": 40, "heldout_rows": 10}
    (run,) = project.runs()
    assert json.loads((run / "config.json").read_text())["train"]["rows"] == 40  # its defaults are used


def test_hook_register_eval_suites(watched):
    project, events = watched
    assert calls(events, "register_eval_suites")[0]["name"] == "watched-primary"
    (run,) = project.runs()
    config = json.loads((run / "config.json").read_text())
    assert "watched-primary" in json.dumps(config)


def test_hook_register_dataset_sources(watched):
    project, events = watched
    assert calls(events, "register_dataset_sources")[0]["name"] == "watched-lines"
    spec = calls(events, "source.files")[0]["spec"]
    assert spec["kind"] == "watched-lines" and spec["path"] == "recipes/demo/lines.txt"


def test_hook_register_stage_kinds(watched):
    project, events = watched
    assert calls(events, "register_stage_kinds")[0]["name"] == "watched-count"
    (built,) = calls(events, "kind.build")
    assert built["stage"] == "counted" and built["kind"] == "watched-count" and built["rows"] == 40
    (run,) = project.runs()
    assert json.loads((run / "stages" / "counted" / "count.json").read_text()) == {"rows": 40}


def test_hook_run_finished(watched):
    project, events = watched
    (finished,) = calls(events, "run_finished")
    (run,) = project.runs()
    manifest = json.loads((run / "run_manifest.json").read_text())
    assert finished["type"] == "factory.runs.RunInfo"
    assert finished["path"] == str(run) and finished["id"] == run.name and finished["recipe"] == "watched"
    assert finished["decision"] == json.loads((run / "decision.json").read_text())["decision"] == "ship"
    assert finished["stage_keys"]["counted"] and set(finished["stage_keys"]) >= {"dataset", "train", "decide"}
    assert finished["stage_keys"] == manifest["stage_keys"]
