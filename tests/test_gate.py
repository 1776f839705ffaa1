"""The gate on hand-made eval records: each outcome, each criterion type, and the decide stage."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from factory import evidence, gate, hashing
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
    bs, p1 = evidence.load_samples(b, bdir)
    cs, p2 = evidence.load_samples(c, cdir)
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
    bs, p1 = evidence.load_samples(b, bdir)
    cs, p2 = evidence.load_samples(c, cdir)
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


# --- the interval rule, by hand ---------------------------------------------------------------
# Bonett-Price adjusted Wald for paired rates, n pairs with n12 right -> wrong and n21 wrong -> right:
#   p12 = (n12 + 1)/(n + 2), p21 = (n21 + 1)/(n + 2), centre = p21 - p12,
#   se = sqrt((p12 + p21 - centre^2)/(n + 2)), interval = centre -/+ z * se.

def bp_interval(n: int, n12: int, n21: int, z: float = 1.959964) -> tuple[float, float]:
    p12, p21 = (n12 + 1) / (n + 2), (n21 + 1) / (n + 2)
    c = p21 - p12
    se = ((p12 + p21 - c * c) / (n + 2)) ** 0.5
    return c - z * se, c + z * se


def paired_breadth(n: int, both: int, b_only: int, c_only: int, skill_of=None):
    """Breadth results for baseline and candidate: b_only rows right only for the baseline, then c_only right
    only for the candidate (`copy` rows first when there are skills), then `both` rows right for both; every
    other row wrong for both."""
    rows = breadth_rows(n)
    if skill_of is not None:
        for i, r in enumerate(rows):
            r["skill"] = skill_of(i)
    order = sorted(range(n), key=lambda i: (skill_of(i) != "copy", i)) if skill_of is not None else list(range(n))
    shared = set(order[b_only + c_only : b_only + c_only + both])
    b_right = set(order[:b_only]) | shared
    c_right = set(order[b_only : b_only + c_only]) | shared
    base = (rows, [r["answer"] if i in b_right else "x" for i, r in enumerate(rows)])
    cand = (rows, [r["answer"] if i in c_right else "x" for i, r in enumerate(rows)])
    return base, cand


def test_regression_whose_point_passes_and_interval_fails_does_not_ship(tmp_path):
    # 200 rows, 10 right -> wrong, 6 wrong -> right: -2.0 points, inside a limit of 3 ...
    base, cand = paired_breadth(200, 170, 10, 6)
    d = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": base},
                 {"json-action": planner_eval(98), "breadth": cand}, log=falling_log())
    c = crit(d, "breadth_drop_max_pp:breadth")
    assert c.delta == pytest.approx(-0.02)
    lo, hi = bp_interval(200, 10, 6)  # ... but the interval is -6.09 .. +2.13 points
    assert lo == pytest.approx(-0.06088, abs=1e-4) and hi == pytest.approx(0.02127, abs=1e-4)
    assert c.interval == pytest.approx([lo, hi], abs=1e-6)
    assert not c.passed and d.decision == "rework"
    assert "-6.1..+2.1 pts" in d.reason and "reaches below -3" in d.reason
    assert "train.replay" in d.next_action
    # Point estimates chosen explicitly: the same evidence ships, and the decision says which rule.
    p = run_gate(tmp_path / "p", {"json-action": planner_eval(5), "breadth": base},
                 {"json-action": planner_eval(98), "breadth": cand}, criteria={**CRIT, "rule": "point"})
    assert p.decision == "ship" and p.rule == "point" and "point estimates" in p.reason
    assert d.rule == "interval" and d.confidence == 0.95


def test_confidence_widens_the_interval(tmp_path):
    base, cand = paired_breadth(1052, 800, 49, 37)
    d95 = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": base},
                   {"json-action": planner_eval(98), "breadth": cand})
    d99 = run_gate(tmp_path / "99", {"json-action": planner_eval(5), "breadth": base},
                   {"json-action": planner_eval(98), "breadth": cand}, criteria={**CRIT, "confidence": 0.99})
    # The flagship's own breadth numbers: -1.14 points, 95% interval -2.88 .. +0.60 inside a limit of 3 ...
    assert crit(d95, "breadth_drop_max_pp:breadth").interval == pytest.approx(bp_interval(1052, 49, 37), abs=1e-6)
    assert d95.decision == "ship"
    # ... and at 99% (z = 2.5758) the lower end is -3.43 points: not shown.
    assert crit(d99, "breadth_drop_max_pp:breadth").interval[0] == pytest.approx(
        bp_interval(1052, 49, 37, z=2.575829)[0], abs=1e-6)
    assert d99.decision == "rework" and "99% paired intervals" in d99.reason
    assert d95.policy_digest != d99.policy_digest


def test_holm_tests_the_regression_family_together(tmp_path):
    # 1,052 rows in four skills; all 86 discordant pairs in `copy`. Alone, breadth's non-inferiority
    # p = 0.018 < 0.025 passes; with a copy limit of 10 the family has two tests, breadth has the
    # smaller p and Holm tests it at 0.025 / 2: its 98.75% lower end is -3.13 points, so it fails,
    # and Holm stops before the skill.
    skills = ["copy", "reverse", "sum", "sort"]
    base, cand = paired_breadth(1052, 800, 49, 37, skill_of=lambda i: skills[i % 4])
    alone = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": base},
                     {"json-action": planner_eval(98), "breadth": cand})
    c = crit(alone, "breadth_drop_max_pp:breadth")
    assert c.passed and c.p_value == pytest.approx(0.0182, abs=5e-4)
    fam = run_gate(tmp_path / "f", {"json-action": planner_eval(5), "breadth": base},
                   {"json-action": planner_eval(98), "breadth": cand},
                   criteria={**CRIT, "skill_drop_max_pp_by_skill": {"breadth.copy": 10}})
    c = crit(fam, "breadth_drop_max_pp:breadth")
    assert c.holm_alpha == pytest.approx(0.0125)
    assert c.holm_interval[0] == pytest.approx(bp_interval(1052, 49, 37, z=2.241403)[0], abs=1e-5)
    assert not c.passed
    s = crit(fam, "skill_drop_max_pp:breadth.copy")
    assert s.holm_alpha == pytest.approx(0.025) and not s.passed and "Holm stopped" in s.reason
    assert fam.decision == "rework"


def test_skill_collapse_under_a_healthy_average_does_not_ship(tmp_path):
    # 800 rows, 200 per skill. The candidate fixes 40 copy rows and breaks 30 sort rows: breadth +1.25
    # points overall, sort -15 points.
    skills = ["copy", "reverse", "sum", "sort"]
    rows = breadth_rows(800)
    for i, r in enumerate(rows):
        r["skill"] = skills[i % 4]
    copy_wrong = [i for i in range(800) if i % 4 == 0][:40]
    sort_broken = [i for i in range(800) if i % 4 == 3][:30]
    base = (rows, ["x" if i in copy_wrong else r["answer"] for i, r in enumerate(rows)])
    cand = (rows, ["x" if i in sort_broken else r["answer"] for i, r in enumerate(rows)])
    d = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": base},
                 {"json-action": planner_eval(98), "breadth": cand}, criteria={**CRIT, "skill_drop_max_pp": 10})
    assert crit(d, "breadth_drop_max_pp:breadth").passed
    assert crit(d, "breadth_drop_max_pp:breadth").delta == pytest.approx(0.0125)
    sort = crit(d, "skill_drop_max_pp:breadth.sort")
    assert not sort.passed and sort.delta == pytest.approx(-0.15) and sort.n == 200
    assert sort.interval == pytest.approx(bp_interval(200, 30, 0), abs=1e-6)
    assert all(crit(d, f"skill_drop_max_pp:breadth.{s}").passed for s in ("copy", "reverse", "sum"))
    assert d.decision == "rework" and "breadth.exact_match[sort] -15.0 pts" in d.reason
    assert "train.replay" in d.next_action
    # Without the skill criterion the average alone ships it.
    assert run_gate(tmp_path / "avg", {"json-action": planner_eval(5), "breadth": base},
                    {"json-action": planner_eval(98), "breadth": cand}).decision == "ship"


def test_primary_must_be_significantly_better(tmp_path):
    # 94 -> 96 of 100: clears primary_min 0.95, but 2 discordant pairs give -1.9 .. +5.8 points.
    base = (planner_rows(100), [ACTION if i < 94 else "oops" for i in range(100)])
    cand = (planner_rows(100), [ACTION if i < 96 else "oops" for i in range(100)])
    d = run_gate(tmp_path, {"json-action": base, "breadth": breadth_eval(180)},
                 {"json-action": cand, "breadth": breadth_eval(180)}, log=falling_log())
    assert crit(d, "primary_min").passed
    sup = crit(d, "primary_superiority")
    assert sup.interval == pytest.approx(bp_interval(100, 0, 2), abs=1e-6) and not sup.passed
    assert d.decision == "rework" and "does not exclude 0" in d.reason
    assert "breadth" not in d.reason  # only the failing criteria, with their own numbers


def test_reason_names_only_failing_criteria(tmp_path):
    d = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": breadth_eval(180)},
                 {"json-action": planner_eval(98), "breadth": breadth_eval(150)}, log=falling_log())
    assert d.decision == "rework"
    assert "not significantly worse" not in d.reason and "McNemar" not in d.reason
    assert d.reason == ("failed (95% paired intervals): breadth_drop_max_pp:breadth: breadth.exact_match -15.0 pts, "
                        "interval -19.9..-9.8 pts reaches below -3; non-inferiority not shown (p=1)")


def test_baseline_at_zero_cannot_show_a_regression(tmp_path):
    d = run_gate(tmp_path, {"json-action": planner_eval(5), "breadth": breadth_eval(0)},
                 {"json-action": planner_eval(98), "breadth": breadth_eval(0)})
    c = crit(d, "breadth_drop_max_pp:breadth")
    assert not c.passed and c.uninformative
    assert d.decision == "rework" and "cannot show" in d.reason
    assert "evals.regression" in d.next_action and "train.replay" not in d.next_action


def test_policy_digest_and_rederive(tmp_path):
    results = ({"json-action": planner_eval(5), "breadth": breadth_eval(180)},
               {"json-action": planner_eval(98), "breadth": breadth_eval(179)})
    d = run_gate(tmp_path, *results)
    assert d.policy["criteria"]["confidence"] == 0.95 and d.policy["criteria"]["rule"] == "interval"
    assert set(d.policy["code"]) == {"factory.gate", "factory.evidence", "factory.stats"}
    assert d.policy_digest == hashing.digest_json(d.policy)
    assert gate.rederive(d, run_gate(tmp_path / "again", *results)) == []
    other = run_gate(tmp_path / "other", *results, criteria={**CRIT, "breadth_drop_max_pp": 0.1})
    problems = gate.rederive(d, other)
    assert any("criteria.breadth_drop_max_pp" in p for p in problems)
    assert any("says ship" in p and "gives rework" in p for p in problems)
    forged = d.model_copy(update={"policy": {**d.policy, "criteria": {**d.policy["criteria"], "confidence": 0.8}}})
    assert gate.rederive(forged, d) == ["decision.json: policy_digest does not match the policy recorded beside it"]
    moved = d.model_copy(update={"policy": {**d.policy, "code": {**d.policy["code"], "factory.gate": "0" * 32}}})
    moved.policy_digest = hashing.digest_json(moved.policy)
    assert gate.rederive(moved, d) == ["decision.json: decided by other gate code (factory.gate changed since)"]


def test_decide_writes_the_decision_of_a_stopping_guard(tmp_path):
    stopped, out = tmp_path / "ec", tmp_path / "out"
    stopped.mkdir()
    out.mkdir()
    verdict = {"pass": False, "decision": "blocked", "reason": "breadth: ±7.84 pts on 100 rows cannot resolve 3",
               "next_action": "raise breadth.heldout_fraction from 0.05 to 0.35", "blocked_by": ["power: breadth"],
               "checks": [{"name": "breadth_drop_max_pp:breadth", "passed": False, "reason": "too few rows"}]}
    (stopped / "stop.json").write_text(json.dumps({"stage": "train", "stopped_by": "power", "verdict": verdict}))
    ctx = SimpleNamespace(config={"primary": "json-action", "regression": ["breadth"], "criteria": CRIT},
                          inputs={"eval-baseline": tmp_path / "missing", "eval-candidate": stopped}, out=out,
                          log=lambda m: None)
    gate.build_decision(ctx)
    d = read_record(out / "decision.json")
    assert d.decision == "blocked" and d.stopped_by == "power"
    assert d.reason == "breadth: ±7.84 pts on 100 rows cannot resolve 3"  # the guard's own words and numbers
    assert d.next_action == verdict["next_action"] and d.blocked_by == ["power: breadth"]
    assert crit(d, "power:breadth_drop_max_pp:breadth").passed is False
    assert d.policy_digest == hashing.digest_json(d.policy)


# --- fail fast on power ------------------------------------------------------------------------

def baseline_record(breadth_n: int, breadth_rate: float, primary_n: int = 100, primary_rate: float = 0.0,
                    skills: dict | None = None) -> EvalRecord:
    from factory.records import Score

    def suite(name, n, rate, per_skill=None):
        return SuiteResult(suite=name, version="1", rows=n, scores={"exact_match": Score(value=rate, n=n)},
                           per_skill={k: Score(value=v, n=m) for k, (m, v) in (per_skill or {}).items()})
    return EvalRecord(role="baseline", model=ModelRef(base_digest=BASE),
                      suites=[suite("json-action", primary_n, primary_rate), suite("breadth", breadth_n, breadth_rate, skills)])


NEEDS = {"json-action": "heldout", "breadth": "breadth"}


def test_power_blocks_a_held_out_set_too_small():
    # h = 1.96 * sqrt(0.8 * 0.2 / 100) = 7.84 points > 3; rows needed = ceil(1.96^2 * 0.16 / 0.03^2) = 683.
    v = gate.power_check(CRIT, "json-action", ["breadth"], baseline_record(100, 0.8), needs=NEEDS,
                         fractions={"heldout": 0.2, "breadth": 0.05})
    assert v["pass"] is False and v["decision"] == "blocked"
    c = next(c for c in v["checks"] if c["name"] == "breadth_drop_max_pp:breadth")
    assert c["half_width"] == pytest.approx(0.0784, abs=1e-4) and c["rows_needed"] == 683
    assert "breadth.heldout_fraction from 0.05 to 0.35" in v["next_action"] and "683" in v["next_action"]
    assert v["blocked_by"] and "7.84 pts on 100 rows" in v["reason"]
    # The flagship's sizes: 1,052 breadth rows at 81.3% -> 2.36 points, and 502 planner rows from 0 to 0.95.
    ok = gate.power_check(CRIT, "json-action", ["breadth"], baseline_record(1052, 0.8127, 502, 0.0), needs=NEEDS)
    assert ok["pass"] is True and ok["next_action"] is None
    assert next(c for c in ok["checks"] if c["suite"] == "breadth")["half_width"] == pytest.approx(0.02357, abs=1e-4)


def test_power_uses_half_where_the_rate_is_unknown_and_holm_for_skills():
    v = gate.power_check(CRIT, "json-action", ["breadth"], None)
    c = next(c for c in v["checks"] if c["suite"] == "breadth")
    assert c["assumed_rate"] == 0.5 and v["pass"] is False and "add held-out rows" in v["next_action"]
    # Two skills and the suite: three tests, z at 1 - 0.025/3 = 2.394.
    rec = baseline_record(2000, 0.8, skills={"copy": (1000, 0.8), "sort": (1000, 0.9)})
    v = gate.power_check({**CRIT, "skill_drop_max_pp": 5}, "json-action", ["breadth"], rec, needs=NEEDS)
    sort = next(c for c in v["checks"] if c["name"] == "skill_drop_max_pp:breadth.sort")
    assert sort["z"] == pytest.approx(2.3940, abs=1e-3)
    assert sort["half_width"] == pytest.approx(2.3940 * (0.09 / 1000) ** 0.5, abs=1e-4) and sort["passed"]


def test_power_baseline_at_zero_blocks():
    v = gate.power_check(CRIT, "json-action", ["breadth"], baseline_record(1000, 0.01), needs=NEEDS)
    assert v["pass"] is False and "cannot show" in v["reason"] and "evals.regression" in v["next_action"]


def test_power_stage_writes_verdict(tmp_path):
    from factory.stages import BuildContext

    eb, out = tmp_path / "eb", tmp_path / "out"
    eb.mkdir()
    out.mkdir()
    write_eval(eb, "baseline", {"json-action": planner_eval(5), "breadth": breadth_eval(180, n=200)})
    ctx = BuildContext(recipe=None, stage="power", kind="power", key="k" * 32,
                       config={"primary": "json-action", "regression": ["breadth"], "criteria": CRIT,
                               "needs": NEEDS, "heldout_fraction": {"heldout": 0.2, "breadth": 0.05}},
                       inputs={"eval-baseline": eb}, out=out, root=tmp_path, registry=None, log=lambda m: None)
    gate.build_power(ctx)
    assert sorted(p.name for p in out.iterdir()) == ["verdict.json"]
    v = json.loads((out / "verdict.json").read_text())
    assert v["pass"] is False and set(v) == {"pass", "decision", "reason", "next_action", "blocked_by", "checks"}
    assert "breadth.heldout_fraction" in v["next_action"]  # 200 rows at 90%: needs 385


def test_power_kind_is_registered():
    from factory.plugins import registries

    assert "power" in registries().stages.names()


# --- criteria against the suites ---------------------------------------------------------------

def test_check_criteria_names_the_field():
    suites = {"json-action": json_action.JsonActionSuite(), "breadth": breadth.BreadthSuite()}
    gate.check_criteria({"suite_min": {"json-action.valid_json": 0.9}}, suites)
    with pytest.raises(gate.FactoryError, match=r"^criteria.suite_min: 'jsn-action.valid_json' names no suite"):
        gate.check_criteria({"suite_min": {"jsn-action.valid_json": 0.9}}, suites)
    with pytest.raises(gate.FactoryError, match=r"^criteria.delta_min_pp: 'nope' names no suite"):
        gate.check_criteria({"delta_min_pp": {"nope": 1}}, suites)
    class Declared:
        name, primary_metric, metrics, skills = "breadth", "exact_match", ("exact_match",), ("copy", "sort")
    with pytest.raises(gate.FactoryError, match=r"^criteria.suite_min: 'breadth.f1': suite breadth has no metric"):
        gate.check_criteria({"suite_min": {"breadth.f1": 0.5}}, {"breadth": Declared()})
    with pytest.raises(gate.FactoryError, match=r"^criteria.skill_drop_max_pp_by_skill: 'breadth.sing'"):
        gate.check_criteria({"skill_drop_max_pp_by_skill": {"breadth.sing": 5}}, {"breadth": Declared()}, ["breadth"])
    gate.check_criteria({"skill_drop_max_pp_by_skill": {"sort": 5}}, {"breadth": Declared()}, ["breadth"])
    with pytest.raises(gate.FactoryError, match=r"^criteria.confidence"):
        gate.check_criteria({"confidence": 1.5}, suites)


@pytest.mark.parametrize("field,value", [("confidence", 1.0), ("confidence", 0.5), ("rule", "vibes"),
                                         ("skill_drop_max_pp", -1)])
def test_recipe_criteria_bad_input_is_one_line(tmp_path, field, value):
    from factory.errors import FactoryError
    from factory.recipe import load_recipe

    (tmp_path / "recipes").mkdir()
    p = tmp_path / "recipes" / "r.yaml"
    p.write_text(json.dumps({"base": {"family": "tiny", "model": "m"}, "data": {"sources": [{"kind": "x"}]},
                             "evals": {"primary": "json-action"}, "criteria": {field: value}}))
    with pytest.raises(FactoryError) as e:
        load_recipe(p, tmp_path)
    assert str(e.value).startswith(f"recipes/r.yaml: criteria.{field}:") and "\n" not in str(e.value)
