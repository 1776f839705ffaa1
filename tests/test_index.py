"""The run index: ingest, incremental refresh, rebuild, locking, and the sql/runs commands."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from factory import index

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from make_runs import make_runs  # noqa: E402

N_RUNS = 240


def _complete(runs_dir: Path) -> list[Path]:
    return sorted(p for p in runs_dir.iterdir() if p.is_dir() and (p / "decision.json").exists())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A pristine set of generated runs; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("corpus")
    make_runs(root / "runs", N_RUNS, seed=3)
    index.refresh(root / "runs")
    return root


@pytest.fixture
def project(corpus, tmp_path) -> Path:
    shutil.copytree(corpus, tmp_path / "p", copy_function=shutil.copy2)
    (tmp_path / "p" / "runs" / "index.duckdb").unlink()
    return tmp_path / "p"


def q(runs_dir, sql, params=None):
    return index.query(runs_dir, sql, params)[1]


def test_ingest_takes_in_every_complete_run_and_every_sample(corpus):
    runs_dir = corpus / "runs"
    complete = _complete(runs_dir)
    assert len(complete) < N_RUNS  # the generator leaves some runs without a decision
    assert q(runs_dir, "SELECT count(*) FROM runs")[0][0] == len(complete)
    assert q(runs_dir, "SELECT count(*) FROM run_summary")[0][0] == len(complete)
    n_samples = sum(
        sum(1 for line in open(f) if line.strip()) for run in complete for f in (run / "samples").rglob("*.jsonl"))
    assert q(runs_dir, "SELECT count(*) FROM eval_samples")[0][0] == n_samples
    n_log = sum(sum(1 for line in open(run / "train.log") if line.strip()) for run in complete)
    assert q(runs_dir, "SELECT count(*) FROM train_log")[0][0] == n_log
    n_events = sum(sum(1 for line in open(run / "events.jsonl") if line.strip()) for run in complete)
    assert q(runs_dir, "SELECT count(*) FROM stages")[0][0] == n_events


def test_indexed_values_are_the_ones_in_the_run_files(corpus):
    runs_dir = corpus / "runs"
    for run in _complete(runs_dir)[::40]:
        cfg = json.loads((run / "config.json").read_text())
        dec = json.loads((run / "decision.json").read_text())
        ev = json.loads((run / "eval-candidate.json").read_text())
        primary = cfg["evals"]["primary"]
        score = next(s for s in ev["suites"] if s["suite"] == primary)["scores"]["exact_match"]["value"]
        row = q(runs_dir, "SELECT recipe, lr, steps, decision, reason, primary_suite, primary_candidate "
                          "FROM run_summary WHERE run_id = ?", [run.name])
        assert row == [(cfg["recipe"], cfg["train"]["lr"], cfg["train"]["steps"], dec["decision"], dec["reason"],
                        primary, score)]
        crit = q(runs_dir, "SELECT name, candidate, passed FROM criteria WHERE run_id = ? ORDER BY name", [run.name])
        assert crit == sorted((c["name"], c["candidate"], c["passed"]) for c in dec["criteria"])


def test_refresh_reads_only_new_runs(project, monkeypatch):
    runs_dir = project / "runs"
    first = index.refresh(runs_dir)
    assert first["new"] == len(_complete(runs_dir)) and not first["queued"]

    seen = []
    real = index._ingest
    monkeypatch.setattr(index, "_ingest", lambda con, runs, dig: (seen.append(sorted(runs)), real(con, runs, dig)))
    again = index.refresh(runs_dir)
    assert again["new"] == 0 and again["changed"] == 0 and again["unchanged"] == first["new"]
    assert seen == [[]]

    added = make_runs(runs_dir, 3, seed=3, start=N_RUNS, incomplete_every=0)
    res = index.refresh(runs_dir)
    assert res["new"] == 3 and res["unchanged"] == first["new"]
    assert seen[-1] == sorted(p.name for p in added)
    assert q(runs_dir, "SELECT count(*) FROM runs")[0][0] == first["new"] + 3


def test_refresh_only_rereads_the_named_runs_but_catches_up_missing_ones(project):
    runs_dir = project / "runs"
    index.refresh(runs_dir)
    first = _complete(runs_dir)[0]
    cfg = json.loads((first / "config.json").read_text())
    _replace(first / "config.json", json.dumps({**cfg, "goal": "edited"}))
    added = make_runs(runs_dir, 2, seed=3, start=N_RUNS, incomplete_every=0)
    res = index.refresh(runs_dir, only=[added[0].name])
    # the named run, and the complete run the index lacks (a build killed before its refresh)
    assert res["new"] == 2 and res["changed"] == 0
    assert q(runs_dir, "SELECT count(*) FROM runs WHERE run_id = ?", [added[1].name])[0][0] == 1
    # an indexed run that is not named is not re-read: that takes a full refresh
    assert q(runs_dir, "SELECT goal FROM runs WHERE run_id = ?", [first.name])[0][0] == cfg["goal"]
    assert index.refresh(runs_dir)["changed"] == 1


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_changed_run_is_reread_and_a_touched_one_is_not(project):
    runs_dir = project / "runs"
    index.refresh(runs_dir)
    a, b = _complete(runs_dir)[:2]

    dec = json.loads((a / "decision.json").read_text())
    dec["decision"], dec["reason"] = "reject", "changed by hand"
    _replace(a / "decision.json", json.dumps(dec))
    _replace(b / "decision.json", (b / "decision.json").read_text())  # same bytes, new inode and mtime

    res = index.refresh(runs_dir)
    assert res["changed"] == 1 and res["new"] == 0
    assert q(runs_dir, "SELECT decision, reason FROM runs WHERE run_id = ?", [a.name]) == [("reject", "changed by hand")]
    assert q(runs_dir, "SELECT count(*) FROM criteria WHERE run_id = ?", [a.name])[0][0] == len(dec["criteria"])
    assert index.refresh(runs_dir)["changed"] == 0


def test_in_place_edit_is_found_by_a_deep_refresh(project):
    runs_dir = project / "runs"
    index.refresh(runs_dir)
    run = _complete(runs_dir)[5]
    dmtime = run.stat().st_mtime_ns
    cfg = json.loads((run / "train.json").read_text())
    cfg["final_loss"] = 123.0
    with open(run / "train.json", "r+") as f:  # in place: the directory's mtime stays
        f.truncate(0)
        f.write(json.dumps(cfg))
    os.utime(run, ns=(dmtime, dmtime))
    assert index.refresh(runs_dir)["changed"] == 0
    assert index.refresh(runs_dir, deep=True)["changed"] == 1
    assert q(runs_dir, "SELECT final_loss FROM runs WHERE run_id = ?", [run.name]) == [(123.0,)]


def test_appended_events_are_taken_in(project):
    runs_dir = project / "runs"
    index.refresh(runs_dir)
    run = _complete(runs_dir)[7]
    before = q(runs_dir, "SELECT count(*) FROM stages WHERE run_id = ?", [run.name])[0][0]
    line = json.loads((run / "events.jsonl").read_text().splitlines()[0])
    line["status"] = "stopped"
    with open(run / "events.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    assert index.refresh(runs_dir)["changed"] == 1
    assert q(runs_dir, "SELECT count(*) FROM stages WHERE run_id = ?", [run.name])[0][0] == before + 1


def test_removed_run_leaves_the_index(project):
    runs_dir = project / "runs"
    index.refresh(runs_dir)
    gone = _complete(runs_dir)[3]
    shutil.rmtree(gone)
    assert index.refresh(runs_dir)["removed"] == 1
    for table in ("runs", "criteria", "evals", "train_log", "stages", "ingested", "eval_samples"):
        assert q(runs_dir, f"SELECT count(*) FROM {table} WHERE run_id = ?", [gone.name])[0][0] == 0


SUMMARY = "SELECT * EXCLUDE (created) FROM run_summary ORDER BY run_id"


def test_rebuilt_index_and_a_copy_elsewhere_give_the_same_answers(project, tmp_path):
    runs_dir = project / "runs"
    index.refresh(runs_dir)
    before = q(runs_dir, SUMMARY)
    samples = q(runs_dir, "SELECT run_id, suite, role, sample_id, correct FROM eval_samples ORDER BY ALL")
    index.index_path(runs_dir).unlink()
    index.refresh(runs_dir)
    assert q(runs_dir, SUMMARY) == before
    assert index.rebuild(runs_dir)["new"] == len(before)
    assert q(runs_dir, SUMMARY) == before
    assert q(runs_dir, "SELECT run_id, suite, role, sample_id, correct FROM eval_samples ORDER BY ALL") == samples

    other = tmp_path / "elsewhere" / "runs"
    shutil.copytree(runs_dir, other, ignore=shutil.ignore_patterns("index.duckdb*"))
    index.refresh(other)
    assert q(other, SUMMARY) == before


def test_index_from_an_older_layout_is_rebuilt(project):
    runs_dir = project / "runs"
    index.refresh(runs_dir)
    con = duckdb.connect(str(index.index_path(runs_dir)))
    con.execute("UPDATE meta SET value = '0' WHERE name = 'schema'")
    con.close()
    res = index.refresh(runs_dir)
    assert res["new"] == len(_complete(runs_dir))


HOLD = textwrap.dedent("""
    import duckdb, sys, time
    con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "ro")
    print("ready", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def holder():
    procs = []

    def hold(path: Path, mode: str):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_refresh_queues_while_another_process_holds_the_index(project, holder, capsys):
    runs_dir = project / "runs"
    index.refresh(runs_dir)
    added = make_runs(runs_dir, 1, seed=3, start=N_RUNS, incomplete_every=0)
    proc = holder(index.index_path(runs_dir), "ro")  # e.g. a `duckdb runs/index.duckdb` session

    res = index.refresh(runs_dir, wait_s=0.2, only=[added[0].name])  # must not raise
    assert res["queued"] is True and "queued" in res["message"]
    assert (runs_dir / index.PENDING_FILE).exists()

    proc.kill()
    proc.wait()
    assert index.cli_sql(project, "SELECT count(*) AS n FROM runs WHERE run_id = '%s'" % added[0].name, "csv") == 0
    assert capsys.readouterr().out.splitlines() == ["n", "1"]
    assert not (runs_dir / index.PENDING_FILE).exists()


def test_reader_is_told_when_a_write_is_in_progress(project, holder, capsys):
    runs_dir = project / "runs"
    index.refresh(runs_dir)
    holder(index.index_path(runs_dir), "rw")
    with pytest.raises(index.IndexBusy, match="another process is updating the index"):
        index.connect(runs_dir, read_only=True, wait_s=0.2)


def test_cli_sql_formats_and_errors(project, capsys):
    runs_dir = project / "runs"
    index.refresh(runs_dir)
    assert index.cli_sql(project, "SELECT decision, count(*) AS n FROM runs GROUP BY 1 ORDER BY 1", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["decision"] for r in rows} <= {"ship", "rework", "reject", "blocked"}
    assert sum(r["n"] for r in rows) == len(_complete(runs_dir))

    assert index.cli_sql(project, "SELECT recipe FROM runs LIMIT 2", "table") == 0
    assert "recipe" in capsys.readouterr().out

    assert index.cli_sql(project, "SELEKT 1", "table") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("factory sql: sql: Parser Error") and "\n" not in err

    assert index.cli_sql(project, "DELETE FROM runs", "table") == 1  # readers cannot change the index
    assert q(runs_dir, "SELECT count(*) FROM runs")[0][0] == len(_complete(runs_dir))


def test_shell_reads_statements_from_stdin(project, monkeypatch, capsys):
    index.refresh(project / "runs")
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT 41 + 1 AS answer;\n.tables\n.quit\nSELECT 'not run';\n"))
    assert index.cli_sql(project, None, "csv") == 0
    out = capsys.readouterr().out
    assert "answer\n42\n" in out and "run_summary" in out and "not run" not in out


def test_cli_runs_lists_newest_first(project, capsys):
    runs_dir = project / "runs"
    assert index.cli_runs(project, limit=3) == 0  # builds the index on first use
    out = capsys.readouterr().out
    newest = q(runs_dir, "SELECT run_id FROM runs ORDER BY created DESC LIMIT 1")[0][0]
    lines = [line for line in out.splitlines() if "-" in line and "━" not in line]
    assert newest in lines[0] and len(lines) == 3
    assert "decision" in out


def test_index_file_is_readable_by_a_plain_duckdb_client(project):
    runs_dir = project / "runs"
    index.refresh(runs_dir)
    out = subprocess.run(
        [sys.executable, "-c",
         "import duckdb,sys; c=duckdb.connect(sys.argv[1], read_only=True); "
         "print(c.execute('SELECT count(*) FROM run_summary').fetchone()[0])", str(index.index_path(runs_dir))],
        capture_output=True, text=True, check=True).stdout
    assert int(out) == len(_complete(runs_dir))


def test_importing_the_index_does_not_import_duckdb():
    out = subprocess.run([sys.executable, "-c", "import sys, factory.index, factory.compare, factory.specialists; "
                          "print(sorted(m for m in ('duckdb', 'torch', 'peft') if m in sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "[]"


# --- factory compare ------------------------------------------------------------------------

def test_compare_shows_config_keys_criteria_and_flipped_samples(corpus, capsys):
    from factory import compare, comparecmd

    runs_dir = corpus / "runs"
    by_recipe = {}
    for run in _complete(runs_dir):
        cfg = json.loads((run / "config.json").read_text())
        by_recipe.setdefault(cfg["recipe"], []).append((run, cfg))
    (a, ca), (b, cb) = next(((x, y) for runs in by_recipe.values() for x in runs for y in runs
                             if x[1]["train"]["lr"] != y[1]["train"]["lr"]
                             and x[1]["stage_keys"]["dataset"] == y[1]["stage_keys"]["dataset"]))
    res = compare.compare(corpus, [a.name, b.name])

    diff = dict(res["config"])
    assert diff["train.lr"] == [ca["train"]["lr"], cb["train"]["lr"]]
    assert "recipe" not in diff
    stages = dict(res["stage_keys"])
    assert stages["train"] == [ca["stage_keys"]["train"], cb["stage_keys"]["train"]]
    assert "dataset" in res["shared_stages"] and "dataset" not in stages

    names = [c[0] for c in res["criteria"]]
    assert names == [c["name"] for c in json.loads((a / "decision.json").read_text())["criteria"]]

    def correct(run, suite):
        rows = [json.loads(line) for line in open(run / "samples" / "candidate" / f"{suite}.jsonl")]
        return {r["id"]: r["correct"] for r in rows}

    suite = ca["evals"]["primary"]
    ra, rb = correct(a, suite), correct(b, suite)
    expected = sorted(i for i in ra if ra[i] != rb[i])
    assert [i for i, _ in res["flipped"].get(suite, [])] == expected

    assert comparecmd.cli_compare(corpus, [a.name, b.name]) == 0
    out = capsys.readouterr().out
    assert "train.lr" in out and "config differences" in out and "primary_min" in out


def test_compare_needs_two_known_runs(corpus, capsys):
    from factory import comparecmd

    assert comparecmd.cli_compare(corpus, [_complete(corpus / "runs")[0].name]) == 1
    assert "at least two runs" in capsys.readouterr().err
    assert comparecmd.cli_compare(corpus, ["no-such-run", "nor-this"]) == 1
    assert "no such run" in capsys.readouterr().err


def test_a_run_with_a_broken_file_does_not_stop_the_others(project):
    runs_dir = project / "runs"
    bad, half = _complete(runs_dir)[:2]
    (bad / "config.json").write_text('{"recipe": "pace-pl')  # copied half-way
    with open(half / "train.log", "a") as f:
        f.write('{"step": 99999, "lo\n')
    res = index.refresh(runs_dir)
    assert res["unreadable"] == [bad.name]
    assert res["new"] == len(_complete(runs_dir))
    assert q(runs_dir, "SELECT count(*) FROM runs")[0][0] == len(_complete(runs_dir)) - 1
    assert q(runs_dir, "SELECT max(step) < 99999 FROM train_log WHERE run_id = ?", [half.name]) == [(True,)]
    _replace(bad / "config.json", json.dumps({"recipe": "pace-planner", "base": {"family": "tiny", "model": "t"},
                                              "method": "sft-lora"}))
    assert index.refresh(runs_dir)["changed"] == 1
    assert q(runs_dir, "SELECT recipe FROM runs WHERE run_id = ?", [bad.name]) == [("pace-planner",)]


def test_a_record_file_no_run_has_does_not_stop_the_ingest(tmp_path):
    runs_dir = tmp_path / "runs"
    made = make_runs(runs_dir, 3, seed=5, incomplete_every=0)
    for run in made:  # runs written before these files existed, or by a stage that was skipped
        for name in ("eval-baseline.json", "eval-candidate.json", "train.log", "events.jsonl"):
            (run / name).unlink()
    res = index.refresh(runs_dir)
    assert res["new"] == 3 and res["unreadable"] == []
    assert q(runs_dir, "SELECT count(*) FROM runs")[0][0] == 3
    assert q(runs_dir, "SELECT count(*) FROM train_log")[0][0] == 0
