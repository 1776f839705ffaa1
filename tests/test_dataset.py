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
        ({"options": {"max_chars": 10, "typo": 1}}, "data.options.typo: unknown option; known: max_chars, ascii_only, actions"),
        ({"options": {}}, "data.options.actions: the json-action contract needs"),
        ({"heldout_fraction": 1.5}, "data.heldout_fraction: Input should be less than 1"),
        ({"contract": "yaml"}, "data.contract: Input should be 'json-action'"),
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
