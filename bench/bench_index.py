"""Benchmark of the run index against MLflow's run search, on the same 10,000 runs.

    python bench/bench_index.py [--runs 10000] [--dest /tmp/factory-bench-index] [--mlflow-python PATH]

Measures, each in a fresh process: a full ingest of the generated runs (time
and peak RSS), adding one run to the index (the whole command: interpreter
start, imports, refresh), and an unchanged refresh; then every query of
docs/sql-cookbook.md (best of five). The same runs are logged to MLflow's
sqlite tracking store and the questions MLflow can express are timed with
`mlflow.search_runs` (MLflow's filter language has no OR, IN, arithmetic or
GROUP BY, so grouping is done in pandas after fetching the runs, as a user
would). MLflow runs under its own interpreter (`--mlflow-python`, default: a
venv at /tmp/h5-mlflow-venv, else this one), so its dependencies never touch
the project's environment. Targets: ingest <= 5 s and <= 1.5 GiB, one run
<= 0.3 s, queries <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from make_runs import make_runs  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO)}

MLFLOW_LOAD = r'''
import json, sys, time, mlflow
from mlflow.tracking import MlflowClient
from mlflow.entities import Metric, Param, RunTag
uri, rows_path = sys.argv[1], sys.argv[2]
rows = json.load(open(rows_path))
mlflow.set_tracking_uri(uri)
client = MlflowClient(uri)
exp = client.create_experiment("factory")
t = time.perf_counter()
for r in rows:
    ts = int(time.time() * 1000)
    run = client.create_run(exp, start_time=ts, tags={"mlflow.runName": r["run_id"]})
    params = [Param(k, str(r[k])) for k in ("recipe", "method", "lr", "steps", "replay", "primary_suite")]
    metrics = [Metric(k, float(r[k]), ts, 0) for k in ("primary_baseline", "primary_candidate", "regression_baseline",
                                                         "regression_candidate", "regression_delta_pp") if r[k] is not None]
    tags = [RunTag("decision", r["decision"]), RunTag("recipe", r["recipe"]), RunTag("week", r["week"])]
    client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
    client.set_terminated(run.info.run_id)
print(json.dumps({"experiment": exp, "load_s": time.perf_counter() - t}))
'''

MLFLOW_QUERY = r'''
import json, sys, time, warnings, mlflow
warnings.filterwarnings("ignore")
uri, exp = sys.argv[1], sys.argv[2]
mlflow.set_tracking_uri(uri)
recipes = json.loads(sys.argv[3])

def best_per_recipe():
    out = []
    for rc in recipes:
        df = mlflow.search_runs([exp], filter_string=f"params.recipe = '{rc}' and tags.decision = 'ship'",
                                order_by=["metrics.primary_candidate DESC"], max_results=1)
        out.append(len(df))
    return out

def decisions_by_week():
    df = mlflow.search_runs([exp], max_results=100000)
    return df.groupby(["params.recipe", "tags.week", "tags.decision"]).size().shape

def ship_rate_by_lr():
    df = mlflow.search_runs([exp], max_results=100000)
    df["ship"] = df["tags.decision"] == "ship"
    return df.groupby(["params.method", "params.lr"])["ship"].mean().shape

def replay_breadth():
    df = mlflow.search_runs([exp], max_results=100000)
    return df.groupby("params.replay")["metrics.regression_delta_pp"].agg(["mean", "count"]).shape

def borderline_ships():
    df = mlflow.search_runs([exp], filter_string="tags.decision = 'ship' and metrics.primary_candidate < 0.96",
                            max_results=100000)
    return df.shape

res = {}
for name, fn in [("1 best shipped run per recipe", best_per_recipe),
                 ("2 decisions per recipe and week", decisions_by_week),
                 ("4 ship rate by learning rate", ship_rate_by_lr), ("8 breadth by replay", replay_breadth),
                 ("10 borderline ships", borderline_ships)]:
    best = 1e9
    for _ in range(2):
        t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
    res[name] = best
print(json.dumps(res))
'''

# DuckDB questions matched to the MLflow ones above (numbers are the cookbook's questions)
MATCH = {"1": "1 best shipped run per recipe", "2": "2 decisions per recipe and week",
         "4": "4 ship rate by learning rate", "8": "8 breadth by replay"}


def _timed(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t, out


def cookbook() -> list[tuple[str, str]]:
    text = (REPO / "docs" / "sql-cookbook.md").read_text()
    return [(m.group(1).strip(), m.group(2))
            for m in re.finditer(r"^### (.+?)\n.*?```sql\n(.*?)```", text, re.S | re.M)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--dest", type=Path, default=Path(tempfile.gettempdir()) / "factory-bench-index")
    ap.add_argument("--mlflow-python", default=None)
    ap.add_argument("--skip-mlflow", action="store_true")
    a = ap.parse_args()
    runs_dir = a.dest / "runs"
    results: dict = {"runs": a.runs}

    stamp = a.dest / "generated.json"
    if not stamp.exists() or json.loads(stamp.read_text()).get("runs") != a.runs:
        shutil.rmtree(a.dest, ignore_errors=True)
        t = time.perf_counter()
        make_runs(runs_dir, a.runs, seed=0)
        stamp.write_text(json.dumps({"runs": a.runs}))
        print(f"generated {a.runs} runs in {time.perf_counter() - t:.1f} s under {runs_dir}")
    for p in runs_dir.glob("*"):
        if p.name.startswith("9999-"):
            shutil.rmtree(p)
    files = sum(1 for _ in runs_dir.rglob("*") if _.is_file())
    size = sum(p.stat().st_size for p in runs_dir.rglob("*") if p.is_file())
    print(f"{files} files, {size / 2**20:.0f} MiB in the run directories")
    print(f"load average before: {os.getloadavg()}")

    # full ingest, fresh process; RUSAGE_CHILDREN holds the largest child's peak RSS
    idx = runs_dir / "index.duckdb"
    idx.unlink(missing_ok=True)
    secs, out = _timed([sys.executable, "-m", "factory.cli", "index", "--runs-dir", str(runs_dir)])
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    results["full_ingest_s"] = secs
    results["full_ingest_peak_rss_gib"] = rss
    results["ingest"] = json.loads(out)
    print(f"full ingest: {secs:.2f} s wall ({results['ingest']['seconds']:.2f} s inside), peak RSS {rss:.2f} GiB; "
          f"{results['ingest']['new']} runs; index {idx.stat().st_size / 2**20:.1f} MiB")

    # one more run: the engine's refresh after a build names the run it wrote
    new = make_runs(runs_dir / ".." / "extra", 1, seed=0, start=a.runs + 1, incomplete_every=0)[0]
    target = runs_dir / ("9999-" + new.name[5:])
    shutil.move(new, target)
    secs, out = _timed([sys.executable, "-m", "factory.cli", "index", "--runs-dir", str(runs_dir), target.name])
    results["add_one_run_s"] = secs
    print(f"add one run (whole command): {secs:.3f} s -> {out.strip()}")
    secs, out = _timed([sys.executable, "-m", "factory.cli", "index", "--runs-dir", str(runs_dir)])
    results["unchanged_full_scan_s"] = secs
    print(f"refresh with nothing new, scanning every run (whole command): {secs:.3f} s")
    secs, _ = _timed([sys.executable, "-c", "import duckdb"])
    results["python_import_duckdb_s"] = secs
    print(f"  (of which interpreter start + import duckdb: {secs:.3f} s)")

    import duckdb

    con = duckdb.connect(str(idx), read_only=True)
    results["queries_ms"] = {}
    for title, sql in cookbook():
        best = 1e9
        for _ in range(5):
            t = time.perf_counter()
            con.execute(sql).fetchall()
            best = min(best, time.perf_counter() - t)
        results["queries_ms"][title] = best * 1000
        print(f"  {best * 1000:7.1f} ms  {title}")
    recipes = [r[0] for r in con.execute("SELECT DISTINCT recipe FROM runs ORDER BY 1").fetchall()]
    rows = con.execute(
        "SELECT run_id, recipe, method, lr, steps, replay, primary_suite, primary_baseline, primary_candidate, "
        "regression_baseline, regression_candidate, regression_delta_pp, decision, "
        "strftime(date_trunc('week', created), '%Y-%m-%d') AS week FROM run_summary").fetchall()
    cols = [d[0] for d in con.description]
    con.close()

    if not a.skip_mlflow:
        py = a.mlflow_python or next((p for p in ("/tmp/h5-mlflow-venv/bin/python",) if Path(p).exists()),
                                     sys.executable)
        if subprocess.run([py, "-c", "import mlflow"], capture_output=True).returncode != 0:
            print(f"mlflow: not importable with {py}; install it in a separate venv and pass --mlflow-python")
        else:
            mdir = a.dest / "mlflow"
            shutil.rmtree(mdir, ignore_errors=True)
            mdir.mkdir()
            uri = f"sqlite:///{mdir / 'mlflow.db'}"
            (mdir / "rows.json").write_text(json.dumps([dict(zip(cols, r)) for r in rows], default=str))
            t = time.perf_counter()
            load = json.loads(subprocess.run([py, "-c", MLFLOW_LOAD, uri, str(mdir / "rows.json")],
                                             capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            print(f"mlflow: logged {len(rows)} runs to its sqlite store in {time.perf_counter() - t:.0f} s")
            out = subprocess.run([py, "-c", MLFLOW_QUERY, uri, load["experiment"], json.dumps(recipes)],
                                 capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            ml = json.loads(out)
            results["mlflow_s"] = ml
            print("question                              duckdb      mlflow    ratio")
            for num, name in MATCH.items():
                dq = next(v for k, v in results["queries_ms"].items() if k.startswith(num + "."))
                print(f"  {name:34s} {dq:7.1f} ms {ml[name]:8.2f} s  {ml[name] * 1000 / dq:7.0f}x")
            dq = next(v for k, v in results["queries_ms"].items() if k.startswith("10."))
            print(f"  {'10 borderline ships':34s} {dq:7.1f} ms {ml['10 borderline ships']:8.2f} s  "
                  f"{ml['10 borderline ships'] * 1000 / dq:7.0f}x")
    print(f"load average after: {os.getloadavg()}")
    (a.dest / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results in {a.dest / 'results.json'}")


if __name__ == "__main__":
    main()
