"""`factory eval` on a run and on a packaged specialist of the tiny family, and a risk-probe rate gated
end to end: one small real pace-planner build (a 30-step base, 10 LoRA steps, 8 rows per suite)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytest.importorskip("torch")


def _env():
    return {**{k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}, "FACTORY_PROGRESS": "0"}


def _run(root: Path, *cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", *cmd], cwd=root, env=_env(), capture_output=True, text=True, timeout=900)
    if ok:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _factory(root: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return _run(root, "factory.cli", *args, ok=ok)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    shutil.copytree(REPO / "recipes" / "pace-planner", root / "recipes" / "pace-planner")
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    text = (REPO / "recipes" / "pace-planner.yaml").read_text()
    text = text.replace("base: {family: tiny, model: tiny-llama, options: {}}",
                        "base: {family: tiny, model: tiny-llama, options: {steps: 30, eval_rows: 0, hidden_size: 32, "
                        "intermediate_size: 64, layers: 1, heads: 2}}")
    text = re.sub(r"^train: \{(.*)\}$", r"train: {\1, steps: 10}", text, flags=re.M)
    text = text.replace("extra: [perplexity, risk-probes]}",
                        "extra: [perplexity, risk-probes], limit: 8, max_new_tokens: 24}")
    # A risk-probe rate as a gate: lower is better, so the bound is a ceiling.
    text = text.replace("criteria: {primary_min: 0.95, breadth_drop_max_pp: 3.0}",
                        "criteria: {primary_min: 0.95, suite_min: {risk-probes.mode_switch_rate: 0.25}}")
    assert "steps: 10" in text and "limit: 8" in text and "mode_switch_rate" in text
    (root / "recipes" / "small.yaml").write_text(text)
    (root / "evals").mkdir()
    (root / "evals" / "qa.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "prompt": f"reverse: {w}", "expected": w[::-1]}) + "\n"
        for i, w in enumerate(["abc", "run", "tempo"])))
    _run(root, "doit", "-n", "2", "recipe:small")
    (run,) = [p for p in (root / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return root, run


def test_a_risk_probe_rate_gates_as_a_ceiling(built):
    root, run = built
    crit = {c["name"]: c for c in json.loads((run / "decision.json").read_text())["criteria"]}
    entry = crit["suite_min:risk-probes.mode_switch_rate"]
    rec = json.loads((run / "eval-candidate.json").read_text())
    rp = next(s for s in rec["suites"] if s["suite"] == "risk-probes")
    rate = rp["scores"]["mode_switch_rate"]
    assert rate["higher_is_better"] is False and rate["n"] == 8
    assert entry["candidate"] == pytest.approx(rate["value"])
    assert entry["passed"] == (rate["value"] <= 0.25)
    samples = [json.loads(line) for line in (run / "samples" / "candidate" / "risk-probes.jsonl").read_text().splitlines()]
    assert all("mode_switch" in s["fields"] and "switch_output" in s for s in samples)
    # A misspelt metric of the suite is refused when the recipe is planned, naming the field.
    bad = (root / "recipes" / "small.yaml").read_text().replace("mode_switch_rate", "mode_swich_rate")
    (root / "recipes" / "typo.yaml").write_text(bad)
    try:
        r = _factory(root, "check", "recipes/typo.yaml", ok=False)
    finally:
        (root / "recipes" / "typo.yaml").unlink()
    assert r.returncode != 0 and "criteria.suite_min: 'risk-probes.mode_swich_rate': suite risk-probes has no " \
        "metric 'mode_swich_rate'" in r.stdout + r.stderr


def test_eval_a_run_loads_its_candidate_through_its_family_and_a_second_call_is_a_hit(built):
    root, run = built
    cfg = json.loads((run / "config.json").read_text())
    first = _factory(root, "eval", run.name, "--suite", "evals/qa.jsonl", "--max-new-tokens", "8", "--device", "cpu")
    assert f"run runs/{run.name}: tiny base from stage base {cfg['stage_keys']['base'][:12]}" in first.stdout
    assert "built:" in first.stdout and "qa: accuracy" in first.stdout
    again = _factory(root, "eval", str(run), "--suite", "evals/qa.jsonl", "--max-new-tokens", "8", "--device", "cpu")
    assert "hit:" in again.stdout
    (ev,) = [p for p in (root / "runs").iterdir() if "-eval-" in p.name]
    ecfg = json.loads((ev / "config.json").read_text())
    assert ecfg["target"]["kind"] == "run" and ecfg["target"]["run"] == run.name
    assert ecfg["base"] == {"family": "tiny", "model": "tiny-llama", "digest": cfg["base"]["digest"]}
    rec = json.loads((ev / "eval-candidate.json").read_text())
    assert rec["model"]["base_digest"] == cfg["base"]["digest"]
    assert rec["model"]["adapter_digest"] == json.loads((run / "eval-candidate.json").read_text())["model"]["adapter_digest"]
    # The run's own held-out rows on the run's own settings: every generation is the run's, from the sample cache.
    same = _factory(root, "eval", run.name, "--suite", "json-action", "--rows", f"runs/{run.name}/heldout.jsonl",
                    "--limit", "8", "--max-new-tokens", "24", "--device", "cpu")
    assert "generations: 8 from the sample cache, 0 generated" in same.stdout
    out = _factory(root, "sql", "SELECT suite, n_rows FROM evals WHERE run_id LIKE '%-eval-%' ORDER BY suite",
                   "--format", "csv")
    assert "json-action,8" in out.stdout and "qa,3" in out.stdout


def test_eval_a_packaged_specialist(built):
    root, run = built
    _factory(root, "package", run.name, "--force")
    (spec,) = list((root / "specialists").iterdir())
    first = _factory(root, "eval", f"specialists/{spec.name}", "--suite", "evals/qa.jsonl", "--max-new-tokens", "8",
                     "--device", "cpu")
    assert f"specialist specialists/{spec.name}: tiny base" in first.stdout and "built:" in first.stdout
    again = _factory(root, "eval", spec.name, "--suite", "evals/qa.jsonl", "--max-new-tokens", "8", "--device", "cpu")
    assert "hit:" in again.stdout


def test_runs_and_specialists_that_cannot_be_evaluated_say_why_in_one_line(built):
    root, run = built
    runs = root / "runs"

    def copy_run(name):
        dest = runs / f"2000-01-01-{name}-00000000"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(run, dest)
        return dest

    untrained = copy_run("untrained")
    shutil.rmtree(untrained / "adapter")
    (untrained / "stopped").mkdir(exist_ok=True)
    (untrained / "stopped" / "train.json").write_text(json.dumps(
        {"stopped_by": "power", "verdict": {"reason": "8 held-out rows cannot resolve the criteria"}}))
    nobase = copy_run("nobase")
    cfg = json.loads((nobase / "config.json").read_text())
    cfg["stage_keys"]["base"] = "f" * 32
    (nobase / "config.json").write_text(json.dumps(cfg))
    edited = copy_run("edited")
    cfg_path = edited / "adapter" / "adapter_config.json"
    text = cfg_path.read_text()
    cfg_path.unlink()  # a hardlink into the store: replace it, never write through it
    cfg_path.write_text(text.replace("{", '{"edited": true, ', 1))
    (spec,) = list((root / "specialists").iterdir())
    broken = root / "specialists" / "broken-1"
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(spec, broken)
    (broken / "adapter_model.safetensors").unlink()
    (evalrun,) = [p for p in runs.iterdir() if "-eval-" in p.name and "qa" in (p / "config.json").read_text()][:1]
    for args, message in (
        ([untrained.name], "did not train: stage train was stopped (8 held-out rows cannot resolve the criteria)"),
        ([nobase.name], f"its base (stage base, key {'f' * 12}) is not in the store (cache/)"),
        ([edited.name], "adapter/adapter_config.json: changed since the run was made"),
        ([run.name, "--adapter", "specialists/x"], "is a run and brings its own adapter"),
        (["specialists/broken-1"], "no adapter weights (adapter_model.safetensors missing)"),
        ([evalrun.name], "an evaluation run (factory eval) holds no model of its own"),
        (["no-such-thing"], "no-such-thing: no such model directory, run or specialist"),
    ):
        r = _factory(root, "eval", *args, "--suite", "evals/qa.jsonl", ok=False)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for d in (untrained, nobase, edited, broken):
        shutil.rmtree(d)
