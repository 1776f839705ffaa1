"""Evidence: what a run's records say, read once for the gate, report, validate, compare, card and web.

The records of tests/fixtures/run come from a real tiny build (without its samples files); make_run
(test_validate) writes a complete run with samples from hand-made evidence.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from factory import evidence
from factory.errors import FactoryError
from factory.records import Decision, EvalRecord, RunConfig, read_json, read_json_object
from test_validate import make_run

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run"


@pytest.fixture()
def real_run(tmp_path) -> Path:
    run = tmp_path / "2026-01-01-demo-00000000"
    shutil.copytree(FIXTURE, run)
    return run


def test_read_run_types_every_record_of_a_real_run(real_run):
    ev = evidence.read_run(real_run)
    raw = {n: json.loads((real_run / n).read_text()) for n in ("config.json", "decision.json", "run_manifest.json")}
    assert isinstance(ev.config, RunConfig) and isinstance(ev.decision, Decision)
    assert isinstance(ev.baseline, EvalRecord) and ev.baseline.role == "baseline"
    assert isinstance(ev.candidate, EvalRecord) and ev.candidate.role == "candidate"
    assert ev.decision.decision == raw["decision.json"]["decision"]
    assert ev.train is not None and ev.dataset is not None and ev.artifact is not None
    assert len(ev.log) == len((real_run / "train.log").read_text().splitlines())
    assert len(ev.events) == len((real_run / "events.jsonl").read_text().splitlines())
    # what the report and the summaries show of the config, and the config as the file wrote it
    assert ev.settings["recipe"] == raw["config.json"]["recipe"]
    assert ev.settings["primary"] == raw["config.json"]["evals"]["primary"]
    assert ev.config_values() == raw["config.json"]
    assert ev.stage_keys == raw["run_manifest.json"]["stage_keys"]
    assert ev.suite_names() == [s.suite for s in ev.candidate.suites]
    assert ev.suite("candidate", ev.settings["primary"]).suite == ev.settings["primary"]
    assert ev.suite("baseline", "no-such-suite") is None
    # one training step, from the config's train section (this run has no training_plan.json)
    assert [s["name"] for s in ev.steps] == ["train"] and ev.steps[0]["settings"] == raw["config.json"]["train"]
    # the fixture keeps no samples files: each one the evals name is a problem, and nothing is unreadable
    named = [s.samples.path for rec in (ev.baseline, ev.candidate) for s in rec.suites if s.samples]
    assert named and all(any(p.startswith(f"{path}: missing") for p in ev.problems) for path in named)
    assert ev.unreadable == {}
    ev.require("config.json", "decision.json", "eval-candidate.json")


def test_gather_reads_stage_directories_like_a_run(real_run, tmp_path):
    stages = {}
    for stage, files in {"decide": ["decision.json"], "eval-baseline": ["eval-baseline.json"],
                         "eval-candidate": ["eval-candidate.json"], "train": ["train.json", "train.log"],
                         "dataset": ["dataset.json"]}.items():
        d = tmp_path / "store" / stage
        d.mkdir(parents=True)
        for f in files:
            shutil.copy(real_run / f, d / f)
        stages[stage] = d
    ev = evidence.gather(stages, {"recipe": "demo"})
    run = evidence.read_run(real_run)
    assert ev.settings == {"recipe": "demo"}
    for name in ("decision", "baseline", "candidate", "train", "log", "dataset"):
        assert getattr(ev, name) == getattr(run, name), name
    assert ev.config is None and ev.manifest is None and ev.artifact is None
    # a stage that is not an input is not read
    assert evidence.gather({"decide": stages["decide"]}).candidate is None


def test_a_bad_record_is_a_problem_and_require_raises_it(real_run):
    (real_run / "decision.json").write_text('{"decision": "maybe"}')
    (real_run / "train.log").write_text('{"step": "x"}\n')
    ev = evidence.read_run(real_run)
    assert ev.decision is None and ev.candidate is not None
    assert set(ev.unreadable) == {"decision.json", "train.log"}
    assert any("decision.json: decision:" in p for p in ev.problems)
    ev.require("config.json")  # a file that read fine
    with pytest.raises(FactoryError, match=r"decision\.json: decision:"):
        ev.require("config.json", "decision.json")
    with pytest.raises(FactoryError, match=r"train\.log:1: step:"):
        ev.require("train.log")


def test_samples_are_checked_against_their_digest(tmp_path):
    run = make_run(tmp_path)
    ev = evidence.read_run(run)
    assert ev.problems == []
    assert set(ev.samples["candidate"]) == {"json-action", "breadth"}
    assert len(ev.samples["baseline"]["breadth"]) == ev.suite("baseline", "breadth").rows
    path = run / "samples" / "candidate" / "json-action.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # a sample removed after the eval
    ev = evidence.read_run(run)
    assert "json-action" not in ev.samples["candidate"] and "breadth" in ev.samples["candidate"]
    assert any(p.startswith("samples/candidate/json-action.jsonl: digest") and "changed after the eval" in p
               for p in ev.problems)
    rec, samples, problems = evidence.read_eval(run, "candidate")
    assert rec == ev.candidate and samples == ev.samples["candidate"] and problems
    assert evidence.read_eval(tmp_path, "baseline") == (None, {}, ["eval-baseline.json: missing"])
    # without samples, nothing is hashed and nothing about them is a problem
    assert evidence.read_run(run, samples=False).problems == []


def test_stop_records_and_training_steps_with_their_verdicts(real_run):
    verdict = {"pass": False, "decision": "rework", "reason": "step sft not promoted", "checks": []}
    (real_run / "stopped").mkdir()
    (real_run / "stopped" / "eval-candidate.json").write_text(json.dumps({"stopped_by": "promote-sft",
                                                                         "verdict": verdict}))
    (real_run / "stopped" / "train-dpo.json").write_text("{")
    plan = {"steps": [{"name": "sft", "method": "sft-lora", "data": "data", "status": "trained",
                       "promote": {"passed": False, "reason": verdict["reason"]}},
                      {"name": "dpo", "method": "dpo", "data": "prefs", "status": "stopped", "promote": None}]}
    (real_run / "training_plan.json").write_text(json.dumps(plan))
    ev = evidence.read_run(real_run)
    assert ev.stops == {"eval-candidate": {"stopped_by": "promote-sft", "verdict": verdict}}
    assert ev.unreadable["stopped/train-dpo.json"] == "stopped/train-dpo.json: not a readable stop record"
    assert [s["name"] for s in ev.steps] == ["sft", "dpo"] and ev.steps[0]["promote"]["passed"] is False

    (real_run / "training_plan.json").write_text('{"steps": [1]}')
    with pytest.raises(FactoryError, match=r"training_plan\.json: steps: a list of objects expected"):
        evidence.read_run(real_run).require("training_plan.json")

    stage = real_run / "decide-stage"
    stage.mkdir()
    assert evidence.read_stop(stage) is None
    (stage / "stop.json").write_text(json.dumps({"stopped_by": "power", "verdict": verdict}))
    assert evidence.read_stop(stage)["verdict"] == verdict
    (stage / "stop.json").write_text('{"verdict": 3}')
    with pytest.raises(FactoryError, match="expected the guard's verdict.json object"):
        evidence.read_stop(stage)


@pytest.mark.parametrize("content,expected", [
    (b"\xff\xfe{}", "not UTF-8 text (byte 0)"),
    (b"{", "not valid JSON (line 1"),
    (b"[" * 50000 + b"]" * 50000, "nested too deeply"),
])
def test_one_json_reader_names_the_file(tmp_path, content, expected):
    p = tmp_path / "x.json"
    p.write_bytes(content)
    with pytest.raises(FactoryError) as e:
        read_json(p)
    assert str(e.value).startswith(f"{p}: ") and expected in str(e.value)


def test_json_reader_missing_files_and_objects(tmp_path):
    p = tmp_path / "x.json"
    with pytest.raises(FactoryError, match="x.json: missing"):
        read_json(p)
    assert read_json(p, missing={}) == {} and read_json_object(p, missing={}) == {}
    p.write_text("[1, 2]")
    assert read_json(p) == [1, 2]
    with pytest.raises(FactoryError, match=r"x\.json: \(root\): expected a JSON object, found list"):
        read_json_object(p)
    (tmp_path / "d.json").mkdir()
    with pytest.raises(FactoryError, match="d.json: a directory, not a file"):
        read_json(tmp_path / "d.json")
