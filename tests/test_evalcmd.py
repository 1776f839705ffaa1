"""`factory eval`: any local model directory, suites from files, cached in the store, a run in the index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from factory.errors import FactoryError  # noqa: E402
from factory.evalcmd import parse_suite, run_eval  # noqa: E402
from factory.ml.toymodels import save_toy_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_registries():
    """run_eval loads the process-wide registries; later tests load their own plugins."""
    from factory import plugins

    yield
    plugins.reset()


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    (root / "recipes").mkdir()
    save_toy_model(root / "models" / "g", "gpt2", positions=64, init_std=0.02)
    (root / "evals").mkdir()
    (root / "evals" / "qa.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"copy: {w}", "expected": w}) + "\n"
                for i, w in enumerate(["ab", "cd", "ef", "gh"])))
    (root / "evals" / "mc.csv").write_text("prompt,expected,choices\nsky,blue,blue|red\ngrass,green,green|red\n")
    return root


def _factory(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FACTORY_PROGRESS": "0", "FACTORY_ROOT": str(root)}
    env.pop("FACTORY_LOAD_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "factory.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_suite_arguments():
    root = Path("/p")
    assert parse_suite("mc=benchmark:path=evals/mc.csv,scorer=choice,ignore_case=true", root) == {
        "name": "mc", "suite": "benchmark", "options": {"path": "evals/mc.csv", "scorer": "choice", "ignore_case": True}}
    assert parse_suite("json-action", root) == {"name": "json-action", "suite": "json-action", "options": {}}
    with pytest.raises(FactoryError, match="no such benchmark file"):
        parse_suite("evals/none.jsonl", root)


def test_eval_a_model_directory_twice_second_is_a_hit_and_lands_in_the_index(proj):
    torch.set_num_threads(1)
    first = run_eval(proj, "models/g", ["evals/qa.jsonl", "mc=benchmark:path=evals/mc.csv,scorer=choice"],
                     max_new_tokens=4, device="cpu")
    assert not first["hit"] and first["role"] == "baseline"
    run = first["run"]
    assert run.name.endswith(f"-eval-g-{first['key'][:8]}")
    by = {s["suite"]: s for s in first["record"]["suites"]}
    assert set(by) == {"qa", "mc"} and all(s["status"] == "ok" for s in by.values())
    assert (run / "samples" / "baseline" / "qa.jsonl").is_file()
    assert json.loads((run / "run_manifest.json").read_text())["eval_only"] is True
    again = run_eval(proj, "models/g", ["evals/qa.jsonl", "mc=benchmark:path=evals/mc.csv,scorer=choice"],
                     max_new_tokens=4, device="cpu")
    assert again["hit"] and again["run"] == run and again["key"] == first["key"]
    # A changed benchmark file is a new key.
    (proj / "evals" / "qa.jsonl").write_text((proj / "evals" / "qa.jsonl").read_text() + json.dumps(
        {"id": "q9", "prompt": "copy: ij", "expected": "ij"}) + "\n")
    changed = run_eval(proj, "models/g", ["evals/qa.jsonl"], max_new_tokens=4, device="cpu")
    assert not changed["hit"] and changed["key"] != first["key"]

    out = _factory(proj, "sql", "SELECT run_id, suite, n_rows FROM evals ORDER BY run_id, suite", "--format", "csv")
    assert out.returncode == 0, out.stderr
    assert f"{run.name},mc,2" in out.stdout and f"{run.name},qa,4" in out.stdout


def test_the_command_line_reports_and_rejects_bad_input(proj, tmp_path):
    ok = _factory(proj, "eval", "models/g", "--suite", "evals/mc.csv", "--max-new-tokens", "2", "--device", "cpu")
    assert ok.returncode == 0, ok.stderr
    assert "mc: accuracy" in ok.stdout
    (proj / "empty").mkdir()
    (proj / "empty" / "config.json").write_text("{}")
    (proj / "evals" / "bad.jsonl").write_text('{"prompt": "a", "expected": "b"}\n{"prompt": "c"\n')
    before = sorted(p.name for p in (proj / "runs").iterdir())
    for args, message in (
        (["empty", "--suite", "evals/mc.csv"], "empty: no model weights"),
        (["nowhere", "--suite", "evals/mc.csv"], "nowhere: no such model directory"),
        (["models/g"], "name at least one --suite"),
        (["models/g", "--suite", "json-action"], "reads heldout rows; give them with --rows"),
        (["models/g", "--suite", "x=benchmark:path=evals/mc.csv,scorr=1"], "--suite x: options.scorr: unknown option"),
        (["models/g", "--suite", "nosuch"], "nosuch"),
        (["models/g", "--suite", "evals/bad.jsonl"], "--suite bad: "),
    ):
        r = _factory(proj, "eval", *args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        if "bad.jsonl" in args[-1]:
            assert "bad.jsonl:2: not a JSON object" in r.stderr  # the file and its line
    # Nothing half-written: no run directory (and so nothing in the index) for any of them.
    assert sorted(p.name for p in (proj / "runs").iterdir()) == before


def _adapter(model_dir: Path, dest: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, lora_alpha=64, target_modules=["c_attn"], init_lora_weights=False))
    model.save_pretrained(dest)
    return dest


def test_a_changed_adapter_never_reuses_an_old_answer(proj, capsys):
    torch.set_num_threads(1)
    a = _adapter(proj / "models" / "g", proj / "adapters" / "a", seed=1)
    first = run_eval(proj, "models/g", ["evals/mc.csv", "evals/qa.jsonl"], adapter="adapters/a", max_new_tokens=4,
                     device="cpu")
    assert not first["hit"] and first["role"] == "candidate"
    assert first["run"].name.endswith(f"-eval-g-a-{first['key'][:8]}")
    capsys.readouterr()
    # The same directory, other weights: a new key, and no generation comes from the sample cache.
    _adapter(proj / "models" / "g", a, seed=2)
    second = run_eval(proj, "models/g", ["evals/mc.csv", "evals/qa.jsonl"], adapter="adapters/a", max_new_tokens=4,
                      device="cpu")
    assert not second["hit"] and second["key"] != first["key"]
    # Both files are generated and exact-matched: every row of each, none from the first adapter's answers.
    n = len((proj / "evals" / "qa.jsonl").read_text().splitlines()) + len((proj / "evals" / "mc.csv").read_text().splitlines()) - 1
    assert f"generations: 0 from the sample cache, {n} generated" in capsys.readouterr().out
    assert second["record"]["model"]["adapter_digest"] != first["record"]["model"]["adapter_digest"]
