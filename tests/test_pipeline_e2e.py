"""End to end on the embedded tiny model: real pretraining, LoRA training, evaluation and the gate.

Slow (minutes on two cores); deselected by default and run by CI with `pytest -m slow`.
"""

import json
import os
import subprocess
import sys

import pytest

# clean_project is a session fixture in conftest.py, shared with the run browser's slow test

pytestmark = pytest.mark.slow


def doit(root, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("FACTORY_LOAD_PLUGINS", "FACTORY_ROOT",
                                                         "FACTORY_INVOCATION")}
    r = subprocess.run([sys.executable, "-m", "doit", *args], cwd=root, env=env, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def run_dir(root, recipe):
    (d,) = [p for p in (root / "runs").iterdir() if p.name.split("-", 3)[-1].rsplit("-", 1)[0] == recipe]
    return d


def events(run):
    return {e["stage"]: e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())}


def test_quick_recipe_from_a_clean_store_reworks_with_evidence(clean_project):
    from factory.records import read_record
    from factory.validate import validate_run

    doit(clean_project, "recipe:pace-planner-quick")
    run = run_dir(clean_project, "pace-planner-quick")
    for name in ("config.json", "dataset.json", "train.log", "train.json", "eval-baseline.json",
                 "eval-candidate.json", "report.md", "report.html", "artifact.json", "decision.json",
                 "run_manifest.json", "events.jsonl"):
        assert (run / name).is_file(), name
    assert validate_run(run) == []
    decision = read_record(run / "decision.json")
    assert decision.decision == "rework", decision.reason
    assert "train." in (decision.next_action or "")
    failed = [c for c in decision.criteria if not c.passed]
    assert failed, "a rework names the criteria that failed"
    assert all(e["status"] == "built" for e in events(run).values())


def test_flagship_reuses_base_data_and_baseline_and_ships(clean_project):
    from factory.records import read_record
    from factory.validate import validate_run

    doit(clean_project, "recipe:pace-planner")
    run = run_dir(clean_project, "pace-planner")
    ev = events(run)
    for stage in ("breadth", "dataset", "base", "eval-baseline"):
        assert ev[stage]["status"] == "hit", (stage, ev[stage])
    for stage in ("train", "eval-candidate", "decide"):
        assert ev[stage]["status"] == "built", (stage, ev[stage])
    # validate_run also re-derives the decision from the samples and fails if it disagrees.
    assert validate_run(run) == []
    decision = read_record(run / "decision.json")
    primary = next(c for c in decision.criteria if c.name == "primary_min")
    assert primary.candidate > primary.baseline + 0.5, "LoRA taught the planner task"
    assert decision.decision == "ship", decision.reason
    assert all(c.passed for c in decision.criteria)
    breadth = next(c for c in decision.criteria if c.name.startswith("breadth_drop_max_pp"))
    assert primary.candidate >= 0.95 and breadth.delta * 100 >= -3.0
    assert any((clean_project / "specialists").glob("*/adapter_model.safetensors"))
    # A second build changes nothing and writes nothing.
    before = sorted(p.name for p in (clean_project / "runs").iterdir())
    r = doit(clean_project, "recipe:pace-planner")
    assert "-- recipe:pace-planner" in r.stdout
    assert sorted(p.name for p in (clean_project / "runs").iterdir()) == before


def test_dpo_recipe_reuses_the_flagships_sft_step_and_trains_dpo_on_top(clean_project):
    from factory.validate import validate_run

    doit(clean_project, "recipe:pace-planner-dpo")
    run = run_dir(clean_project, "pace-planner-dpo")
    ev = events(run)
    assert ev["train-sft"]["status"] == "hit", "the SFT step is the flagship's training, reused"
    assert ev["train-dpo"]["status"] == "built"
    plan = json.loads((run / "training_plan.json").read_text())
    assert [s["name"] for s in plan["steps"]] == ["sft", "dpo"]
    assert plan["steps"][0]["promote"]["passed"] is True
    decision = json.loads((run / "decision.json").read_text())
    assert decision["decision"] in ("ship", "rework"), decision
    if plan["steps"][1]["promote"]["passed"] is False:
        assert decision["reason"].startswith("step dpo not promoted")
    assert (run / "steps" / "dpo" / "train.log").is_file()
    assert validate_run(run) == []


def test_curriculum_recipe_promotes_each_step_on_its_own_checks(clean_project):
    from factory.validate import validate_run

    doit(clean_project, "recipe:pace-planner-curriculum")
    run = run_dir(clean_project, "pace-planner-curriculum")
    plan = json.loads((run / "training_plan.json").read_text())
    assert [s["name"] for s in plan["steps"]] == ["foundations", "composition", "whole-task"]
    ev = events(run)
    for st in plan["steps"]:
        assert st["promote"] is not None and st["promote"]["criteria"]
        if st["status"] == "trained":
            assert ev[f"promote-{st['name']}"]["status"] in ("built", "hit")
    decision = json.loads((run / "decision.json").read_text())
    stopped = [s for s in plan["steps"] if s["promote"]["passed"] is False]
    if stopped:
        assert decision["decision"] == "rework" and stopped[0]["name"] in decision["reason"]
    assert validate_run(run) == []
