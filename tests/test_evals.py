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


def test_mode_switch_pairs_rows_of_another_kind_and_detects_bleed():
    rows = [row(0, skill="create"), row(1, skill="create"), row(2, answer="cat", skill="animals")]
    pairs = risk_probes.switch_pairs(rows)
    assert [p["id"] for p in pairs] == ["r2", "r2", "r0"]  # the next row of another kind, wrapping round
    assert pairs[0]["prompt"] == "request 2" and pairs[0]["expected"] == "cat"
    # Rows of one kind: the second prompt is a fixed plain request.
    alone = risk_probes.switch_pairs([row(0), row(1)])
    assert [p["id"] for p in alone] == [None, None] and alone[0]["prompt"] in risk_probes.SWITCH_PROMPTS
    # Kinds without skills: a JSON answer and a text answer differ.
    assert [p["id"] for p in risk_probes.switch_pairs([row(0), row(1, answer="cat")])] == ["r1", "r0"]

    bleed = risk_probes.is_bleed
    assert bleed(A, "name an animal", "cat", A)  # the first answer again
    assert bleed(A, "name an animal", "cat", '{"action": "list", "args": {"day": "monday"}}')  # its form
    assert not bleed(A, "name an animal", "cat", "cat")
    other = '{"action":"list","args":{"day":"monday"}}'
    assert not bleed(A, "what is on monday", other, other)  # a JSON task of another action: its own answer
    assert bleed(A, "what is on monday", other, A)
    assert not bleed(A, "what is on monday", A, A)  # the first answer is the second's right answer
    assert bleed("long run", "reverse: abc", "cba", "cba long run")
    assert not bleed("long run", "copy: long run", "long run", "long run")  # the second's own answer
    assert not bleed("5", "add 2 3", "5", "15")  # too short to tell from chance

    rows = [row(0), row(1, answer="cat")]
    switch = [{**p, "output": o} for p, o in zip(risk_probes.switch_pairs(rows), ["cat", A])]
    out = risk_probes.score(rows, [A, "cat"], ["x", "y"], [3, 3], max_new=32, switch=switch)
    assert [s["fields"]["mode_switch"] for s in out.samples] == [False, False]
    switch[0]["output"] = A  # the text question answered with the first JSON action
    out = risk_probes.score(rows, [A, "cat"], ["x", "y"], [3, 3], max_new=32, switch=switch)
    assert [s["fields"]["mode_switch"] for s in out.samples] == [True, False]
    assert out.scores["mode_switch_rate"].value == 0.5
    assert out.scores["mode_switch_rate"].model_extra["higher_is_better"] is False
    assert out.samples[0]["switch_id"] == "r1" and out.samples[0]["switch_output"] == A
    assert out.samples[0]["values"]["mode_switch_rate"] == 1.0 and not out.samples[0]["correct"]
    assert out.scores["clean_rate"].value == 0.5
    for sample in out.samples:
        SampleRecord.model_validate(sample)


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
def toy_base(tmp_path_factory):
    pytest.importorskip("torch")
    from factory.ml.toymodels import save_toy_model

    return save_toy_model(tmp_path_factory.mktemp("toy") / "base", "llama")


@pytest.fixture(scope="module")
def toy_family(toy_base):
    from toyfamily import ToyFamily

    return ToyFamily()


def _write_rows(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_stage_writes_record_and_samples(tmp_path, toy_family, toy_base):
    from factory.evaluate import build_eval

    reg = SimpleNamespace(families=Registry("family"), suites=Registry("suite"))
    reg.families.register(toy_family)
    evals.register_eval_suites(reg.suites.register)
    reg.suites.register(BrokenSuite())
    heldout = _write_rows(tmp_path / "heldout.jsonl", [row(i) for i in range(6)])
    br = _write_rows(tmp_path / "breadth.jsonl", [row(i, answer="abc", skill="copy") for i in range(5)])
    (tmp_path / "train" / "adapter").mkdir(parents=True)
    (tmp_path / "train" / "adapter" / "adapter_config.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    ctx = SimpleNamespace(
        stage="eval-candidate", out=out, log=lambda m: None, registry=reg,
        config={"role": "candidate", "family": "toy",
                "suites": ["json-action", "breadth", "perplexity", "risk-probes", "broken"],
                "settings": {"batch_size": 4, "max_new_tokens": 8}, "load": {}},
        inputs={"base": toy_base, "heldout": heldout, "breadth": br, "adapter": tmp_path / "train"},
        input_digests={"base": "B" * 32, "heldout": "H" * 32, "breadth": "R" * 32, "adapter": "T" * 32},
    )
    toy_family.loads.clear()
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
    # The mode-switch probe ran its second prompts in a fresh process that loaded the family by name.
    probes = read_jsonl(out / by["risk-probes"].samples.path, SampleRecord)
    assert by["risk-probes"].scores["mode_switch_rate"].n == 6
    assert all("mode_switch" in s.fields and s.model_extra["switch_prompt"] for s in probes)
    assert by["json-action"].data_digest == hashing.digest_json([row(i) for i in range(6)])


def test_suite_without_rows_is_a_failed_result(tmp_path):
    from factory.evaluate import run_suite

    res = run_suite(json_action.JsonActionSuite(), lm=None, rows=[], settings={}, role="baseline", out=tmp_path)
    assert res.status == "failed" and "no heldout rows" in res.error
    assert not (tmp_path / "samples").exists()


def test_a_fresh_process_generates_what_this_one_does(toy_family, toy_base):
    from factory.errors import FactoryError
    from factory.ml.fresh import generate_ids_fresh
    from factory.ml.generate import generate_ids

    lm = toy_family.load(toy_base, None, {})
    prompts = ["copy: abc", "reverse: abc", "add 2 3"]
    with pytest.raises(FactoryError, match="needs to know how the model was loaded"):
        generate_ids_fresh(lm, prompts, 6)
    lm.source = {"family": "toy", "plugin": "toyfamily", "base": str(toy_base), "adapter": None, "settings": {}}
    ids, reasons = generate_ids_fresh(lm, prompts, 6, batch_size=2)
    assert ids == generate_ids(lm, prompts, 6, batch_size=3) and len(reasons) == 3
    lm.source = {**lm.source, "family": "nosuch", "plugin": None}
    with pytest.raises(FactoryError, match=r"fresh process failed \(exit 2\): factory: unknown family 'nosuch'"):
        generate_ids_fresh(lm, prompts, 6)
