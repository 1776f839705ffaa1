"""The gate on hand-made eval records: each outcome, each criterion type, and the decide stage."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from factory import gate, hashing
from factory.records import EvalRecord, FileRef, ModelRef, SuiteResult, TrainLogLine, TrainSummary, read_record
from factory_plugins.evals import breadth, json_action

BASE = "b" * 32
ADAPTER = "a" * 32
ACTION = '{"action":"list","args":{}}'


def planner_rows(n: int) -> list[dict]:
    return [{"id": f"p{i:03d}", "prompt": f"req {i}", "answer": ACTION} for i in range(n)]


def breadth_rows(n: int) -> list[dict]:
    skills = ["copy", "reverse", "sum", "sort"]
    return [{"id": f"b{i:03d}", "prompt": f"q {i}", "answer": str(i), "skill": skills[i % 4]} for i in range(n)]


def planner_eval(n_right: int, n: int = 100) -> tuple[list[dict], list[str]]:
    rows = planner_rows(n)
    return rows, [ACTION if i < n_right else "oops" for i in range(n)]


def breadth_eval(n_right: int, n: int = 200) -> tuple[list[dict], list[str]]:
    rows = breadth_rows(n)
    return rows, [r["answer"] if i < n_right else "x" for i, r in enumerate(rows)]


SCORERS = {"json-action": json_action.score, "breadth": breadth.score}


def write_eval(root: Path, role: str, results: dict, adapter: str | None = ADAPTER, base: str = BASE,
               failed: tuple[str, ...] = ()) -> EvalRecord:
    """Write samples files and eval-<role>.json under root, as the eval stage would."""
    suites = []
    for name, (rows, outputs) in results.items():
        if name in failed:
            suites.append(SuiteResult(suite=name, version="1.0", status="failed", error="RuntimeError: boom"))
            continue
        out = SCORERS[name](rows, outputs)
        rel = f"samples/{role}/{name}.jsonl"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(json.dumps(s, sort_keys=True) + "\n" for s in out.samples))
        suites.append(SuiteResult(
            suite=name, version="1.0", rows=len(rows), data_digest=hashing.digest_json(rows),
            primary_metric="exact_match", scores=out.scores, per_skill=out.per_skill,
            samples=FileRef(path=rel, digest=hashing.hash_file(p)),
        ))
    rec = EvalRecord(role=role, model=ModelRef(base_digest=base, adapter_digest=adapter if role == "candidate" else None),
                     heldout_digest="h" * 32, suites=suites)
    (root / f"eval-{role}.json").write_text(rec.model_dump_json(indent=2))
    return rec


def train_summary(**kw) -> TrainSummary:
    args = dict(method="sft-lora", steps=300, final_loss=0.4, seconds=60.0, tokens_per_s=1000.0, device="cpu",
                params={"steps": 300, "replay": 0.0, "lr": 5e-3, "batch_size": 32})
    args.update(kw)
    return TrainSummary(**args)


def falling_log(n: int = 20) -> list[TrainLogLine]:
    return [TrainLogLine(step=i * 10, loss=2.0 / (1 + i), lr=1e-3, tokens_per_s=1.0, elapsed_s=i) for i in range(n)]


def flat_log(n: int = 20) -> list[TrainLogLine]:
    return [TrainLogLine(step=i * 10, loss=0.5, lr=1e-3, tokens_per_s=1.0, elapsed_s=i) for i in range(n)]


CRIT = {"primary_min": 0.95, "breadth_drop_max_pp": 3.0}


def run_gate(tmp_path: Path, base_results: dict, cand_results: dict, criteria=CRIT, train=None, log=None,
             cand_failed=(), adapter=ADAPTER):
    bdir, cdir = tmp_path / "eb", tmp_path / "ec"
    b = write_eval(bdir, "baseline", base_results)
    c = write_eval(cdir, "candidate", cand_results, adapter=adapter, failed=cand_failed)
    bs, p1 = gate.load_samples(b, bdir)
    cs, p2 = gate.load_samples(c, cdir)
    return gate.decide(b, c, {"baseline": bs, "candidate": cs}, train or train_summary(), criteria, "json-action",
                       ["breadth"], train_log=log, problems=p1 + p2)


def crit(decision, name):
    return next(c for c in decision.criteria if c.name == name)


def test_ship_when_every_criterion_passes(tmp_path):
    d = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": breadth_eval(180)},
                 {"json-action": planner_eval(98), "breadth": breadth_eval(179)})
    assert d.decision == "ship", d.reason
    prim = crit(d, "primary_min")
    assert prim.baseline == pytest.approx(0.05) and prim.candidate == pytest.approx(0.98)
    assert prim.delta == pytest.approx(0.93)
    assert prim.interval[0] < 0.93 < prim.interval[1]
    assert prim.p_value < 1e-20  # 93 discordant pairs, all one way
    assert crit(d, "breadth_drop_max_pp:breadth").passed
    assert {c.name for c in d.criteria} >= {"require_model_hash", "require_samples"}


def test_rework_breadth_drop_names_replay(tmp_path):
    d = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": breadth_eval(180)},
                 {"json-action": planner_eval(98), "breadth": breadth_eval(150)}, log=falling_log())
    assert d.decision == "rework"
    c = crit(d, "breadth_drop_max_pp:breadth")
    assert not c.passed and c.delta == pytest.approx(-0.15)
    assert "train.replay" in d.next_action and "train.steps" not in d.next_action


def test_rework_primary_short_with_falling_loss_names_steps(tmp_path):
    d = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": breadth_eval(180)},
                 {"json-action": planner_eval(82), "breadth": breadth_eval(180)}, log=falling_log())
    assert d.decision == "rework"
    assert "train.steps" in d.next_action and "600" in d.next_action


def test_rework_primary_short_with_flat_loss_points_at_data(tmp_path):
    d = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": breadth_eval(180)},
                 {"json-action": planner_eval(82), "breadth": breadth_eval(180)}, log=flat_log())
    assert d.decision == "rework"
    assert "train.steps" not in d.next_action and "data.sources" in d.next_action


def test_reject_when_significantly_worse_on_primary(tmp_path):
    d = run_gate(tmp_path, {"json-action": planner_eval(80), "breadth": breadth_eval(180)},
                 {"json-action": planner_eval(40), "breadth": breadth_eval(180)})
    assert d.decision == "reject"
    assert crit(d, "primary_min").p_value < 0.05


def test_worse_but_not_significant_is_rework(tmp_path):
    d = run_gate(tmp_path, {"json-action": planner_eval(50), "breadth": breadth_eval(180)},
                 {"json-action": planner_eval(47), "breadth": breadth_eval(180)})
    assert d.decision == "rework"
    assert crit(d, "primary_min").p_value > 0.05


def test_blocked_when_a_suite_failed(tmp_path):
    d = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": breadth_eval(180)},
                 {"json-action": planner_eval(98), "breadth": breadth_eval(180)}, cand_failed=("breadth",))
    assert d.decision == "blocked"
    assert any("breadth failed" in b and "boom" in b for b in d.blocked_by)


def test_blocked_when_samples_edited_or_missing(tmp_path):
    bdir, cdir = tmp_path / "eb", tmp_path / "ec"
    results = {"json-action": planner_eval(98), "breadth": breadth_eval(180)}
    b = write_eval(bdir, "baseline", {"json-action": planner_eval(5), "breadth": breadth_eval(180)})
    c = write_eval(cdir, "candidate", results)
    p = cdir / "samples/candidate/json-action.jsonl"
    p.write_text(p.read_text().replace('"correct": false', '"correct": true'))
    (cdir / "samples/candidate/breadth.jsonl").unlink()
    bs, p1 = gate.load_samples(b, bdir)
    cs, p2 = gate.load_samples(c, cdir)
    d = gate.decide(b, c, {"baseline": bs, "candidate": cs}, train_summary(), CRIT, "json-action", ["breadth"],
                    problems=p1 + p2)
    assert d.decision == "blocked"
    assert any(x.startswith("samples/candidate/json-action.jsonl: digest") for x in d.blocked_by)
    assert any(x.startswith("samples/candidate/breadth.jsonl: missing") for x in d.blocked_by)
    assert not crit(d, "require_samples").passed


def test_blocked_when_model_hash_missing(tmp_path):
    d = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": breadth_eval(180)},
                 {"json-action": planner_eval(98), "breadth": breadth_eval(180)}, adapter=None)
    assert d.decision == "blocked"
    assert "eval-candidate.json: model.adapter_digest missing" in d.blocked_by
    # Without the requirement the same evidence ships.
    d = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": breadth_eval(180)},
                 {"json-action": planner_eval(98), "breadth": breadth_eval(180)}, adapter=None,
                 criteria={**CRIT, "require_model_hash": False})
    assert d.decision == "ship"


def test_blocked_when_baseline_and_candidate_scored_different_rows(tmp_path):
    d = run_gate(tmp_path, {"json-action": planner_eval(5, n=100), "breadth": breadth_eval(180)},
                 {"json-action": planner_eval(98, n=99), "breadth": breadth_eval(180)})
    assert d.decision == "blocked"
    assert any("different rows" in b for b in d.blocked_by)


def test_suite_min_and_delta_min_criteria(tmp_path):
    base = {"json-action": planner_eval(5), "breadth": breadth_eval(180)}
    cand = {"json-action": planner_eval(98), "breadth": breadth_eval(180)}
    criteria = {**CRIT, "suite_min": {"json-action.valid_json": 0.9, "breadth": 0.95},
                "delta_min_pp": {"json-action": 50, "json-action.field.action": 95}}
    d = run_gate(tmp_path, base, cand, criteria=criteria)
    assert crit(d, "suite_min:json-action.valid_json").passed
    assert crit(d, "suite_min:json-action.valid_json").metric == "json-action.valid_json"
    assert not crit(d, "suite_min:breadth").passed  # 0.90 < 0.95
    assert crit(d, "delta_min_pp:json-action").passed  # +93 points >= 50
    fa = crit(d, "delta_min_pp:json-action.field.action")
    assert not fa.passed and fa.delta == pytest.approx(0.93) and fa.interval is not None
    assert d.decision == "rework"


def test_hardware_criteria(tmp_path):
    base = {"json-action": planner_eval(5), "breadth": breadth_eval(180)}
    cand = {"json-action": planner_eval(98), "breadth": breadth_eval(180)}
    ok = run_gate(tmp_path, base, cand, criteria={**CRIT, "max_vram_gb": 8, "device_tier": "cuda"},
                  train=train_summary(device="cuda:0", peak_vram_gb=6.5))
    assert ok.decision == "ship"
    assert crit(ok, "max_vram_gb").candidate == 6.5
    bad = run_gate(tmp_path, base, cand, criteria={**CRIT, "max_vram_gb": 4, "device_tier": "cpu"},
                   train=train_summary(device="cuda:0", peak_vram_gb=6.5))
    assert bad.decision == "rework"
    assert not crit(bad, "max_vram_gb").passed and not crit(bad, "device_tier").passed
    assert "train.batch_size" in bad.next_action and "train.device" in bad.next_action
    cpu = run_gate(tmp_path, base, cand, criteria={**CRIT, "max_vram_gb": 1, "device_tier": "cpu"})
    assert cpu.decision == "ship"  # CPU training uses no accelerator memory


def test_build_decision_stage(tmp_path):
    bdir, cdir, tdir, out = (tmp_path / n for n in ("eb", "ec", "train", "out"))
    write_eval(bdir, "baseline", {"json-action": planner_eval(5), "breadth": breadth_eval(180)})
    write_eval(cdir, "candidate", {"json-action": planner_eval(80), "breadth": breadth_eval(180)})
    tdir.mkdir()
    out.mkdir()
    (tdir / "train.json").write_text(train_summary().model_dump_json())
    (tdir / "train.log").write_text("".join(line.model_dump_json() + "\n" for line in falling_log()))
    ctx = SimpleNamespace(
        config={"primary": "json-action", "regression": ["breadth"], "criteria": CRIT},
        inputs={"eval-baseline": bdir, "eval-candidate": cdir, "train": tdir}, out=out, log=lambda m: None,
    )
    gate.build_decision(ctx)
    d = read_record(out / "decision.json")
    assert d.decision == "rework" and "train.steps" in d.next_action


def test_loss_still_falling():
    assert gate.loss_still_falling(falling_log()) is True
    assert gate.loss_still_falling(flat_log()) is False
    assert gate.loss_still_falling([]) is None
