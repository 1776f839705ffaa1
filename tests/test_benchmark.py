"""The `benchmark` suite: a local JSONL or CSV file, checked line by line, scored exact, by regex or by choice."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from factory.errors import FactoryError
from factory.plugins import Registry
from factory.records import EvalRecord, SampleRecord, read_jsonl, read_record
from factory_plugins import evals
from factory_plugins.evals.benchmark import BenchmarkOptions, BenchmarkSuite, load_rows, score, score_choices


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_and_csv_rows_with_ids_skills_and_choices(tmp_path):
    _jsonl(tmp_path / "b" / "q.jsonl", [{"prompt": "2+2", "expected": 4, "skill": "sum"},
                                        {"id": "x7", "prompt": "capital of France", "expected": "Paris"}])
    rows = load_rows(BenchmarkOptions(path="b/q.jsonl"), tmp_path)
    assert rows == [{"id": "line-1", "prompt": "2+2", "answer": "4", "skill": "sum"},
                    {"id": "x7", "prompt": "capital of France", "answer": "Paris", "skill": None}]
    (tmp_path / "mc.csv").write_text('prompt,expected,choices,skill\n"sky, by day",blue,blue|green|red,colour\n'
                                     "grass,green,blue|green,\n")
    rows = load_rows(BenchmarkOptions(path="mc.csv", scorer="choice"), tmp_path)
    assert [r["id"] for r in rows] == ["line-2", "line-3"]
    assert rows[0]["prompt"] == "sky, by day" and rows[0]["choices"] == ["blue", "green", "red"]
    assert rows[1]["skill"] is None


@pytest.mark.parametrize("text, opts, message", [
    ('{"prompt": "a", "expected": "b"}\n{"prompt": "a", "expected": \n', {}, r"q\.jsonl:2: not a JSON object"),
    ('{"prompt": "a"}\n', {}, r"q\.jsonl:1: field 'expected' is missing or empty"),
    ('["a", "b"]\n', {}, r"q\.jsonl:1: a row must be a JSON object"),
    ('{"id": 1, "prompt": "a", "expected": "b"}\n\n{"id": 1, "prompt": "c", "expected": "d"}\n', {},
     r"q\.jsonl:3: id '1' repeats line 1"),
    ('{"prompt": "a", "expected": "b"}\n', {"scorer": "choice"}, r"q\.jsonl:1: the choice scorer needs choices"),
    ('{"prompt": "a", "expected": "b", "choices": ["c", "d"]}\n', {"scorer": "choice"}, r"expected 'b' is not one of"),
    ('{"prompt": "a", "expected": "(b"}\n', {"scorer": "regex"}, r"q\.jsonl:1: expected is not a regular expression"),
    ("", {}, r"q\.jsonl: no rows"),
])
def test_bad_files_name_the_file_and_line(tmp_path, text, opts, message):
    (tmp_path / "q.jsonl").write_text(text)
    with pytest.raises(FactoryError, match=message):
        load_rows(BenchmarkOptions(path="q.jsonl", **opts), tmp_path)


def test_bad_csv_and_missing_file(tmp_path):
    (tmp_path / "q.csv").write_text("prompt,expected\na,b\nc,d,e\n")
    with pytest.raises(FactoryError, match=r"q\.csv:3: more cells than the header"):
        load_rows(BenchmarkOptions(path="q.csv"), tmp_path)
    with pytest.raises(FactoryError, match=r"nothere\.jsonl: benchmark file not found"):
        load_rows(BenchmarkOptions(path="nothere.jsonl"), tmp_path)
    (tmp_path / "q.txt").write_text("x")
    with pytest.raises(FactoryError, match="set options.format"):
        load_rows(BenchmarkOptions(path="q.txt"), tmp_path)


def test_exact_regex_and_choice_scoring():
    rows = [{"id": str(i), "prompt": "p", "answer": a, "skill": s}
            for i, (a, s) in enumerate([("Paris", "geo"), ("4", "sum"), ("Paris", "geo")])]
    outs = [" Paris\n", "four", "paris"]
    assert [s["correct"] for s in score(rows, outs, BenchmarkOptions(path="x")).samples] == [True, False, False]
    loose = score(rows, outs, BenchmarkOptions(path="x", ignore_case=True))
    assert loose.scores["accuracy"].value == pytest.approx(2 / 3) and loose.per_skill["geo"].value == 1.0
    rx = [{"id": "a", "prompt": "p", "answer": r"\d+ (apples|pears)"}]
    assert score(rx, ["12 pears"], BenchmarkOptions(path="x", scorer="regex")).samples[0]["correct"]
    assert not score(rx, ["I have 12 pears"], BenchmarkOptions(path="x", scorer="regex")).samples[0]["correct"]
    assert score(rx, ["I have 12 pears"], BenchmarkOptions(path="x", scorer="regex", match="search")).samples[0]["correct"]
    mc = [{"id": "a", "prompt": "p", "answer": "green", "choices": ["blue", "green"]},
          {"id": "b", "prompt": "p", "answer": "blue", "choices": ["blue", "green"]}]
    out = score_choices(mc, [[1.5, 0.2], [float("inf"), 0.1]])  # a choice the context cut away never wins
    assert [s["output"] for s in out.samples] == ["green", "green"]
    assert out.scores["accuracy"].value == 0.5 and out.samples[1]["choice_losses"] == [None, 0.1]
    for s in out.samples:
        SampleRecord.model_validate(s)


def test_suite_declares_its_data_options_and_files():
    names = []
    evals.register_eval_suites(lambda s: names.append(s.name))
    assert "benchmark" in names
    suite = BenchmarkSuite()
    assert suite.needs == "own" and suite.Options is BenchmarkOptions
    assert suite.files({"path": "evals/q.jsonl", "scorer": "exact"}, Path("/p")) == ["evals/q.jsonl"]


# --- instances in an eval stage, on a toy model ----------------------------------------------

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from factory.interfaces import LoadedModel
    from factory.ml.toymodels import save_toy_model

    path = save_toy_model(tmp_path_factory.mktemp("toy"), "llama")

    class ToyFamily:
        name = "toy"
        version = "0"
        loads = 0

        def load(self, base_dir, adapter_dir, settings):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            torch.set_num_threads(1)
            ToyFamily.loads += 1
            tok = AutoTokenizer.from_pretrained(path)
            return LoadedModel(model=AutoModelForCausalLM.from_pretrained(path), tokenizer=tok,
                               format_prompt=lambda p: f"### Prompt:\n{p}\n### Answer:\n",
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    return ToyFamily


def _ctx(root: Path, family, suites, settings=None):
    reg = SimpleNamespace(families=Registry("family"), suites=Registry("suite"))
    reg.families.register(family())
    evals.register_eval_suites(reg.suites.register)
    (root / "base").mkdir(exist_ok=True)
    out = root / "out"
    out.mkdir(exist_ok=True)
    return SimpleNamespace(
        stage="eval-baseline", out=out, root=root, log=lambda m: None, registry=reg,
        config={"role": "baseline", "family": "toy", "suites": suites,
                "settings": {"batch_size": 4, "max_new_tokens": 6, **(settings or {})}, "load": {}},
        inputs={"base": root / "base"}, input_digests={"base": "B" * 32},
    )


def _instance(name, path, **options):
    return {"name": name, "suite": "benchmark", "version": "1.0", "options": {"path": path, **options}}


def _qa_and_mc(root: Path, qa: str, mc: str, qa_rows: int, mc_rows: int, choices: str) -> list[dict]:
    """Two benchmark files (exact-match rows, multiple-choice rows answered "yes") and an instance of each."""
    _jsonl(root / "evals" / "qa.jsonl", [{"prompt": f"q{i}", "expected": f"a{i}", "skill": "qa"} for i in range(qa_rows)])
    (root / "evals" / "mc.csv").write_text("id,prompt,expected,choices\n"
                                           + "".join(f"m{i},pick {i},yes,{choices}\n" for i in range(mc_rows)))
    return [_instance(qa, "evals/qa.jsonl"), _instance(mc, "evals/mc.csv", scorer="choice")]


def test_instances_run_on_their_own_files_and_are_recorded_by_name(tmp_path, toy):
    from factory.evaluate import build_eval

    suites = _qa_and_mc(tmp_path, "qa", "mc", qa_rows=5, mc_rows=4, choices="yes|no|maybe")
    suites.append(_instance("breadth-free", "evals/qa.jsonl", scorer="regex", match="search"))
    ctx = _ctx(tmp_path, toy, suites, {"limit": 3})
    build_eval(ctx)
    assert toy.loads == 1
    rec = read_record(ctx.out / "eval-baseline.json", EvalRecord)
    by = {s.suite: s for s in rec.suites}
    assert list(by) == ["qa", "mc", "breadth-free"]
    for name, n in (("qa", 3), ("mc", 3), ("breadth-free", 3)):
        s = by[name]
        assert s.status == "ok", s.error
        assert s.instance_of == "benchmark" and s.primary_metric == "accuracy"
        assert s.samples.path == f"samples/baseline/{name}.jsonl"
        samples = read_jsonl(ctx.out / s.samples.path, SampleRecord)
        assert len(samples) == n == s.scores["accuracy"].n
    mc = [json.loads(line) for line in (ctx.out / "samples/baseline/mc.jsonl").read_text().splitlines()]
    assert [m["id"] for m in mc] == ["m0", "m1", "m2"]
    assert all(m["output"] in ("yes", "no", "maybe") and len(m["choice_losses"]) == 3 for m in mc)
    assert "options" not in rec.settings and "root" not in rec.settings  # the record's settings stay the stage's


def test_a_malformed_file_fails_before_the_model_loads(tmp_path, toy):
    from factory.evaluate import build_eval

    _jsonl(tmp_path / "q.jsonl", ['{"prompt": "a", "expected": "b"}', "{oops"])
    before = toy.loads
    bad = [{"name": "mine", "suite": "benchmark", "version": "1.0", "options": {"path": "q.jsonl"}}]
    with pytest.raises(FactoryError, match=r"q\.jsonl:2: not a JSON object"):
        build_eval(_ctx(tmp_path, toy, bad))
    typo = [{"name": "mine", "suite": "benchmark", "version": "1.0", "options": {"path": "q.jsonl", "scorr": "x"}}]
    with pytest.raises(FactoryError, match=r"evals\.define\.mine\.options\.scorr: unknown option; known: path"):
        build_eval(_ctx(tmp_path, toy, typo))
    assert toy.loads == before


def test_a_recipe_defines_instances_whose_files_are_eval_inputs(project, monkeypatch):
    from factory import plugins
    from factory.engine import Session

    monkeypatch.setenv("FACTORY_LOAD_PLUGINS", "enginekit,evals")
    plugins.reset()
    try:
        _jsonl(project.root / "evals" / "q.jsonl", [{"prompt": "a", "expected": "b"}])
        recipe = (project.root / "recipes" / "demo.yaml").read_text().replace(
            "evals: {primary: fake-primary, regression: [fake-breadth]}",
            "evals:\n  primary: fake-primary\n  regression: [fake-breadth]\n  extra: [bench]\n"
            "  define: {bench: {suite: benchmark, options: {path: evals/q.jsonl, scorer: regex}}}")
        project.set_recipe(recipe)
        plan = Session(project.root).plan("demo")
        stage = plan.stages["eval-baseline"]
        assert [i.path for n, i in stage.inputs.items() if n.startswith("suite.bench")] == [Path("evals/q.jsonl")]
        entry = [e for e in stage.config["suites"] if e["name"] == "bench"][0]
        assert entry == {"name": "bench", "suite": "benchmark", "version": "1.0",
                         "options": {"path": "evals/q.jsonl", "scorer": "regex"}}
        project.set_recipe(recipe.replace("scorer: regex", "scorer: fuzzy"))
        with pytest.raises(FactoryError, match=r"evals\.define\.bench\.options\.scorer"):
            Session(project.root).plan("demo")
    finally:
        plugins.reset()


def test_a_schema_shared_by_contract_and_suite_through_a_yaml_anchor_plans(project, monkeypatch):
    from factory import plugins
    from factory.engine import Session

    monkeypatch.setenv("FACTORY_LOAD_PLUGINS", "enginekit,evals")
    plugins.reset()
    try:
        recipe = (project.root / "recipes" / "demo.yaml").read_text().replace(
            "data: {sources: [{kind: lines, path: demo/lines.txt}]}",
            "data:\n  sources: [{kind: lines, path: demo/lines.txt}]\n  contract: json-schema\n"
            "  options:\n    schema: &t {type: object, required: [queue], properties: {queue: {enum: [a, b]}}}",
        ).replace("evals: {primary: fake-primary, regression: [fake-breadth]}",
                  "evals:\n  primary: tickets\n  regression: [fake-breadth]\n"
                  "  define: {tickets: {suite: json-schema, options: {schema: *t}}}")
        project.set_recipe(recipe)
        plan = Session(project.root).plan("demo")
        entry = [e for e in plan.stages["eval-baseline"].config["suites"] if e["name"] == "tickets"][0]
        assert entry["suite"] == "json-schema" and entry["options"]["schema"]["required"] == ["queue"]
        assert plan.stages["dataset"].config["options"]["schema"] == entry["options"]["schema"]
        project.set_recipe(recipe.replace("{schema: *t}", "{schema: {type: 5}}"))
        with pytest.raises(FactoryError, match=r"evals\.define\.tickets\.options\.schema: .*not a valid JSON Schema"):
            Session(project.root).plan("demo")
    finally:
        plugins.reset()


def test_changing_only_the_scorer_rescores_saved_outputs(tmp_path, toy, monkeypatch):
    import shutil

    from factory.evaluate import build_eval
    from factory.ml import generate as gen

    _jsonl(tmp_path / "q.jsonl", [{"prompt": f"q{i}", "expected": "a"} for i in range(6)])
    spec = {"name": "q", "suite": "benchmark", "version": "1.0", "options": {"path": "q.jsonl"}}
    build_eval(_ctx(tmp_path, toy, [spec]))
    first = [json.loads(x)["output"] for x in (tmp_path / "out/samples/baseline/q.jsonl").read_text().splitlines()]
    shutil.rmtree(tmp_path / "out")
    monkeypatch.setattr(gen, "_generate_batch", lambda *a, **k: pytest.fail("generated again"))
    regex = {**spec, "options": {"path": "q.jsonl", "scorer": "regex", "match": "search"}}
    build_eval(_ctx(tmp_path, toy, [regex], {"batch_size": 2}))
    again = [json.loads(x) for x in (tmp_path / "out/samples/baseline/q.jsonl").read_text().splitlines()]
    assert [s["output"] for s in again] == first
    assert [s["correct"] for s in again] == ["a" in o.strip() for o in first]


def test_benchmark_instances_are_gated_like_any_suite(tmp_path, toy):
    from factory import gate
    from factory.evaluate import build_eval

    suites = _qa_and_mc(tmp_path, "support", "caps", qa_rows=6, mc_rows=6, choices="yes|no")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    records = {}
    for role in ("baseline", "candidate"):
        (tmp_path / role).mkdir()
        ctx = _ctx(tmp_path / role, toy, suites)
        ctx.root = tmp_path
        ctx.config["role"] = role
        if role == "candidate":
            ctx.inputs["adapter"] = tmp_path / "adapter"
        build_eval(ctx)
        records[role] = gate.read_eval(ctx.out, role)
        assert records[role][2] == []
    (b, bs, _), (c, cs, _) = records["baseline"], records["candidate"]
    criteria = {"primary_min": 0.5, "breadth_drop_max_pp": 5.0, "suite_min": {"caps.accuracy": 0.0}}
    d = gate.decide(b, c, {"baseline": bs, "candidate": cs}, None, criteria, "support", ["caps"])
    by = {e.name: e for e in d.criteria}
    assert {"primary_min", "breadth_drop_max_pp:caps", "suite_min:caps.accuracy"} <= set(by)
    assert by["suite_min:caps.accuracy"].passed and by["suite_min:caps.accuracy"].metric == "caps.accuracy"
    assert by["breadth_drop_max_pp:caps"].delta == 0.0  # the toy ignores the adapter: same answers, paired by id
    assert not by["primary_min"].passed and d.decision in ("rework", "reject")
