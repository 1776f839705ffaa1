"""Run validation: a complete hand-made run is valid; edits after the fact are caught and named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory import evidence, gate, hashing
from factory.records import (
    Artifact, DatasetCounts, DatasetRecord, DatasetSource, Event, FileRef, RunConfig, RunManifest, BaseModelInfo,
    export_schemas, write_record,
)
from factory.report import report_run
from factory.runcmd import cli_render, cli_validate
from factory.validate import validate_run
from test_gate import CRIT, breadth_eval, falling_log, planner_eval, train_summary, write_eval

ROOT = Path(__file__).resolve().parents[1]


def make_run(tmp_path: Path, cand_right: int = 98, breadth_right: int = 179, name: str = "run") -> Path:
    """A complete run directory, as the engine would materialize it, built from hand-made evidence."""
    run = tmp_path / name
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"not really weights" * 10)
    (run / "adapter" / "adapter_config.json").write_text('{"r": 16}')
    adapter_refs = [FileRef(path=f"adapter/{n}", digest=hashing.hash_file(run / "adapter" / n),
                            size=(run / "adapter" / n).stat().st_size)
                    for n in ("adapter_config.json", "adapter_model.safetensors")]
    b = write_eval(run, "baseline", {"json-action": planner_eval(5), "breadth": breadth_eval(180)})
    c = write_eval(run, "candidate", {"json-action": planner_eval(cand_right), "breadth": breadth_eval(breadth_right)},
                   adapter=hashing.digest_tree(run / "adapter"))
    train = train_summary(adapter=adapter_refs)
    write_record(run / "train.json", train)
    (run / "train.log").write_text("".join(x.model_dump_json() + "\n" for x in falling_log()))
    write_record(run / "dataset.json", DatasetRecord(
        sources=[DatasetSource(kind="jsonl", path="pace-planner/traces.jsonl", rows=130, digest="s" * 32)],
        counts=DatasetCounts(input_rows=130, train_rows=20, heldout_rows=100, dropped_rows=10,
                             dropped_by_reason={"duplicate": 10}),
        splits={"train": FileRef(path="train.jsonl", digest="t" * 32), "heldout": FileRef(path="heldout.jsonl", digest="h" * 32)},
    ))
    write_record(run / "config.json", RunConfig(
        recipe="pace-planner", goal="plan runs", owner="team", base=BaseModelInfo(family="tiny", model="tiny-llama"),
        method="sft-lora", evals={"primary": "json-action", "regression": ["breadth"]}, criteria=CRIT,
    ))
    bs, _ = evidence.load_samples(b, run)
    cs, _ = evidence.load_samples(c, run)
    decision = gate.decide(b, c, {"baseline": bs, "candidate": cs}, train, CRIT, "json-action", ["breadth"],
                           train_log=falling_log())
    write_record(run / "decision.json", decision)
    md, page = report_run(run)
    (run / "report.md").write_text(md)
    (run / "report.html").write_text(page)
    write_record(run / "artifact.json", Artifact(adapter=adapter_refs, base_digest=c.model.base_digest,
                                                 shipped=decision.decision == "ship"))
    files = {n: hashing.hash_file(run / n) for n in ("decision.json", "eval-candidate.json", "report.md")}
    write_record(run / "run_manifest.json", RunManifest(run_id=name, recipe="pace-planner",
                                                        recipe_path="recipes/pace-planner.yaml", created="2025-01-01",
                                                        files=files))
    ev = Event(stage="decide", kind="decide", key="k" * 32, status="built", start="s", end="e", seconds=0.1, host="h")
    (run / "events.jsonl").write_text(ev.model_dump_json() + "\n")
    return run


def test_complete_run_is_valid(tmp_path, capsys):
    run = make_run(tmp_path)
    assert validate_run(run) == []
    assert cli_validate(str(run)) == 0
    assert json.loads((run / "decision.json").read_text())["decision"] == "ship"


def test_edited_samples_file_is_named(tmp_path, capsys):
    run = make_run(tmp_path)
    p = run / "samples/candidate/json-action.jsonl"
    p.write_text(p.read_text().replace('"output": "oops"', '"output": "fixed by hand"'))
    problems = validate_run(run)
    assert any(x.startswith("samples/candidate/json-action.jsonl: digest") for x in problems), problems
    # The recorded decision no longer follows from the evidence: the gate now blocks.
    assert any("decision.json: says ship" in x and "blocked" in x for x in problems)
    assert cli_validate(str(run)) == 1
    assert "samples/candidate/json-action.jsonl" in capsys.readouterr().out


def test_adapter_and_record_mismatches_are_named(tmp_path):
    run = make_run(tmp_path)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"swapped")
    problems = validate_run(run)
    assert any(x.startswith("adapter/adapter_model.safetensors: digest") and "train.json" in x for x in problems)
    assert any(x.startswith("adapter/adapter_model.safetensors: digest") and "artifact.json" in x for x in problems)
    assert any(x.startswith("adapter/: digest") for x in problems)


def test_schema_violations_and_missing_files(tmp_path):
    run = make_run(tmp_path)
    data = json.loads((run / "decision.json").read_text())
    data["decision"] = "maybe"
    (run / "decision.json").write_text(json.dumps(data))
    (run / "train.log").unlink()
    (run / "report.md").write_text("edited")
    problems = validate_run(run)
    assert any(x.startswith("decision.json: decision") for x in problems), problems
    assert "train.log: missing" in problems
    assert "report.md: digest does not match run_manifest.json" in problems


def test_render_prints_summary(tmp_path, capsys):
    run = make_run(tmp_path, cand_right=82)
    assert cli_render(str(run)) == 0
    out = capsys.readouterr().out
    assert "REWORK" in out and "primary_min" in out and "train.steps" in out


def test_exported_schemas_are_current(tmp_path):
    fresh = {p.name: p.read_text() for p in export_schemas(tmp_path / "schemas")}
    committed = {p.name: p.read_text() for p in (ROOT / "docs" / "schemas").glob("*.schema.json")}
    assert fresh == committed, "docs/schemas is stale: run python -c 'from factory.records import export_schemas; export_schemas(\"docs/schemas\")'"


def test_validate_rederives_the_decision_under_its_policy(tmp_path):
    run = make_run(tmp_path)
    assert validate_run(run) == []
    # The recipe's criteria changed after the decision: named, with the field.
    cfg = json.loads((run / "config.json").read_text())
    cfg["criteria"] = {**cfg["criteria"], "confidence": 0.99}
    (run / "config.json").write_text(json.dumps(cfg))
    assert "decision.json: decided under other criteria than config.json's (criteria.confidence)" in validate_run(run)
    # A policy edited in place no longer matches its digest.
    run2 = make_run(tmp_path, name="run2")
    d = json.loads((run2 / "decision.json").read_text())
    d["policy"]["criteria"]["breadth_drop_max_pp"] = 50
    (run2 / "decision.json").write_text(json.dumps(d))
    assert "decision.json: policy_digest does not match the policy recorded beside it" in validate_run(run2)
