"""The run browser's pages over a small generated index: what they show, what they refuse, and locking."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
from starlette.testclient import TestClient

from factory import index
from factory.web.app import create_app
from factory.web.cookbook import examples, parse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from make_runs import make_runs  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("web")
    make_runs(root / "runs", 40, seed=7)
    index.refresh(root / "runs")
    return root


@pytest.fixture(scope="module")
def client(root):
    return TestClient(create_app(root))


def ids(root, sql="SELECT run_id FROM runs ORDER BY run_id"):
    return [r[0] for r in index.query(root / "runs", sql)[1]]


def test_runs_page_lists_every_complete_run_and_filters(root, client):
    every = ids(root)
    page = client.get("/").text
    assert all(f'data-run="{r}"' in page for r in every)
    shipped = ids(root, "SELECT run_id FROM runs WHERE decision = 'ship'")
    other = set(every) - set(shipped)
    page = client.get("/", params={"decision": "ship"}).text
    assert all(f'data-run="{r}"' in page for r in shipped) and not any(f'data-run="{r}"' in page for r in other)
    # sorted by primary score, ascending: the rows come in that order
    page = client.get("/", params={"sort": "primary", "dir": "asc"}).text
    order = ids(root, "SELECT run_id FROM run_summary ORDER BY primary_candidate ASC NULLS LAST, run_id")
    assert [r for r in order if f'data-run="{r}"' in page] == sorted(order, key=page.index)
    assert client.get("/", params={"min_primary": "high"}).status_code == 400


def test_run_page_shows_decision_criteria_curve_skills_stages_and_files(root, client):
    run_id = ids(root, "SELECT run_id FROM runs WHERE decision = 'rework' LIMIT 1")[0]
    page = client.get(f"/runs/{run_id}").text
    crit = index.query(root / "runs", "SELECT name FROM criteria WHERE run_id = ?", [run_id])[1]
    assert 'class="decision rework"' in page
    assert all(name in page for (name,) in crit)
    assert "<polyline" in page and "training loss" in page  # the loss curve
    assert "per skill" in page and "<rect" in page
    assert 'id="stages"' in page and "eval-baseline" in page and (">hit<" in page or ">built<" in page)
    assert f'/runs/{run_id}/files/decision.json' in page
    # the lower-is-better table holds the suites whose records say so (perplexity here), not the ones
    # whose names sound like risk (this run's risk-probes reports a higher-is-better exact match)
    table = page.split('id="risk"', 1)[1].split("</table>", 1)[0]
    assert "Lower is better" in page and ">perplexity<" in table and "risk-probes" not in table
    got = client.get(f"/runs/{run_id}/files/decision.json")
    assert got.status_code == 200 and json.loads(got.text)["decision"] == "rework"


def test_compare_page_pairs_two_runs_and_lists_the_samples_that_flipped(root, client):
    a, b = ids(root, "SELECT run_id FROM runs WHERE recipe = 'pace-planner' ORDER BY run_id LIMIT 2")
    page = client.get("/compare", params=[("run", a), ("run", b)]).text
    flipped = duckdb.connect(str(root / "runs" / "index.duckdb"), read_only=True).execute(
        "SELECT x.sample_id FROM eval_samples x JOIN eval_samples y USING (suite, sample_id) "
        "WHERE x.run_id = ? AND y.run_id = ? AND x.role = 'candidate' AND y.role = 'candidate' "
        "AND x.correct <> y.correct", [a, b]).fetchall()
    assert flipped, "two generated runs of one recipe disagree on some sample"
    assert all(f"<td>{s}</td>" in page for (s,) in flipped[:50])
    assert "Config that differs" in page and any(f"<td>train.{k}</td>" in page for k in ("lr", "steps", "replay", "seed"))
    fixed = client.get("/compare", params=[("run", a), ("run", b), ("direction", "fixed")]).text
    assert 'class="flip broke"' not in fixed
    assert client.get("/compare", params=[("run", a), ("run", "no-such-run")]).status_code == 404


def test_samples_page_searches_across_runs(root, client):
    page = client.get("/samples", params={"suite": "breadth", "verdict": "wrong", "role": "candidate"}).text
    n = index.query(root / "runs", "SELECT count(*) FROM eval_samples WHERE suite = 'breadth' AND NOT correct "
                                   "AND role = 'candidate'")[1][0][0]
    assert f"{n} samples" in page
    assert "✓" not in page.split('id="samples"')[1]


def test_sql_page_runs_a_select_refuses_writes_and_shows_duckdb_errors(root, client):
    page = client.get("/sql", params={"q": "SELECT recipe, count(*) AS n FROM runs GROUP BY recipe"}).text
    assert "<th>n</th>" in page and "pace-planner" in page
    before = ids(root)
    for q in ("DELETE FROM runs", "DROP TABLE runs", "CREATE TABLE x AS SELECT 1", "ATTACH 'other.db'",
              "SELECT 1; DELETE FROM runs", "SET threads = 1", f"COPY runs TO '{root}/leak.csv'"):
        r = client.get("/sql", params={"q": q})
        assert r.status_code == 400 and 'id="sql-error"' in r.text, q
    r = client.get("/sql", params={"q": f"SELECT * FROM read_text('{root}/runs/{before[0]}/config.json')"})
    assert r.status_code == 400 and "Permission" in r.text  # no files outside the index
    assert ids(root) == before and not (root / "leak.csv").exists()
    r = client.get("/sql", params={"q": "SELEC 1"})
    assert r.status_code == 400 and "syntax error" in r.text
    csv = client.get("/sql.csv", params={"q": "SELECT run_id, decision FROM runs ORDER BY run_id"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines() == ["run_id,decision"] + [
        f"{r},{d}" for r, d in index.query(root / "runs", "SELECT run_id, decision FROM runs ORDER BY run_id")[1]]


def test_sql_page_stops_a_query_at_the_time_limit(root):
    from factory.web.data import QueryError, Reader

    with Reader(root / "runs") as r, pytest.raises(QueryError, match="time limit"):
        r.user_query("SELECT count(*) FROM range(10000000000) a, range(1000) b", None, timeout_s=0.3)


def test_the_sql_page_offers_every_cookbook_question():
    assert examples() == parse((REPO / "docs" / "sql-cookbook.md").read_text()), \
        "regenerate with: python -m factory.web.cookbook docs/sql-cookbook.md"


def test_names_and_paths_outside_a_run_directory_are_404(root, client):
    run_id = ids(root)[0]
    (root / "secret.txt").write_text("not yours")
    (root / "runs" / run_id / "link.txt").symlink_to(root / "secret.txt")
    for url in (f"/runs/{run_id}/files/../../secret.txt", f"/runs/{run_id}/files/%2e%2e/%2e%2e/secret.txt",
                f"/runs/{run_id}/files/link.txt", "/runs/..%2f..%2fsecret.txt", "/runs/../../secret.txt",
                f"/runs/{run_id}/files//etc/passwd", "/runs/no-such-run"):
        r = client.get(url)
        assert r.status_code == 404 and "not yours" not in r.text, url


def test_a_missing_index_says_what_to_do(tmp_path):
    r = TestClient(create_app(tmp_path)).get("/")
    assert r.status_code == 503 and "What to do" in r.text and "factory index" in r.text
    assert not (tmp_path / "runs" / "index.duckdb").exists()  # the browser never writes one


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_locked_index_says_what_to_do(root, client):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(root / "runs" / "index.duckdb"), "6"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        r = client.get("/")
        assert r.status_code == 503 and "What to do" in r.text and "reload this page" in r.text
    finally:
        p.kill()
        p.wait()
    assert client.get("/").status_code == 200


def test_a_refresh_is_not_blocked_while_pages_are_served_and_new_runs_show_without_a_restart(tmp_path):
    root = tmp_path
    make_runs(root / "runs", 12, seed=9)
    index.refresh(root / "runs")
    client = TestClient(create_app(root))
    stop = threading.Event()
    codes = []

    def browse():
        while not stop.is_set():
            codes.append(client.get("/").status_code)

    t = threading.Thread(target=browse)
    t.start()
    try:
        make_runs(root / "runs", 6, seed=9, start=12)
        # the build's refresh runs in its own process, as the engine's does
        out = subprocess.run([sys.executable, "-m", "factory.cli", "index", "--runs-dir", str(root / "runs")], capture_output=True,
                             text=True, check=True).stdout
    finally:
        stop.set()
        t.join()
    res = json.loads(out)
    assert res["queued"] is False and res["new"] == 6
    assert codes and all(c in (200, 503) for c in codes)
    page = client.get("/").text
    assert all(f'data-run="{r}"' in page for r in ids(root)) and len(ids(root)) == 18


def test_factory_serve_says_where_it_listens_and_serves_the_runs(root):
    import os
    import urllib.request

    from webkit import free_port

    port = free_port()
    env = {**os.environ, "FACTORY_ROOT": str(root)}
    p = subprocess.Popen([sys.executable, "-m", "factory.cli", "serve", "--port", str(port)], cwd=root, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = p.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line and "only this machine" in line, line
        deadline = time.monotonic() + 20
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert all(f'data-run="{r}"' in page for r in ids(root))
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_runs_queued_for_the_index_are_announced(root, client):
    pending = root / "runs" / ".index-pending"
    pending.write_text("{}\n")
    try:
        assert 'id="pending"' in client.get("/").text
    finally:
        pending.unlink()
    assert 'id="pending"' not in client.get("/").text
