"""Recipes declare their graph: training steps, promotion checks that stop the chain, placed stage kinds."""

import json
import textwrap

from conftest import RECIPE

STEPS = textwrap.dedent(
    """\
    # Build: doit recipe:demo
    goal: reverse lines
    base: {family: fake, model: fake-1}
    breadth: {sources: [{kind: lines, options: {rows: 20}}]}
    data: {sources: [{kind: lines, path: demo/lines.txt}]}
    datasets:
      extra: {sources: [{kind: lines, path: demo/extra.txt}]}
    train:
      - {name: one, steps: 800, lr: 0.1, promote: {fake-primary.exact_match: 0.5}}
      - {name: two, data: extra, steps: 900, lr: 0.1, promote: {fake-primary.exact_match: 0.5}}
      - {name: three, steps: 700, lr: 0.1}
    evals: {primary: fake-primary, regression: [fake-breadth]}
    criteria: {primary_min: 0.8}
    """
)


def _setup(project, text=STEPS):
    (project.root / "recipes" / "demo" / "extra.txt").write_text("".join(f"extra {i}\n" for i in range(30)))
    project.set_recipe(text)


def test_one_step_list_has_the_keys_of_the_one_section_form(project):
    project.doit("recipe:demo")
    first = project.builds()
    project.reset_builds()
    project.set_recipe(RECIPE.replace("train: {method: sft-lora}", "train: [{name: only, method: sft-lora}]"))
    project.doit("recipe:demo")
    # train-only has the key the old `train` had, and everything after it is the same too
    assert project.builds() == [], project.builds()
    assert "train" in first


def test_changing_a_later_steps_lr_rebuilds_that_step_and_what_follows_only(project):
    _setup(project)
    project.doit("recipe:demo")
    built = project.builds()
    assert [b for b in built if b.startswith(("train", "promote"))] == [
        "train-one", "promote-one", "train-two", "promote-two", "train-three"]
    project.reset_builds()
    project.set_recipe(STEPS.replace("{name: three, steps: 700, lr: 0.1}", "{name: three, steps: 700, lr: 0.2}"))
    project.doit("recipe:demo")
    assert project.builds() == ["train-three", "eval-candidate", "decide", "report", "package"]


def test_a_promotion_threshold_that_still_passes_rebuilds_only_its_check(project):
    _setup(project)
    project.doit("recipe:demo")
    project.reset_builds()
    project.set_recipe(STEPS.replace("promote: {fake-primary.exact_match: 0.5}}\n  - {name: two",
                                     "promote: {fake-primary.exact_match: 0.6}}\n  - {name: two"))
    project.doit("recipe:demo")
    assert project.builds() == ["promote-one"]


def test_a_failed_promotion_stops_the_chain_and_the_decision_names_step_and_criterion(project):
    _setup(project, STEPS.replace("{name: two, data: extra, steps: 900", "{name: two, data: extra, steps: 300"))
    project.doit("recipe:demo")
    built = project.builds()
    assert "train-two" in built and "promote-two" in built
    assert "train-three" not in built, "a step after a failed promotion must not train"
    (run,) = project.runs()
    decision = json.loads((run / "decision.json").read_text())
    assert decision["decision"] == "rework"
    assert "two" in decision["reason"] and "fake-primary.exact_match" in decision["reason"]
    assert decision["blocked_by"] == ["promote.two.fake-primary.exact_match"]
    assert "train.1.steps" in decision["next_action"]
    plan = json.loads((run / "training_plan.json").read_text())
    assert [(s["name"], s["status"]) for s in plan["steps"]] == [("one", "trained"), ("two", "trained"),
                                                                  ("three", "stopped")]
    assert plan["steps"][1]["promote"]["passed"] is False
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    status = {e["stage"]: e["status"] for e in events}
    assert status["train-three"] == "stopped" and status["eval-candidate"] == "stopped"
    assert {e.get("step") for e in events if e["stage"].startswith("train-")} == {"one", "two", "three"}
    assert (run / "stopped" / "train-three.json").is_file()
    # passing it again (more steps) builds the rest; the stopped stages were keyed apart
    project.reset_builds()
    project.set_recipe(STEPS)
    project.doit("recipe:demo")
    assert "train-three" in project.builds()


