"""The dataset stage: contract checks, drop reasons, locked split, dedup, contamination, deterministic bytes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from factory import plugins
from factory.errors import FactoryError
from factory.records import DatasetRecord, read_record
from factory.stages import BuildContext
from factory_plugins import datasets

ACTIONS = {"reschedule": ["item", "day", "time?"], "list": ["day"]}


class ListSource:
    """A dataset source whose rows are given in its options, like the breadth-mix source (no file)."""

    name = "test-rows"
    version = "1"

    def files(self, spec, root):
        return []

    def read(self, spec, root):
        yield from spec["options"]["rows"]


@pytest.fixture
def registry():
    regs = plugins.load(only=["factory_plugins.datasets"])
    regs.sources.register(ListSource(), plugin="tests")
    return regs


def trace(i: int, item: str = "long run", day: str = "saturday", **extra) -> dict:
    action = {"action": "reschedule", "args": {"item": item, "day": day}}
    return {"id": f"r{i}", "request": f"move my {item} to {day} number {i}", "action": json.dumps(action), **extra}


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path.name


def build(tmp_path: Path, registry, sources: list[dict], name: str = "out", recipe=None, **overrides) -> Path:
    config = {
        "sources": sources,
        "contract": "json-action",
        "heldout_fraction": 0.3,
        "options": {"max_chars": 200, "actions": ACTIONS},
    }
    config.update(overrides)
    out = tmp_path / name
    out.mkdir()
    ctx = BuildContext(
        recipe=recipe, stage="dataset", kind="dataset", key="k", config=config, inputs={}, out=out,
        root=tmp_path, registry=registry, log=lambda msg: None,
    )
    registry.stages.get("dataset").build(ctx)
    return out


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def split_map(out: Path) -> dict[str, str]:
    return {r["id"]: s for s in ("train", "heldout") for r in rows_of(out / f"{s}.jsonl")}


def test_trace_rows_become_prompt_and_canonical_answer(tmp_path, registry):
    write_jsonl(tmp_path / "t.jsonl", [trace(i) for i in range(20)])
    out = build(tmp_path, registry, [{"kind": "jsonl", "path": "t.jsonl", "options": {}}])
    row = next(r for r in rows_of(out / "train.jsonl") + rows_of(out / "heldout.jsonl") if r["id"] == "r3")
    assert row["prompt"] == "move my long run to saturday number 3"
    assert row["answer"] == '{"action":"reschedule","args":{"day":"saturday","item":"long run"}}'
    assert row["skill"] == "reschedule"
    record = read_record(out / "dataset.json", DatasetRecord)
    assert record.counts.train_rows + record.counts.heldout_rows == 20
    assert record.sources[0].rows == 20 and record.sources[0].path == "t.jsonl"


def test_each_drop_reason_is_counted(tmp_path, registry):
    rows = [trace(i) for i in range(30)]
    rows += [
        "this line is not json",  # malformed
        {"id": "nofields", "text": "hello"},  # malformed
        {"id": "e1", "request": "   ", "action": json.dumps({"action": "list", "args": {"day": "today"}})},
        {"id": "bad1", "request": "move it", "action": '{"action": "reschedule", "args": {'},
        {"id": "bad2", "request": "move the swim", "action": json.dumps({"action": "reschedule", "args": {"item": "swim"}})},
        {"id": "bad3", "request": "list friday", "action": json.dumps({"action": "list", "args": {"day": "friday", "x": 1}})},
        {"id": "unk", "request": "order a pizza", "action": json.dumps({"action": "order_food", "args": {}})},
        {"id": "na", "request": "what\u2019s on friday?", "action": json.dumps({"action": "list", "args": {"day": "friday"}})},
        {"id": "long", "request": "so " * 80 + "show friday", "action": json.dumps({"action": "list", "args": {"day": "friday"}})},
        {**trace(1), "id": "dup-exact"},
        {**trace(2), "id": "dup-case", "request": "Move My Long Run To Saturday Number 2"},
        {**trace(3), "id": "dup-space", "request": "  move my  long run to saturday number 3 "},
    ]
    write_jsonl(tmp_path / "t.jsonl", rows)
    out = build(tmp_path, registry, [{"kind": "jsonl", "path": "t.jsonl", "options": {}}])
    counts = read_record(out / "dataset.json", DatasetRecord).counts
    assert counts.dropped_by_reason == {
        "malformed": 2, "empty": 1, "invalid_action": 3, "unknown_action": 1,
        "non_ascii": 1, "too_long": 1, "duplicate": 3,
    }
    assert counts.dropped_rows == 12 and counts.input_rows == 42
    assert counts.train_rows + counts.heldout_rows == 30
    kept = split_map(out)
    assert "dup-case" not in kept and "dup-space" not in kept and "r2" in kept  # the clean spelling wins


def test_split_is_locked_when_rows_are_added_or_reordered(tmp_path, registry):
    base = [trace(i, item=random.Random(i).choice(["swim", "yoga", "long run"])) for i in range(200)]
    write_jsonl(tmp_path / "a.jsonl", base)
    first = split_map(build(tmp_path, registry, [{"kind": "jsonl", "path": "a.jsonl", "options": {}}], "a"))
    assert set(first.values()) == {"train", "heldout"}

    grown = base + [trace(i, day="monday") for i in range(1000, 1300)]
    random.Random(7).shuffle(grown)
    write_jsonl(tmp_path / "b.jsonl", grown)
    second = split_map(build(tmp_path, registry, [{"kind": "jsonl", "path": "b.jsonl", "options": {}}], "b"))
    assert {k: second[k] for k in first} == first


def test_near_duplicates_cannot_straddle_the_split(tmp_path, registry):
    rows = []
    for i in range(100):
        rows.append(trace(i))
        rows.append({**trace(i), "id": f"v{i}", "request": trace(i)["request"].upper()})
    write_jsonl(tmp_path / "t.jsonl", rows)
    out = build(tmp_path, registry, [{"kind": "jsonl", "path": "t.jsonl", "options": {}}])
    kept = split_map(out)
    assert len(kept) == 100 and all(k.startswith("r") for k in kept)
    assert read_record(out / "dataset.json", DatasetRecord).counts.dropped_by_reason["duplicate"] == 100


def test_output_bytes_are_deterministic_and_independent_of_row_order(tmp_path, registry):
    rows = [trace(i) for i in range(150)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    random.Random(1).shuffle(rows)
    write_jsonl(tmp_path / "b.jsonl", rows)
    a1 = build(tmp_path, registry, [{"kind": "jsonl", "path": "a.jsonl", "options": {}}], "a1")
    a2 = build(tmp_path, registry, [{"kind": "jsonl", "path": "a.jsonl", "options": {}}], "a2")
    b = build(tmp_path, registry, [{"kind": "jsonl", "path": "b.jsonl", "options": {}}], "b")
    for name in ("train.jsonl", "heldout.jsonl", "dataset.json"):
        assert (a1 / name).read_bytes() == (a2 / name).read_bytes()
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (a1 / name).read_bytes() == (b / name).read_bytes()
    record = read_record(a1 / "dataset.json", DatasetRecord)
    from factory import hashing

    assert record.splits["train"].digest == hashing.digest_bytes((a1 / "train.jsonl").read_bytes())


def test_contamination_fails_the_stage(tmp_path, registry):
    train_rows = [trace(i) for i in range(20)]
    eval_rows = [trace(100 + i) for i in range(10)] + [{**trace(5), "id": "leak", "request": "MOVE my long run to saturday number 5"}]
    write_jsonl(tmp_path / "train.jsonl", train_rows)
    write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    sources = [
        {"kind": "jsonl", "path": "train.jsonl", "options": {"split": "train"}},
        {"kind": "jsonl", "path": "eval.jsonl", "options": {"split": "heldout"}},
    ]
    recipe = SimpleNamespace(path=tmp_path / "recipes" / "demo.yaml")
    with pytest.raises(FactoryError, match=r"^recipes/demo.yaml: data: contamination: 1 held-out prompt"):
        build(tmp_path, registry, sources, recipe=recipe)

    write_jsonl(tmp_path / "eval.jsonl", eval_rows[:-1])
    out = build(tmp_path, registry, sources, "clean")
    record = read_record(out / "dataset.json", DatasetRecord)
    assert (record.counts.train_rows, record.counts.heldout_rows) == (20, 10)
    assert record.contamination["overlap"] == 0


def test_contamination_check_compares_normalized_prompts():
    train = [{"prompt": "Show  Friday"}]
    assert datasets.contamination(train, [{"prompt": "show friday "}]) == ["show friday"]
    assert datasets.contamination(train, [{"prompt": "show saturday"}]) == []


def test_prompt_answer_rows_pass_through_with_their_skill(tmp_path, registry):
    rows = [{"id": f"b{i}", "prompt": f"copy: abc{i}", "answer": f"abc{i}", "skill": "copy"} for i in range(50)]
    out = build(
        tmp_path, registry, [{"kind": "test-rows", "options": {"rows": rows}}],
        contract=None, heldout_fraction=0.1, options={},
    )
    kept = rows_of(out / "train.jsonl") + rows_of(out / "heldout.jsonl")
    assert sorted(kept, key=lambda r: r["id"]) == sorted(rows, key=lambda r: r["id"])
    record = read_record(out / "dataset.json", DatasetRecord)
    assert record.sources[0].kind == "test-rows" and record.sources[0].path == ""
    assert record.counts.by_skill["copy"]["train"] + record.counts.by_skill["copy"]["heldout"] == 50


@pytest.mark.parametrize(
    "config, message",
    [
        ({"options": {"max_chars": 10, "typo": 1, "actions": ACTIONS}},
         "data.options.typo: unknown option; known: max_chars, ascii_only, actions, schema"),
        ({"options": {}}, "data.options.actions: required by this contract (contract json-action: answers are"),
        ({"heldout_fraction": 1.5}, "data.heldout_fraction: Input should be less than 1"),
        ({"contract": "yaml"}, "data.contract: unknown contract 'yaml'; known: json-action, json-schema, or null"),
        ({"contract": "json-schema", "options": {}}, "data.options.schema: required by this contract"),
        ({"contract": "json-schema", "options": {"schema": {"type": "objekt"}}},
         "data.options.schema.type: not a valid JSON Schema"),
    ],
)
def test_config_errors_name_the_field(config, message):
    base = {"sources": [{"kind": "jsonl", "path": "t.jsonl"}], "contract": "json-action",
            "heldout_fraction": 0.2, "options": {"actions": ACTIONS}}
    with pytest.raises(FactoryError) as e:
        datasets.check_config({**base, **config})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_source_file_is_a_one_line_error(tmp_path, registry):
    with pytest.raises(FactoryError, match="nothere.jsonl: no such file"):
        build(tmp_path, registry, [{"kind": "jsonl", "path": "nothere.jsonl", "options": {}}])


def test_plugin_registers_the_source_and_the_stage_kind(registry):
    assert isinstance(registry.sources.get("jsonl"), datasets.JsonlSource)
    assert registry.stages.get("dataset").build is datasets.build_dataset


def test_register_dataset_sources_and_register_stage_kinds_hooks():
    sources, kinds = [], []
    datasets.register_dataset_sources(sources.append)
    datasets.register_stage_kinds(kinds.append)
    assert [s.name for s in sources] == ["jsonl"] and [k.name for k in kinds] == ["dataset"]
    assert kinds[0].description


TICKET_SCHEMA = {
    "type": "object",
    "required": ["queue", "priority", "product"],
    "additionalProperties": False,
    "properties": {"queue": {"enum": ["billing", "tech", "sales"]},
                   "priority": {"type": "integer", "minimum": 1, "maximum": 3},
                   "product": {"type": "string", "minLength": 1}},
}


def ticket(i: int, **answer) -> dict:
    base = {"queue": ["billing", "tech", "sales"][i % 3], "priority": 1 + i % 3, "product": f"p{i % 4}"}
    return {"id": f"t{i}", "prompt": f"ticket {i}: my thing is broken", "answer": {**base, **answer}}


def test_json_schema_contract_keeps_valid_answers_canonical_and_counts_the_rest(tmp_path, registry):
    rows = [ticket(i) for i in range(40)]
    rows[3] = ticket(3, queue="legal")  # not in the enum
    rows[5]["answer"] = json.dumps(rows[5]["answer"])  # a JSON string is parsed, then checked
    rows[7]["answer"] = "billing, urgent"  # not JSON at all
    rows[9] = ticket(9, extra=True)  # additionalProperties: false
    out = build(tmp_path, registry, [{"kind": "test-rows", "options": {"rows": rows}}],
                contract="json-schema", options={"schema": TICKET_SCHEMA})
    record = read_record(out / "dataset.json", DatasetRecord)
    assert record.counts.dropped_by_reason["schema_mismatch"] == 2
    assert record.counts.dropped_by_reason["invalid_json"] == 1
    assert record.dropped_examples["schema_mismatch"] == ["t3", "t9"]
    kept = {r["id"]: r for r in rows_of(out / "train.jsonl") + rows_of(out / "heldout.jsonl")}
    assert len(kept) == 37 and "t5" in kept
    assert kept["t5"]["answer"] == '{"priority":3,"product":"p1","queue":"sales"}'  # canonical: sorted, compact
    assert record.processing["schema"] == TICKET_SCHEMA and "schema_mismatch" in record.processing["checks"]


def test_an_empty_split_names_its_drops_by_reason(tmp_path, registry):
    # Ticket rows under the planner's contract: every row drops, and the error says why and what to use.
    rows = [ticket(i) for i in range(10)] + [{"id": "bad", "text": "no prompt"}]
    with pytest.raises(FactoryError) as e:
        build(tmp_path, registry, [{"kind": "test-rows", "options": {"rows": rows}}])
    msg = str(e.value)
    assert "\n" not in msg
    assert "the split left 0 train and 0 held-out rows of 11 input rows" in msg
    assert "dropped: invalid_action 10 (e.g. t0, t1, t2); malformed 1 (e.g. bad)" in msg
    assert "contract json-schema" in msg and "contract null" in msg


def test_contracts_are_checked_when_the_recipe_is_planned(tmp_path):
    from factory.engine import Session

    (tmp_path / "recipes" / "t").mkdir(parents=True)
    (tmp_path / "recipes" / "t" / "rows.jsonl").write_text(
        "".join(json.dumps(ticket(i)) + "\n" for i in range(10)))
    recipe = ("base: {family: tiny, model: tiny-llama}\ndata:\n  sources: [{kind: jsonl, path: t/rows.jsonl}]\n  contract: CONTRACT\n"
              "  options: OPTIONS\nevals: {primary: json-action}\n")
    plugins.reset()
    try:
        for contract, opts, message in (
            ("jsn-schema", "{}", r"recipes/t\.yaml: data\.contract: unknown contract 'jsn-schema'; known: json-action, json-schema"),
            ("json-schema", "{}", r"recipes/t\.yaml: data\.options: schema: required by this contract"),
            ("json-schema", "{schema: {type: 7}}", r"recipes/t\.yaml: data\.options: schema\.type: not a valid JSON Schema"),
            ("json-action", "{}", r"recipes/t\.yaml: data\.options: actions: required by this contract"),
        ):
            (tmp_path / "recipes" / "t.yaml").write_text(recipe.replace("CONTRACT", contract).replace("OPTIONS", opts))
            with pytest.raises(FactoryError, match=message):
                Session(tmp_path).plan("t")
        (tmp_path / "recipes" / "t.yaml").write_text(recipe.replace("CONTRACT", "json-schema").replace(
            "OPTIONS", json.dumps({"schema": TICKET_SCHEMA})))
        assert Session(tmp_path).plan("t").stages["dataset"].config["contract"] == "json-schema"
    finally:
        plugins.reset()
