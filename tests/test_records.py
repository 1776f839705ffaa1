"""Run records are written strictly and read tolerantly, and today's run files stay readable."""

import json

import pytest

from conftest import REPO

from factory.errors import FactoryError
from factory.records import JSONL_FILES, RUN_FILES, read_jsonl, read_record

FIXTURE = REPO / "tests" / "fixtures" / "run"


def fixture_files():
    return sorted(p for p in FIXTURE.iterdir() if p.name in RUN_FILES)


def test_fixture_run_has_every_record():
    names = {p.name for p in FIXTURE.iterdir()}
    assert set(RUN_FILES) <= names
    assert {"train.log", "events.jsonl"} <= names


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.name)
def test_fixture_records_read_back_and_round_trip(path):
    original = json.loads(path.read_text())
    rec = read_record(path)
    assert rec.model_dump(mode="json") == original


@pytest.mark.parametrize("name", sorted(JSONL_FILES))
def test_fixture_jsonl_reads_back(name):
    rows = read_jsonl(FIXTURE / name)
    originals = [json.loads(line) for line in (FIXTURE / name).read_text().splitlines() if line.strip()]
    assert [r.model_dump(mode="json", exclude_none=True) for r in rows] == [
        {k: v for k, v in o.items() if v is not None} for o in originals
    ]


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.name)
def test_newer_minor_version_with_extra_fields_round_trips(path, tmp_path):
    data = json.loads(path.read_text())
    data["schema_version"] = "1.9"
    data["added_in_a_later_version"] = {"nested": [1, 2, 3]}
    p = tmp_path / path.name
    p.write_text(json.dumps(data))
    assert read_record(p).model_dump(mode="json") == data


def test_newer_major_version_is_refused_with_a_clear_message(tmp_path):
    data = json.loads((FIXTURE / "decision.json").read_text())
    data["schema_version"] = "2.0"
    p = tmp_path / "decision.json"
    p.write_text(json.dumps(data))
    with pytest.raises(FactoryError, match="schema_version: 2.0"):
        read_record(p)


def test_a_broken_record_names_file_and_field(tmp_path):
    data = json.loads((FIXTURE / "decision.json").read_text())
    data["decision"] = "maybe"
    p = tmp_path / "decision.json"
    p.write_text(json.dumps(data))
    with pytest.raises(FactoryError, match=r"decision.json: decision: "):
        read_record(p)
