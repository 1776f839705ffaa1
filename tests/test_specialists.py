"""Packaging specialists: the package stage, publishing, `factory package`, `factory verify`."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from factory import index, specialists
from factory.records import Artifact, read_record
from factory.stages import BuildContext

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from make_runs import make_runs  # noqa: E402

CHAT = "{% for m in messages %}{{ m['content'] }}\n=> {% endfor %}"
KEY = "0123456789abcdef" * 2


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory) -> Path:
    """Upstream stage outputs: a tiny random Llama base, a LoRA adapter on it, and the records."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from factory.ml.toymodels import save_toy_model

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("inputs")
    save_toy_model(d / "base", hidden=32, layers=1, heads=2, chat_template=CHAT)
    model = AutoModelForCausalLM.from_pretrained(d / "base")
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))  # random B: the adapter matters
    peft_model.save_pretrained(d / "train" / "adapter")
    (d / "train" / "train.json").write_text(json.dumps({"method": "sft-lora", "steps": 10, "final_loss": 0.5,
                                                        "seconds": 1.0, "device": "cpu", "params": {"lr": 0.005}}))
    (d / "dataset").mkdir()
    (d / "dataset" / "dataset.json").write_text(json.dumps({
        "sources": [{"kind": "jsonl", "path": "pace-planner/traces.jsonl", "rows": 50, "digest": "d" * 32}],
        "counts": {"input_rows": 50, "train_rows": 38, "heldout_rows": 10, "dropped_rows": 2,
                   "dropped_by_reason": {"duplicate": 2}},
        "splits": {"train": {"path": "train.jsonl", "digest": "t" * 32},
                   "heldout": {"path": "heldout.jsonl", "digest": "h" * 32}}}))
    for role, value in (("baseline", 0.1), ("candidate", 0.97)):
        (d / f"eval-{role}").mkdir()
        (d / f"eval-{role}" / f"eval-{role}.json").write_text(json.dumps({
            "role": role, "model": {"base_digest": "b" * 32},
            "suites": [{"suite": "json-action", "version": "1", "primary_metric": "exact_match",
                        "scores": {"exact_match": {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.02,
                                                   "n": 10}}}]}))
    return d


def _decision(verdict: str) -> dict:
    return {"decision": verdict, "reason": "every criterion passed" if verdict == "ship" else "breadth fell 4.2 points",
            "criteria": [
                {"name": "primary_min", "metric": "json-action.exact_match", "threshold": 0.95, "baseline": 0.1,
                 "candidate": 0.97, "delta": 0.87, "passed": True},
                {"name": "breadth_drop_max_pp", "metric": "breadth.exact_match", "threshold": 3.0, "baseline": 0.86,
                 "candidate": 0.82 if verdict != "ship" else 0.87, "delta": -0.042 if verdict != "ship" else 0.01,
                 "passed": verdict == "ship"}]}


def _ctx(stage_inputs: Path, tmp_path: Path, verdict: str, force: bool = False) -> BuildContext:
    decide = tmp_path / "decide"
    decide.mkdir(parents=True)
    (decide / "decision.json").write_text(json.dumps(_decision(verdict)))
    inputs = {"decide": decide, "train": stage_inputs / "train", "base": stage_inputs / "base",
              "dataset": stage_inputs / "dataset", "eval-baseline": stage_inputs / "eval-baseline",
              "eval-candidate": stage_inputs / "eval-candidate"}
    out = tmp_path / "out"
    out.mkdir()
    return BuildContext(
        recipe=None, stage="package", kind="package", key=KEY,
        config={"recipe": "pace-planner", "goal": "Plan a week of running from a training log.", "owner": "ml",
                "base_model": "tiny-llama", "family": "tiny", "method": "sft-lora", "force": force},
        inputs=inputs, out=out, root=tmp_path, registry=None, input_digests={"base": "b" * 32}, log=lambda m: None)