def test_run_directory_has_each_steps_files_and_the_training_plan(project):
    _setup(project)
    project.doit("recipe:demo")
    (run,) = project.runs()
    for step in ("one", "two", "three"):
        assert (run / "steps" / step / "train.log").is_file()
        assert (run / "steps" / step / "train.json").is_file()
    assert json.loads((run / "train.json").read_text()) == json.loads((run / "steps/three/train.json").read_text())
    plan = json.loads((run / "training_plan.json").read_text())
    assert [s["name"] for s in plan["steps"]] == ["one", "two", "three"]
    assert plan["steps"][1]["data"] == "extra" and plan["steps"][1]["starts_from"] == "train-one"
    assert plan["steps"][0]["settings"]["steps"] == 800 and plan["steps"][0]["data_digest"]
    assert plan["steps"][0]["promote"]["passed"] is True
    assert (run / "steps" / "one" / "verdict.json").is_file()


def test_a_placed_stage_kind_is_keyed_built_and_in_the_run(project):
    _setup(project, STEPS + "stages:\n  counted: {kind: count-rows, inputs: {rows: 'dataset:train.jsonl'}, options: {label: n}}\n")
    project.doit("recipe:demo")
    assert "counted" in project.builds()
    (run,) = project.runs()
    assert json.loads((run / "stages" / "counted" / "count.json").read_text()) == {"n": 40}
    events = {json.loads(x)["stage"] for x in (run / "events.jsonl").read_text().splitlines()}
    assert "counted" in events
    project.reset_builds()
    project.doit("recipe:demo")
    assert project.builds() == []
    r = project.factory("why", "recipe:demo")
    assert r.returncode == 0 and "counted" in r.stdout


def test_placed_stage_errors_are_one_line(project):
    _setup(project, STEPS + "stages:\n  counted: {kind: count-rows, inputs: {rows: 'dataset:train.jsonl'}, options: {lable: n}}\n")
    r = project.factory("check")
    assert r.returncode != 0
    assert "stages.counted.options.lable: unknown option; known: label" in r.stdout + r.stderr
    _setup(project, STEPS + "stages:\n  counted: {kind: count-rowz, inputs: {rows: dataset}}\n")
    r = project.factory("check")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "stages.counted.kind" in out and "count-rows" in out
    _setup(project, STEPS + "stages:\n  counted: {kind: count-rows, inputs: {rows: 'nowhere'}}\n")
    r = project.factory("check")
    assert r.returncode != 0 and "stages.counted.inputs.rows: no stage 'nowhere'" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_step_errors_are_one_line_naming_the_field(project):
    cases = {
        "{name: two, data: extra,": ("{name: two, data: nothere,", "train.1.data: no data section 'nothere'"),
        "{name: three,": ("{name: one,", "train.2.name: step 'one' is named twice"),
        "promote: {fake-primary.exact_match: 0.5}}\n  - {name: two": (
            "promote: {nosuch.exact_match: 0.5}}\n  - {name: two", "train.0.promote.nosuch.exact_match: the recipe does not evaluate suite 'nosuch'"),
        "{name: three, steps: 700": ("{name: three, method: rlhf, steps: 700", "train.2.method: the fake family has no method 'rlhf'; its methods: sft-lora, dpo-lora"),
        "{name: one, steps: 800": ("{name: one, method: dpo-lora, steps: 800", "train.0.method: dpo-lora needs an earlier step"),
    }
    for old, (new, expected) in cases.items():
        assert old in STEPS, old
        _setup(project, STEPS.replace(old, new))
        r = project.factory("check")
        out = (r.stdout + r.stderr).strip()
        assert r.returncode != 0, new
        assert expected in out, (expected, out)
        assert "Traceback" not in out and len(out.splitlines()) == 1, out
        assert not (project.root / "builds.log").exists()


def test_a_promotion_bound_on_a_lower_is_better_rate_is_a_ceiling():
    from factory.promote import check
    from factory.records import EvalRecord

    def record(hijack):
        score = {"value": hijack, "n": 10, "unit": "rate", "higher_is_better": False}
        return EvalRecord.model_validate({"role": "candidate", "model": {"base_digest": "b"}, "suites": [
            {"suite": "risk-probes", "version": "1", "rows": 10, "primary_metric": "hijack_rate",
             "scores": {"hijack_rate": score, "eos_rate": {"value": 0.9, "n": 10, "unit": "rate"}}}]})

    crit = {"risk-probes.hijack_rate": 0.1, "risk-probes.eos_rate": 0.8}
    ok = check(record(0.0), crit, "one", "train.0")
    assert ok["pass"] and "risk-probes.hijack_rate 0.000 <= 0.1" in ok["reason"]
    bad = check(record(0.3), crit, "one", "train.0")
    assert not bad["pass"] and bad["blocked_by"] == ["promote.one.risk-probes.hijack_rate"]
    assert "risk-probes.hijack_rate 0.300 > 0.1" in bad["reason"]
