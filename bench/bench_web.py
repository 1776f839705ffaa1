"""Benchmark of the run browser's pages over the 10,000-run index.

    python bench/bench_web.py [--runs 10000] [--dest /tmp/factory-bench-web]

Generates the runs with bench/make_runs.py (once; kept under --dest), indexes
them, and asks the app for each page through Starlette's in-process test
client, so the time is the server's: routing, opening the index read-only,
the queries, rendering the template and the SVG. Each page is asked for seven
times and the median is printed, with the floor measured in the same run:
opening and closing the index alone (what a page pays for never holding the
file open between requests). Target: the runs page and a compare page in
<= 200 ms each.

MLflow's UI is not measured here: it needs an MLflow install and server beside
the project (its REST search over the same runs is in bench_index.py, where
MLflow is importable).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from make_runs import make_runs  # noqa: E402

REPEAT = 7
TARGET_MS = 200


def _median_ms(fn, repeat: int = REPEAT) -> float:
    fn()  # warm: first template compile, page cache
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--dest", type=Path, default=Path(tempfile.gettempdir()) / "factory-bench-web")
    a = ap.parse_args()

    from starlette.testclient import TestClient

    from factory import index
    from factory.web.app import create_app
    from factory.web.cookbook import examples

    runs_dir = a.dest / "runs"
    stamp = a.dest / "generated.json"
    if not stamp.exists() or json.loads(stamp.read_text()).get("runs") != a.runs:
        shutil.rmtree(a.dest, ignore_errors=True)
        t = time.perf_counter()
        make_runs(runs_dir, a.runs, seed=0)
        stamp.write_text(json.dumps({"runs": a.runs}))
        print(f"generated {a.runs} runs in {time.perf_counter() - t:.1f} s under {runs_dir}")
    t = time.perf_counter()
    res = index.refresh(runs_dir)
    print(f"index refresh: {time.perf_counter() - t:.1f} s ({res.get('new')} new)")
    print(f"load average before: {os.getloadavg()}")

    con = index.connect(runs_dir)
    n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    a_id, b_id = (r[0] for r in con.execute(
        "SELECT run_id FROM runs WHERE recipe = 'sql-writer' ORDER BY created DESC LIMIT 2").fetchall())
    con.close()

    def open_close():
        index.connect(runs_dir).close()

    client = TestClient(create_app(a.dest))
    q4 = next(e["sql"] for e in examples() if e["question"].startswith("4."))
    pages = {
        "runs page (newest 500 of all)": "/",
        "runs page, filtered and sorted": "/?recipe=pace-planner&decision=ship&sort=primary&dir=desc",
        "run page": f"/runs/{a_id}",
        "compare page (two runs)": f"/compare?run={a_id}&run={b_id}",
        "samples search (text + verdict)": "/samples?q=answer+sql-writer+1&verdict=wrong",
        "SQL page (cookbook 4)": "/sql?" + __import__("urllib.parse").parse.urlencode({"q": q4}),
    }
    floor = _median_ms(open_close)
    print(f"\n{n_runs} runs in the index; median of {REPEAT} requests, server time")
    print(f"  {'open + close the index read-only (floor)':42s} {floor:7.1f} ms")
    results = {"runs": n_runs, "open_close_ms": floor, "pages_ms": {}}
    for name, url in pages.items():
        status = client.get(url).status_code
        assert status == 200, (url, status)
        ms = _median_ms(lambda: client.get(url))
        results["pages_ms"][name] = ms
        target = f"  (target <= {TARGET_MS} ms: {'ok' if ms <= TARGET_MS else 'MISSED'})" \
            if name.startswith(("runs page (", "compare")) else ""
        print(f"  {name:42s} {ms:7.1f} ms  {ms / floor:5.1f}x the floor{target}")
    print(f"load average after: {os.getloadavg()}")
    (a.dest / "results-web.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