def _logits(base_dir: Path, adapter_dir: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()
    tok = AutoTokenizer.from_pretrained(adapter_dir if (adapter_dir / "tokenizer.json").exists() else base_dir)
    ids = tok(["plan 5 km easy\n=> "], return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_package_stage_writes_a_specialist_that_loads_with_stock_peft(stage_inputs, tmp_path):
    import torch

    ctx = _ctx(stage_inputs, tmp_path, "ship")
    specialists.build_package(ctx)
    art = read_record(ctx.out / "artifact.json", Artifact)
    assert art.shipped and art.base_digest == "b" * 32 and art.tokenizer_digest
    assert [a.path for a in art.adapter] == ["adapter/adapter_model.safetensors", "adapter/adapter_config.json"]

    spec = ctx.out / "specialist"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "README.md", "manifest.json"):
        assert (spec / name).is_file(), name
    assert (spec / "adapter_model.safetensors").read_bytes() == (
        stage_inputs / "train" / "adapter" / "adapter_model.safetensors").read_bytes()

    packaged = _logits(stage_inputs / "base", spec)
    original = _logits(stage_inputs / "base", stage_inputs / "train" / "adapter")
    plain = _logits_base(stage_inputs / "base")
    assert torch.equal(packaged, original)
    assert not torch.allclose(packaged, plain)  # the adapter is really applied

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi\n=> "

    card = (spec / "README.md").read_text()
    assert "Plan a week of running" in card and "b" * 32 in card
    assert "38 train" in card and "dropped for duplicate: 2" in card
    assert "| primary_min | json-action.exact_match | 0.95 | 0.1 | 0.97 |" in card
    assert "**Decision: ship.**" in card and "Not approved" not in card
    man = json.loads((spec / "manifest.json").read_text())
    assert man["stage_keys"] == {"package": KEY} and man["inputs"] == {"base": "b" * 32}
    assert set(man["files"]) == {p.name for p in spec.iterdir()} - {"manifest.json"}


def _logits_base(base_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    ids = AutoTokenizer.from_pretrained(base_dir)(["plan 5 km easy\n=> "], return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_a_run_that_does_not_ship_gets_no_specialist_unless_forced(stage_inputs, tmp_path):
    ctx = _ctx(stage_inputs, tmp_path / "a", "rework")
    specialists.build_package(ctx)
    assert not read_record(ctx.out / "artifact.json", Artifact).shipped
    assert not (ctx.out / "specialist").exists()

    ctx = _ctx(stage_inputs, tmp_path / "b", "rework", force=True)
    specialists.build_package(ctx)
    card = (ctx.out / "specialist" / "README.md").read_text()
    assert card.splitlines()[2].startswith("> **Not approved for use.** The acceptance gate decided **rework**")
    assert json.loads((ctx.out / "specialist" / "manifest.json").read_text())["forced"] is True


def _run_with_specialist(stage_inputs: Path, root: Path, verdict: str) -> Path:
    """A run directory as the engine materializes it, with the package stage's outputs."""
    ctx = _ctx(stage_inputs, root / "build", verdict, force=False)
    specialists.build_package(ctx)
    run = root / "runs" / f"2026-07-01-pace-planner-{KEY[:8]}"
    run.mkdir(parents=True)
    if (ctx.out / "specialist").exists():
        shutil.copytree(ctx.out / "specialist", run / "specialist")
    shutil.copy(ctx.out / "artifact.json", run)
    (run / "decision.json").write_text(json.dumps(_decision(verdict)))
    (run / "config.json").write_text(json.dumps({"recipe": "pace-planner", "base": {"family": "tiny", "model": "t"},
                                                 "method": "sft-lora"}))
    (run / "run_manifest.json").write_text(json.dumps({"run_id": run.name, "recipe": "pace-planner",
                                                       "stage_keys": {"base": "1" * 32, "package": KEY}}))
    return run


def test_publish_and_verify(stage_inputs, tmp_path, capsys):
    run = _run_with_specialist(stage_inputs, tmp_path, "ship")
    dest = specialists.publish_specialist(run, tmp_path)
    assert dest == tmp_path / "specialists" / f"pace-planner-{KEY[:8]}"
    man = json.loads((dest / "manifest.json").read_text())
    assert man["run_id"] == run.name and man["stage_keys"]["base"] == "1" * 32
    assert specialists.publish_specialist(run, tmp_path) == dest  # idempotent

    assert specialists.cli_verify(str(dest)) == 0
    assert "ok" in capsys.readouterr().out

    # a changed byte, in a copy (the published files are hardlinks of the run's)
    weights = dest / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.unlink()
    weights.write_bytes(bytes(data))
    assert specialists.cli_verify(str(dest)) == 1
    err = capsys.readouterr().err
    assert "adapter_model.safetensors: changed" in err and "README.md" not in err

    (dest / "extra.bin").write_bytes(b"x")
    (dest / "README.md").unlink()
    problems = specialists.verify(dest)
    assert "README.md: missing" in problems and "extra.bin: not in the manifest" in problems


def test_cli_package_refuses_a_run_that_did_not_ship(stage_inputs, tmp_path, capsys):
    run = _run_with_specialist(stage_inputs, tmp_path, "rework")
    assert specialists.cli_package(tmp_path, run.name, None, False) == 1
    err = capsys.readouterr().err
    assert "decision is rework" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "specialists").exists()


def test_cli_package_publishes_a_shipped_run_and_the_index_lists_it(stage_inputs, tmp_path, capsys):
    run = _run_with_specialist(stage_inputs, tmp_path, "ship")
    assert specialists.cli_package(tmp_path, run.name[-8:], None, False) == 0
    assert f"pace-planner-{KEY[:8]}" in capsys.readouterr().out
    rows = index.query(tmp_path / "runs", "SELECT specialist_id, run_id, forced FROM specialists")[1]
    assert rows == [(f"pace-planner-{KEY[:8]}", run.name, False)]


def test_best_picks_the_top_shipped_run_through_the_index(tmp_path):
    make_runs(tmp_path / "runs", 120, seed=5)
    best = specialists.best_run(tmp_path, "pace-planner")
    rows = index.query(tmp_path / "runs", "SELECT run_id, primary_candidate, breadth_delta_pp FROM run_summary "
                                          "WHERE recipe = 'pace-planner' AND decision = 'ship'")[1]
    top = max(r[1] for r in rows)
    assert best in {r[0] for r in rows if r[1] == top}
    with pytest.raises(Exception, match="no runs of that recipe"):
        specialists.best_run(tmp_path, "no-such-recipe")
