"""The breadth-mix dataset source: generated rows users pretrain on, replay and evaluate against."""

import json
from pathlib import Path

import pytest

from factory.errors import FactoryError
from factory_plugins.breadth import SKILLS, WEIGHTS, BreadthMix


def read(options):
    return list(BreadthMix().read({"kind": "breadth-mix", "options": options}, Path(".")))


def test_same_seed_same_rows_and_other_seed_other_rows():
    a = read({"rows": 400, "seed": 1})
    assert a == read({"rows": 400, "seed": 1})
    b = read({"rows": 400, "seed": 2})
    assert {r["id"] for r in a} != {r["id"] for r in b}


def test_rows_have_the_row_format_and_are_short_ascii():
    rows = read({"rows": 800, "seed": 0})
    assert len(rows) == 800
    for r in rows:
        assert set(r) == {"id", "prompt", "answer", "skill"}
        assert r["prompt"].isascii() and r["answer"].isascii()
        assert 0 < len(r["answer"]) <= (72 if r["skill"] == "fields" else 40) and len(r["prompt"]) <= 80
        assert r["skill"] in SKILLS


def test_ids_are_unique_content_derived_and_stable_across_row_counts():
    small = read({"rows": 200, "seed": 0})
    big = read({"rows": 2000, "seed": 0})
    assert len({r["id"] for r in big}) == 2000
    assert small == big[:200]  # asking for more rows does not change the first ones
    assert len({(r["prompt"], r["answer"]) for r in big}) == 2000


def test_skills_share_the_rows_by_weight():
    turn = sum(WEIGHTS.get(s, 1) for s in SKILLS)
    rows = read({"rows": 10 * turn, "seed": 0})
    counts = {s: sum(r["skill"] == s for r in rows) for s in SKILLS}
    assert counts == {s: 10 * WEIGHTS.get(s, 1) for s in SKILLS}
    assert counts["fields"] > counts["copy"] > counts["sort"]  # copy-like skills take a larger share


def test_answers_are_right():
    rows = {r["skill"]: r for r in read({"rows": 80, "seed": 3})}
    words = rows["reverse"]["prompt"].split(": ", 1)[1].split()
    assert rows["reverse"]["answer"] == " ".join(reversed(words))
    digits = rows["sort"]["prompt"].split(": ", 1)[1].split()
    assert rows["sort"]["answer"] == " ".join(sorted(digits))
    record = json.loads(rows["json"]["answer"])
    for pair in rows["json"]["prompt"].split(": ", 1)[1].split():
        key, value = pair.split("=")
        assert str(record[key]) == value
    lookup = rows["lookup"]["prompt"].split(": ", 1)[1]
    pairs, key = lookup.split(" ? ")
    assert dict(p.split("=") for p in pairs.split())[key] == rows["lookup"]["answer"]
    record = json.loads(rows["fields"]["answer"])
    kind, pairs = rows["fields"]["prompt"].split(": ", 1)[1].split(" with ")
    assert record["kind"] == kind
    assert [f"{k} {v}" for k, v in record["args"].items()] == sorted(pairs.split(", "))
    assert rows["number"]["answer"] in rows["number"]["prompt"].split()


@pytest.mark.parametrize(
    "text,clock",
    [("7pm", "19:00"), ("7:15pm", "19:15"), ("12 am", "00:00"), ("12:30pm", "12:30"), ("09:45", "09:45")],
)
def test_clock_answers_are_24_hour_times(text, clock):
    rows = [r for r in read({"rows": 4000, "seed": 0, "skills": ["clock"]}) if f" {text} " in f" {r['prompt']} "]
    assert rows and all(r["answer"] == clock for r in rows)


def test_a_subset_of_skills():
    rows = read({"rows": 50, "seed": 0, "skills": ["copy", "json"]})
    assert {r["skill"] for r in rows} == {"copy", "json"}


def test_generated_source_has_no_files():
    assert BreadthMix().files({"kind": "breadth-mix", "options": {"rows": 10}}, Path(".")) == []


@pytest.mark.parametrize(
    "options, field",
    [({"rowz": 10}, "options.rowz"), ({"rows": 0}, "options.rows"), ({"skills": ["poetry"]}, "options.skills")],
)
def test_bad_options_fail_with_one_line_naming_the_field(options, field):
    with pytest.raises(FactoryError) as e:
        BreadthMix().files({"kind": "breadth-mix", "options": options}, Path("."))
    assert field in str(e.value) and "\n" not in str(e.value)


def test_registered_through_the_plugin_hook():
    from factory.plugins import load

    regs = load(only=["factory_plugins.breadth"])
    assert isinstance(regs.sources.get("breadth-mix"), BreadthMix)
