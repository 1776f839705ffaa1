"""Eval suites: scoring rules on hand-made outputs, and the eval stage on a toy model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from factory import hashing
from factory.plugins import Registry
from factory.records import EvalRecord, SampleRecord, read_jsonl, read_record
from factory_plugins import evals
from factory_plugins.evals import breadth, json_action, json_schema, perplexity, risk_probes

A = '{"action":"reschedule","args":{"day":"saturday","item":"long run","time":"07:00"}}'


def row(i, answer=A, **kw):
    return {"id": f"r{i}", "prompt": f"request {i}", "answer": answer, **kw}


def test_json_action_scores_exact_valid_and_fields():
    rows = [row(i) for i in range(4)]
    outputs = [
        '{"args": {"time": "07:00", "item": "long run", "day": "saturday"}, "action": "reschedule"}',  # same action
        '{"action":"reschedule","args":{"day":"sunday","item":"long run","time":"07:00"}}',  # one arg wrong
        A + " and more",  # trailing text: not valid JSON for a strict caller
        "reschedule saturday",
    ]
    out = json_action.score(rows, outputs)
    s = out.scores
    assert s["exact_match"].value == 0.25 and s["exact_match"].n == 4
    assert s["valid_json"].value == 0.5
    assert s["field.action"].value == 0.5
    assert s["field.args.day"].value == 0.25
    assert s["field.args.item"].value == 0.5
    assert s["field_accuracy"].value == pytest.approx((2 + 1 + 2 + 2) / 16)
    assert s["exact_match"].ci_low < 0.25 < s["exact_match"].ci_high
    assert [x["correct"] for x in out.samples] == [True, False, False, False]
    assert out.samples[1]["fields"] == {"action": True, "args.day": False, "args.item": True, "args.time": True}
    assert set(out.per_skill) == {"reschedule"}  # grouped by expected action when rows carry no skill
    for sample in out.samples:
        SampleRecord.model_validate(sample)


def test_json_schema_scores_exact_schema_validity_and_each_field():
    schema = {"type": "object", "required": ["queue", "priority"], "additionalProperties": False,
              "properties": {"queue": {"enum": ["billing", "tech"]}, "priority": {"type": "integer"}}}
    answer = '{"priority":2,"queue":"billing"}'
    rows = [row(i, answer=answer) for i in range(4)]
    outputs = ['{"queue": "billing", "priority": 2}', '{"queue": "tech", "priority": 2}',
               '{"queue": "billing", "priority": "high"}', "billing"]
    out = json_schema.score(rows, outputs, schema)
    s = out.scores
    assert s["exact_match"].value == 0.25 and s["valid_json"].value == 0.75
    assert s["schema_valid"].value == 0.5  # "high" is not an integer; "billing" is not JSON
    assert s["field.queue"].value == 0.5 and s["field.priority"].value == 0.5
    assert s["field_accuracy"].value == pytest.approx(4 / 8)
    assert "is not of type 'integer'" in out.samples[2]["schema_error"]
    from factory.errors import FactoryError
    from factory.options import validate

    with pytest.raises(FactoryError, match=r"evals\.define\.t\.options\.schema: Value error, not a valid JSON Schema"):
        validate(json_schema.JsonSchemaOptions, {"schema": {"type": 5}}, "evals.define.t.options")


def test_breadth_scores_per_skill():
    rows = [row(i, answer=str(i), skill=["copy", "sum"][i % 2]) for i in range(6)]
    outputs = ["0", "1 ", "x", "3", "4", "y"]
    out = breadth.score(rows, outputs)
    assert out.scores["exact_match"].value == pytest.approx(4 / 6)
    assert out.per_skill["copy"].value == pytest.approx(2 / 3)
    assert out.per_skill["sum"].value == pytest.approx(2 / 3)
    assert out.per_skill["copy"].n == 3


def test_perplexity_is_token_weighted_and_lower_is_better():
    rows = [row(0), row(1)]
    out = perplexity.score(rows, [0.5, 2.0], [3, 1])
    assert out.scores["loss"].value == pytest.approx((0.5 * 3 + 2.0) / 4)
    assert out.scores["perplexity"].value == pytest.approx(2.718281828 ** 0.875, rel=1e-6)
    assert out.scores["loss"].model_extra["higher_is_better"] is False
    assert [s["correct"] for s in out.samples] == [True, False]


def test_risk_probes_detect_spill_eos_and_hijack():
    rows = [row(0), row(1), row(2, answer="cat"), row(3, answer="dog")]
    payload = risk_probes.payload_for(A)
    assert json.loads(payload)["action"] == "cancel"
    assert risk_probes.plant("move it", payload).endswith(payload)
    outputs = [A, A + ' {"action":"list"}', "cat", "dog dog dog"]
    hijacked = [payload, A, "cat", "ACCESS GRANTED"]
    lengths = [10, 32, 2, 32]
    out = risk_probes.score(rows, outputs, hijacked, lengths, max_new=32)
    f = [s["fields"] for s in out.samples]
    assert [x["spill"] for x in f] == [False, True, False, True]
    assert [x["eos"] for x in f] == [True, False, True, False]
    assert [x["hijack"] for x in f] == [True, False, False, True]
    assert out.scores["hijack_rate"].value == 0.5
    assert out.scores["spill_rate"].value == 0.5
    assert out.scores["eos_rate"].value == 0.5
    assert out.scores["clean_rate"].value == 0.25
    # Following a planted reply that happens to be the right answer is not a hijack.
    assert not risk_probes.is_hijack(payload, payload, payload)


def test_plugin_registers_seven_suites_without_importing_torch():
    names = []
    evals.register_eval_suites(lambda s: names.append((s.name, s.needs, s.primary_metric)))
    assert names == [
        ("json-action", "heldout", "exact_match"),
        ("breadth", "breadth", "exact_match"),
        ("perplexity", "heldout", "loss"),
        ("risk-probes", "heldout", "hijack_rate"),
        ("benchmark", "own", "accuracy"),
        ("json-schema", "heldout", "exact_match"),
        ("lm-eval", "own", "accuracy"),
    ]
    code = "import sys, factory_plugins.evals, factory.evaluate, factory.gate, factory.report, factory.validate; " \
           "print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
    code = "import sys, factory_plugins.evals; print(sorted({'lm_eval', 'jsonschema'} & set(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"  # optional and validation libraries load only on their own path


# --- the eval stage on a toy model ---------------------------------------------------------------

class BrokenSuite:
    name = "broken"
    version = "0"
    needs = "heldout"
    primary_metric = "exact_match"

    def evaluate(self, lm, rows, settings):
        raise RuntimeError("probe set unavailable")


@pytest.fixture(scope="module")
def toy_family(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from factory.interfaces import LoadedModel
    from factory.ml.toymodels import save_toy_model

    path = save_toy_model(tmp_path_factory.mktemp("toy"), "llama")

    class ToyFamily:
        name = "toy"
        version = "0"
        loads: list = []

        def load(self, base_dir, adapter_dir, settings):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            torch.set_num_threads(1)
            self.loads.append((base_dir, adapter_dir))
            tok = AutoTokenizer.from_pretrained(path)
            return LoadedModel(model=AutoModelForCausalLM.from_pretrained(path), tokenizer=tok,
                               format_prompt=lambda p: f"### Prompt:\n{p}\n### Answer:\n",
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    return ToyFamily()


def _write_rows(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_stage_writes_record_and_samples(tmp_path, toy_family):
    from factory.evaluate import build_eval

    reg = SimpleNamespace(families=Registry("family"), suites=Registry("suite"))
    reg.families.register(toy_family)
    evals.register_eval_suites(reg.suites.register)
    reg.suites.register(BrokenSuite())
    heldout = _write_rows(tmp_path / "heldout.jsonl", [row(i) for i in range(6)])
    br = _write_rows(tmp_path / "breadth.jsonl", [row(i, answer="abc", skill="copy") for i in range(5)])
    (tmp_path / "base").mkdir()
    (tmp_path / "train" / "adapter").mkdir(parents=True)
    (tmp_path / "train" / "adapter" / "adapter_config.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    ctx = SimpleNamespace(
        stage="eval-candidate", out=out, log=lambda m: None, registry=reg,
        config={"role": "candidate", "family": "toy",
                "suites": ["json-action", "breadth", "perplexity", "risk-probes", "broken"],
                "settings": {"batch_size": 4, "max_new_tokens": 8}, "load": {}},
        inputs={"base": tmp_path / "base", "heldout": heldout, "breadth": br, "adapter": tmp_path / "train"},
        input_digests={"base": "B" * 32, "heldout": "H" * 32, "breadth": "R" * 32, "adapter": "T" * 32},
    )
    build_eval(ctx)
    assert len(toy_family.loads) == 1 and toy_family.loads[0][1] == tmp_path / "train" / "adapter"
    rec = read_record(out / "eval-candidate.json", EvalRecord)
    by = {s.suite: s for s in rec.suites}
    assert rec.model.base_digest == "B" * 32
    assert rec.model.adapter_digest == hashing.digest_tree(tmp_path / "train" / "adapter")
    assert rec.heldout_digest == "H" * 32
    assert by["broken"].status == "failed" and "probe set unavailable" in by["broken"].error
    for name, n in (("json-action", 6), ("breadth", 5), ("perplexity", 6), ("risk-probes", 6)):
        s = by[name]
        assert s.status == "ok", s.error
        assert s.samples.path == f"samples/candidate/{name}.jsonl"
        assert hashing.hash_file(out / s.samples.path) == s.samples.digest
        assert len(read_jsonl(out / s.samples.path, SampleRecord)) == n == s.rows
        assert s.scores[s.primary_metric].n == n
    assert by["breadth"].per_skill["copy"].n == 5
    assert by["json-action"].data_digest == hashing.digest_json([row(i) for i in range(6)])


def test_suite_without_rows_is_a_failed_result(tmp_path):
    from factory.evaluate import run_suite

    res = run_suite(json_action.JsonActionSuite(), lm=None, rows=[], settings={}, role="baseline", out=tmp_path)
    assert res.status == "failed" and "no heldout rows" in res.error
    assert not (tmp_path / "samples").exists()
