"""The DPO recipe's graph on the real tiny family, at a very small budget, through doit.

About a minute: a 40-step base, a 20-step SFT step promoted by a bar it clears, a 10-step DPO step on
perturbed-pairs near misses whose promotion bar it cannot clear at this size, and a placed merge-lora
stage. What is checked is the machinery with real stage kinds: the SFT step's check passes and DPO
trains on top of it, DPO's check fails and stops the candidate's evaluation, the decision names the
step and the criterion, the merged model matches base + adapter, and the run directory holds the plan.
"""

import json
import os
import re
import shutil
import subprocess
import sys

from conftest import REPO


def test_dpo_recipe_runs_its_steps_checks_and_placed_stage_on_the_tiny_family(tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(REPO / "recipes" / "pace-planner", root / "recipes" / "pace-planner")
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    text = (REPO / "recipes" / "pace-planner-dpo.yaml").read_text()
    text = text.replace("base: {family: tiny, model: tiny-llama, options: {}}",
                        "base: {family: tiny, model: tiny-llama, options: {steps: 40, eval_rows: 16}}")
    text = text.replace("    replay: 0.35\n    promote: {json-action.valid_json: 0.98, risk-probes.eos_rate: 0.98}",
                        "    replay: 0.35\n    steps: 20\n    promote: {json-action.valid_json: 0.0}")
    text = text.replace("    data: near-misses\n", "    data: near-misses\n    steps: 10\n")
    text = re.sub(r"extra: \[perplexity, risk-probes\]\}", "extra: [perplexity, risk-probes], limit: 16}", text)
    text += ("stages:\n  merged:\n    kind: merge-lora\n"
             "    inputs: {base: base, adapter: train-sft, rows: 'dataset:heldout.jsonl'}\n"
             "    options: {check_rows: 8}\n")
    # 16 rows cannot resolve a 3-point limit, and a 40-step base scores about 0 on breadth, so no drop can
    # show: the power check would block before training, as it should. This smoke gates the primary only.
    text = text.replace("criteria: {primary_min: 0.95, breadth_drop_max_pp: 3.0}", "criteria: {primary_min: 0.95}")
    assert "steps: 40" in text and "steps: 20" in text and "steps: 10" in text and "limit: 16" in text
    assert "max_pp" not in text
    (root / "recipes" / "steps.yaml").write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}
    env["FACTORY_PROGRESS"] = "0"

    def run(*cmd):
        r = subprocess.run([sys.executable, "-m", *cmd], cwd=root, env=env, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r

    run("doit", "recipe:steps")
    (run_dir,) = [p for p in (root / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    plan = json.loads((run_dir / "training_plan.json").read_text())
    assert [(s["name"], s["method"], s["status"]) for s in plan["steps"]] == [
        ("sft", "sft-lora", "trained"), ("dpo", "dpo-lora", "trained")]
    assert plan["steps"][0]["promote"]["passed"] is True
    assert plan["steps"][1]["promote"]["passed"] is False
    assert plan["steps"][1]["starts_from"] == "train-sft" and plan["steps"][1]["data"] == "near-misses"
    decision = json.loads((run_dir / "decision.json").read_text())
    assert decision["decision"] == "rework"
    assert decision["reason"].startswith("step dpo not promoted: ")
    assert "json-action.exact_match" in decision["reason"] and "< 0.95" in decision["reason"]
    assert "promote.dpo.json-action.exact_match" in decision["blocked_by"]
    assert "train.1." in decision["next_action"]
    assert (run_dir / "stopped" / "eval-candidate.json").is_file()
    for step in ("sft", "dpo"):
        assert (run_dir / "steps" / step / "train.log").is_file()
        assert (run_dir / "steps" / step / "verdict.json").is_file()
    dpo_log = [json.loads(x) for x in (run_dir / "steps" / "dpo" / "train.log").read_text().splitlines()]
    assert len(dpo_log) == 10 and "reward_margin" in dpo_log[-1]
    merged = json.loads((run_dir / "stages" / "merged" / "merge.json").read_text())
    assert merged["max_abs_logit_diff"] <= merged["atol"] and merged["greedy_agreement"] == 1.0
    assert (run_dir / "stages" / "merged" / "model" / "model.safetensors").is_file()
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    status = {e["stage"]: e["status"] for e in events}
    assert status["train-dpo"] == "built" and status["promote-dpo"] == "built"
    assert status["eval-candidate"] == "stopped" and status["merged"] == "built"
    r = run("doit", "recipe:steps")
    assert "-- recipe:steps" in r.stdout
