"""Fault injection: kills at every point of the index refresh and of the run-directory write,
corrupt index files, malformed files for every command, workers that outlive their build, and
settings that change training bytes. Each test prints its counts (trials, failures, what was
lost) on a `faults:` line; `pytest -s` shows them.

Kills are made by forking: the child runs the code under test with a counter on every DuckDB
statement and every file rename, and `os._exit`s at the N-th one (a kill -9 at that point: no
`finally`, no flush); the parent then does what a user does next and checks what survived.
"""

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from factory import index
from factory import indexcmd
from factory.project import UNFINISHED_DIR, unfinished

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from make_runs import make_runs  # noqa: E402

KILLED = 77  # the exit status of a child killed at its point


def report(name: str, **counts) -> None:
    print(f"faults: {name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


def complete_runs(runs_dir: Path) -> set[str]:
    return {p.name for p in runs_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "decision.json").exists()}


def indexed(runs_dir: Path) -> set[str]:
    # through the read path every command takes: a run the index lacks (the build was killed
    # between the run directory and the index) is ingested on the first read
    return {r for (r,) in index.select(runs_dir, "SELECT run_id FROM runs")[1]}


def not_indexed(runs_dir: Path) -> list[str]:
    """Complete runs the index file lacks as it is now (a plain read: nothing is ingested)."""
    return sorted(complete_runs(runs_dir) - {r for (r,) in index.query(runs_dir, "SELECT run_id FROM runs")[1]})


class _Counting:
    """A DuckDB connection whose every statement is a point where the process may die."""

    def __init__(self, con, tick):
        self._con, self._tick = con, tick

    def execute(self, *a, **k):
        self._tick()
        return self._con.execute(*a, **k)

    def executemany(self, *a, **k):
        self._tick()
        return self._con.executemany(*a, **k)

    def __getattr__(self, name):
        return getattr(self._con, name)


class Points:
    """Where a process may die: `count` so far; it dies when `count` reaches `die_at`."""

    def __init__(self, die_at: int | None = None):
        self.count, self.die_at = 0, die_at

    def tick(self) -> None:
        self.count += 1
        if self.die_at is not None and self.count >= self.die_at:
            os._exit(KILLED)


def _instrument(mp, points: Points, functions=()) -> Points:
    """Make every DuckDB statement of the index, every rename, unlink and file write, and each
    of `functions` ((object, name) pairs) a point where the process may die."""

    def wrap(real):
        return lambda *a, **k: (points.tick(), real(*a, **k))[1]

    real_writer = index._writer
    mp.setattr(index, "_writer", lambda con: _Counting(real_writer(con), points.tick))
    for name in ("replace", "unlink", "rename"):
        mp.setattr(os, name, wrap(getattr(os, name)))
    mp.setattr(Path, "write_text", wrap(Path.write_text))
    for obj, name in functions:
        mp.setattr(obj, name, wrap(getattr(obj, name)))
    return points


def _in_child(fn, timeout_s: float = 60.0) -> int:
    """Run fn in a forked child; its exit status (KILLED when it died at its point, 0 when it finished)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the child hung")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """runs/ with 8 generated runs (one incomplete) and their index, plus 2 runs the index lacks."""
    root = tmp_path_factory.mktemp("faults")
    runs = root / "runs"
    make_runs(runs, 8, seed=11, incomplete_every=5)
    index.refresh(runs)
    make_runs(runs, 2, seed=11, start=8, incomplete_every=0)
    return runs


def _copy(pristine: Path, dest: Path) -> Path:
    shutil.copytree(pristine, dest, copy_function=shutil.copy2)
    return dest


# --- the index ----------------------------------------------------------------------------------

FAST_TRIALS = 8  # kill points tried by the fast tests, spread over all of them; the slow ones try every point


def spread(points: int, every: bool) -> list[int]:
    """The kill points to try: all of 1..points, or FAST_TRIALS of them from first to last."""
    if every or points <= FAST_TRIALS:
        return list(range(1, points + 1))
    return sorted({1 + round(i * (points - 1) / (FAST_TRIALS - 1)) for i in range(FAST_TRIALS)})


@pytest.mark.parametrize("start", ["incremental", "fresh"])
def test_refresh_killed_at_points_spread_over_it_loses_no_run(pristine, tmp_path, start):
    _refresh_kills(pristine, tmp_path, start, every=False)


@pytest.mark.slow
@pytest.mark.parametrize("start", ["incremental", "fresh"])
def test_refresh_killed_at_every_point_loses_no_run(pristine, tmp_path, start):
    _refresh_kills(pristine, tmp_path, start, every=True)


def _refresh_kills(pristine: Path, tmp_path: Path, start: str, every: bool) -> None:
    """Kill a refresh at its points; the next `factory sql` must hold every complete run."""
    new = not_indexed(pristine)[0]

    def prepare(dest: Path) -> Path:
        runs = _copy(pristine, dest)
        if start == "fresh":
            (runs / index.INDEX_FILE).unlink()
            Path(str(runs / index.INDEX_FILE) + ".wal").unlink(missing_ok=True)
        return runs

    # how many points a refresh has (counted in a child, so the counters do not stay patched)
    probe = prepare(tmp_path / "probe" / "runs")
    r, w = os.pipe()

    def count_points():
        with pytest.MonkeyPatch.context() as mp:
            points = _instrument(mp, Points())
            index.refresh(probe, only=[new])
            os.write(w, str(points.count).encode())

    assert _in_child(count_points) == 0
    points = int(os.read(r, 64))
    os.close(r)
    os.close(w)
    assert points > 10

    trials = lost = failures = 0
    tried = spread(points, every)
    for n in tried:
        runs = prepare(tmp_path / f"t{n}" / "runs")

        def die():
            with pytest.MonkeyPatch.context() as mp:
                _instrument(mp, Points(n))
                index.refresh(runs, only=[new])

        status = _in_child(die)
        trials += 1
        if status not in (KILLED, 0):
            print(f"faults: refresh point {n}: the child ended with {status}")
            failures += 1
            continue
        err = io.StringIO()
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            rc = indexcmd.cli_sql(runs.parent, "SELECT count(*) FROM runs", "csv")
        missing = complete_runs(runs) - indexed(runs)
        lost += len(missing)
        if rc != 0 or missing or "Traceback" in err.getvalue():
            print(f"faults: refresh point {n}: rc {rc}, missing {sorted(missing)}: {err.getvalue()[-300:]}")
            failures += 1
        shutil.rmtree(runs.parent)
    report(f"refresh kills ({start})", points=points, trials=trials, failures=failures, lost_runs=lost)
    assert trials == len(tried) and failures == 0 and lost == 0


def _damage(runs: Path, how: str) -> None:
    db = runs / index.INDEX_FILE
    wal = Path(str(db) + ".wal")
    rng = random.Random(how)
    if how == "truncated":
        os.truncate(db, db.stat().st_size // 2)
    elif how == "garbage":
        db.write_bytes(rng.randbytes(db.stat().st_size))
    elif how == "empty":
        db.write_bytes(b"")
    elif how == "block":
        with open(db, "r+b") as f:
            f.seek(4096 * 3)
            f.write(rng.randbytes(512))
    elif how in ("wal-truncated", "wal-garbage"):
        assert wal.exists(), "the fixture's last refresh left its change in the write-ahead log"
        if how == "wal-truncated":
            os.truncate(wal, wal.stat().st_size - 40)
        else:
            wal.write_bytes(rng.randbytes(wal.stat().st_size))


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "block", "wal-truncated", "wal-garbage"])
def test_damaged_index_is_moved_aside_and_rebuilt(pristine, tmp_path, how):
    runs = _copy(pristine, tmp_path / "p" / "runs")
    added = not_indexed(runs)
    index.refresh(runs, only=added[:1])  # small: stays in the write-ahead log
    _damage(runs, how)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = indexcmd.cli_sql(runs.parent, "SELECT count(*) AS n FROM runs", "csv")
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    missing = complete_runs(runs) - indexed(runs)
    report(f"damaged index ({how})", trials=1, failures=int(rc != 0 or bool(missing)), lost_runs=len(missing))
    assert rc == 0 and not missing
    assert out.getvalue().splitlines() == ["n", str(len(complete_runs(runs)))]
    assert "Traceback" not in err.getvalue()
    if how.startswith("wal"):
        # DuckDB replays what it can of a damaged log; the runs it dropped are taken in again
        assert len(lines) <= 1
    else:
        assert len(lines) == 1 and "moved aside" in lines[0] and "rebuilding" in lines[0], lines
        assert list(runs.glob(f"{index.INDEX_FILE}.corrupt-*"))


def test_a_refresh_that_cannot_get_the_lock_loses_nothing(pristine, tmp_path):
    """The lock held by another process: the build's refresh queues; the marker may even be lost."""
    runs = _copy(pristine, tmp_path / "p" / "runs")
    new = not_indexed(runs)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time, duckdb
            con = duckdb.connect(sys.argv[1])
            print("ready", flush=True)
            time.sleep(60)
        """), str(runs / index.INDEX_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        res = index.refresh(runs, only=new[:1], wait_s=0.2)
        assert res["queued"]
    finally:
        holder.kill()
        holder.wait()
    (runs / index.PENDING_FILE).unlink()  # even without the marker, the listing finds the runs
    with redirect_stdout(io.StringIO()):
        assert indexcmd.cli_runs(runs.parent) == 0
    assert complete_runs(runs) == indexed(runs)
    report("refresh under a held lock", trials=1, failures=0, lost_runs=len(complete_runs(runs) - indexed(runs)))


def test_litter_of_a_killed_refresh_is_removed(pristine, tmp_path):
    runs = _copy(pristine, tmp_path / "p" / "runs")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (runs / f".{index.INDEX_FILE}.{dead}.tmp").write_bytes(b"half an index")
    (runs / f"{index.PENDING_FILE}.{dead}.tmp").write_text("{")
    index.refresh(runs)
    assert not list(runs.glob(f".{index.INDEX_FILE}.*")) and not list(runs.glob(f"{index.PENDING_FILE}.*"))


# --- the run-directory write --------------------------------------------------------------------

@pytest.fixture
def fake_env(monkeypatch):
    from factory import plugins

    monkeypatch.setenv("FACTORY_LOAD_PLUGINS", "enginekit")
    monkeypatch.setenv("FACTORY_PROGRESS", "0")
    monkeypatch.delenv("FACTORY_ROOT", raising=False)
    monkeypatch.delenv("FACTORY_INVOCATION", raising=False)
    plugins.reset()
    yield
    plugins.reset()


def test_run_directory_write_killed_at_points_spread_over_it(project, fake_env, tmp_path):
    _run_dir_kills(project, tmp_path, every=False)


@pytest.mark.slow
def test_run_directory_write_killed_at_every_point(project, fake_env, tmp_path):
    _run_dir_kills(project, tmp_path, every=True)


def _run_dir_kills(project, tmp_path: Path, every: bool) -> None:
    """Kill the end of a build (run directory staged, moved into place, hooks, refresh) at each point;
    the next build must leave the run complete, indexed and alone (no half directory, no staging)."""
    from factory import runs as runs_mod
    from factory.engine import Session

    Session(project.root).build("demo")  # every stage in the store; the run exists
    pristine_root = tmp_path / "pristine"
    shutil.copytree(project.root, pristine_root, symlinks=True)
    for d in (pristine_root / "runs").iterdir():
        if d.is_dir():
            shutil.rmtree(d)
    (pristine_root / "runs" / index.INDEX_FILE).unlink(missing_ok=True)

    def finish(root: Path):
        s = Session(root)
        for stage in s.plan("demo").order():
            s.run_stage("demo", stage)
        runs_mod.RunWriter(s, "demo").finish()

    end_of_build = [(runs_mod, "link_outputs"), (runs_mod.RunWriter, "_finished"), (runs_mod, "_append_events")]

    def finish_dying(root: Path, die_at: int | None, out=None):
        with pytest.MonkeyPatch.context() as mp:
            points = _instrument(mp, Points(), end_of_build)
            s = Session(root)
            for stage in s.plan("demo").order():
                s.run_stage("demo", stage)
            points.count, points.die_at = 0, die_at  # only the end of the build is in the count
            runs_mod.RunWriter(s, "demo").finish()
            if out is not None:
                os.write(out, str(points.count).encode())

    r, w = os.pipe()
    probe = tmp_path / "probe"
    shutil.copytree(pristine_root, probe, symlinks=True)
    assert _in_child(lambda: finish_dying(probe, None, w)) == 0
    points = int(os.read(r, 64))
    os.close(r)
    os.close(w)
    trials = failures = lost = 0
    tried = spread(points, every)
    for n in tried:
        root = tmp_path / f"t{n}"
        shutil.copytree(pristine_root, root, symlinks=True)
        status = _in_child(lambda: finish_dying(root, n))
        trials += 1
        err = io.StringIO()
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            finish(root)  # the next build
        run_dirs = [p for p in (root / "runs").iterdir() if p.is_dir() and p.name != UNFINISHED_DIR]
        complete = complete_runs(root / "runs")
        bad = (status not in (KILLED, 0) or len(complete) != 1 or len(run_dirs) != 1 or unfinished(root / "runs")
               or complete - indexed(root / "runs") or "Traceback" in err.getvalue())
        lost += len(complete - indexed(root / "runs")) + (1 - len(complete))
        failures += int(bool(bad))
        shutil.rmtree(root)
    report("run-directory write kills", points=points, trials=trials, failures=failures, lost_runs=lost)
    assert trials == len(tried) and points > 5
    assert failures == 0 and lost == 0


# --- malformed files for every command ----------------------------------------------------------

FIXTURE_RUN = REPO / "tests" / "fixtures" / "run"
MUTATIONS = {
    "not UTF-8": lambda p: p.write_bytes(b'{"decision": "\xff\xfe"}'),
    "binary": lambda p: p.write_bytes(random.Random(p.name).randbytes(300)),
    "a list": lambda p: p.write_text("[1, 2]"),
    "null": lambda p: p.write_text("null"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "empty": lambda p: p.write_text(""),
    "a directory": lambda p: (p.unlink(), p.mkdir()),
    "deeply nested": lambda p: p.write_text("[" * 50000 + "]" * 50000),
    "a link out": lambda p: (p.unlink(), p.symlink_to("/etc/passwd")),
}


def _cli(*args) -> tuple[int, str, str]:
    from factory.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def _one_line_or_clean(rc: int, out: str, err: str) -> bool:
    """A command meets bad input with at most one line on stderr, never a traceback, and never the
    catch-all for an error nobody expected; a failure says something (validate lists its problems)."""
    lines = [line for line in err.splitlines() if line.strip()]
    return ("Traceback" not in err + out and "FACTORY_DEBUG" not in err and len(lines) <= 1
            and (rc == 0 or bool(lines) or bool(out.strip())))


def test_malformed_run_files_meet_every_command_with_one_line(tmp_path, monkeypatch):
    root = tmp_path / "p"
    (root / "recipes").mkdir(parents=True)
    monkeypatch.setenv("FACTORY_ROOT", str(root))
    shutil.copytree(FIXTURE_RUN, root / "runs" / "2026-01-01-demo-00000000")
    ref = root / "runs" / "2026-01-01-demo-00000000"
    trials, failures = 0, []
    for name in sorted(p.name for p in FIXTURE_RUN.iterdir()):
        for how, mutate in MUTATIONS.items():
            run = root / "runs" / f"2026-01-02-demo-{abs(hash((name, how))) % 10**8:08d}"
            shutil.copytree(FIXTURE_RUN, run)
            mutate(run / name)
            for cmd in (["run", "validate", str(run)], ["run", "render", str(run)], ["compare", str(run), str(ref)]):
                trials += 1
                rc, out, err = _cli(*cmd)
                if not _one_line_or_clean(rc, out, err) or (cmd[1] == "validate" and rc == 0):
                    failures.append((name, how, cmd[:2], rc, err[-200:]))
    for cmd in (["runs"], ["sql", "SELECT count(*) FROM runs"], ["why", "demo"]):
        trials += 1
        rc, out, err = _cli(*cmd)
        if not _one_line_or_clean(rc, out, err):
            failures.append(("runs/", "all of the above", cmd, rc, err[-200:]))
    report("malformed run files", trials=trials, failures=len(failures), tracebacks=sum(
        "Traceback" in f[-1] for f in failures))
    assert not failures, failures[:5]


def test_paths_a_record_names_stay_inside_the_run(tmp_path):
    from factory.validate import validate_run

    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run)
    ev = json.loads((run / "eval-candidate.json").read_text())
    ev["suites"][0]["samples"]["path"] = "../../../../../etc/passwd"
    (run / "eval-candidate.json").write_text(json.dumps(ev))
    man = json.loads((run / "run_manifest.json").read_text())
    man["files"]["../../etc/hostname"] = "0" * 32
    (run / "run_manifest.json").write_text(json.dumps(man))
    problems = validate_run(run)
    assert any("eval-candidate.json" in p and "inside the run directory" in p for p in problems), problems
    assert any("../../etc/hostname" in p and "outside" in p for p in problems), problems

    # a link that leads out is not followed either
    ev = json.loads((FIXTURE_RUN / "eval-candidate.json").read_text())
    (run / "eval-candidate.json").write_text(json.dumps(ev))
    rel = ev["suites"][0]["samples"]["path"]
    (run / rel).parent.mkdir(parents=True, exist_ok=True)
    (run / rel).symlink_to("/etc/passwd")
    assert any(p.startswith(rel) and "outside" in p for p in validate_run(run))
    assert not index._inside_run(str(run), rel) and not index._inside_run(str(run), "../x")


def test_render_of_a_directory_that_is_not_a_run_says_so(tmp_path):
    rc, out, err = _cli("run", "render", str(tmp_path))
    assert rc != 0 and "not a run directory" in err and out == ""


def test_render_piped_is_not_cut_at_80_columns(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run)
    r = subprocess.run([sys.executable, "-m", "factory.cli", "run", "render", str(run)], capture_output=True,
                       text=True, env={**os.environ, "FACTORY_ROOT": str(tmp_path), "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    reason = json.loads((run / "decision.json").read_text())["reason"]
    assert reason in r.stdout  # one line, not folded into the panel's width


def test_closed_pipe_and_ctrl_c_end_in_one_line(tmp_path):
    env = {**os.environ, "FACTORY_ROOT": str(tmp_path)}
    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run)
    p = subprocess.Popen([sys.executable, "-m", "factory.cli", "run", "render", str(run)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # `| head` that has read enough
    err = p.stderr.read().decode()
    assert p.wait() in (1, 141) and err == ""  # rich ends a closed pipe with 1, factory's own prints with 141

    code = ("import signal, sys, time\n"
            "from factory import cli\n"
            "def slow(args):\n"
            "    print('ready', flush=True); time.sleep(30)\n"
            "cli.cmd_runs = slow\n"
            "sys.exit(cli.main(['runs']))\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=20) == 130
    assert p.stderr.read().strip() == "factory: interrupted"


def test_ctrl_c_in_a_doit_build_ends_in_one_line(project):
    env = project.env(FAKE_SLEEP="train:30")
    p = subprocess.Popen([sys.executable, "-m", "doit", "recipe:demo"], cwd=project.root, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while "train" not in project.builds() and time.time() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=30) == 130
    err = p.stderr.read()
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "doit: interrupted"
    assert not any((project.root / "cache" / "tmp").iterdir())  # the interrupted stage's build dir is gone


def test_a_binary_recipe_is_that_recipe_s_one_line_error(project):
    (project.root / "recipes" / "broken.yaml").write_bytes(b"goal: x\n\xff\xfe\x00\x01binary")
    r = project.doit("list")
    assert "Traceback" not in r.stderr
    line = next(line for line in r.stdout.splitlines() if line.startswith("recipe:broken"))
    assert "INVALID" in line and "broken.yaml" in line
    assert any(line.startswith("recipe:demo ") for line in r.stdout.splitlines())
    project.doit("recipe:demo")  # the other recipe still builds
    assert len(project.runs()) == 1


def test_why_into_a_closed_pipe_prints_no_traceback(project):
    p = subprocess.Popen([sys.executable, "-m", "factory.cli", "why", "demo"], cwd=project.root, env=project.env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait() == 141 and err == ""


# --- workers die with their build ---------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has died; only its parent has not reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


BUILDER = textwrap.dedent("""
    # a builder that starts a launcher (as _launch_torchrun starts torchrun) which starts a worker in a
    # session of its own (as torchrun does): kill -9 of the builder must take both with it
    import os, signal, subprocess, sys, time
    from factory.ml.sft import die_with_parent
    worker = ("import os, sys, time\\n"
              "from factory.ml.sft import die_with_parent, watch_builder\\n"
              "die_with_parent(); watch_builder(int(os.environ['FACTORY_BUILDER_PID']), 0.2)\\n"
              "print(os.getpid(), flush=True); time.sleep(120)\\n")
    launcher = ("import subprocess, sys, time\\n"
                "p = subprocess.Popen([sys.executable, '-c', sys.argv[1]], start_new_session=True)\\n"
                "time.sleep(120)\\n")
    env = {**os.environ, "FACTORY_BUILDER_PID": str(os.getpid())}
    p = subprocess.Popen([sys.executable, "-c", launcher, worker], env=env,
                         preexec_fn=lambda: die_with_parent(signal.SIGTERM))
    print(p.pid, flush=True)
    time.sleep(120)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_workers_die_with_a_killed_builder(tmp_path):
    builder = subprocess.Popen([sys.executable, "-c", BUILDER], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    launcher = int(builder.stdout.readline())
    deadline = time.time() + 30
    workers = []
    while time.time() < deadline and not workers:
        kids = subprocess.run(["pgrep", "-P", str(launcher)], capture_output=True, text=True).stdout.split()
        workers = [int(k) for k in kids]
        time.sleep(0.1)
    assert workers
    time.sleep(0.5)  # the worker has set its signal and its watcher
    builder.kill()  # kill -9: no cleanup of its own runs
    builder.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in (launcher, *workers)):
        time.sleep(0.1)
    orphans = [p for p in (launcher, *workers) if _alive(p)]
    for p in orphans:
        os.kill(p, signal.SIGKILL)
    report("workers of a killed builder", trials=1, orphans=len(orphans))
    assert not orphans


def test_processes_are_bounded_by_the_machine(monkeypatch):
    from factory.errors import FactoryError
    from factory.ml import threads

    monkeypatch.setattr(threads, "allowed_cores", lambda: 4)
    monkeypatch.setattr(threads, "available_memory", lambda: 64 * 2**30)
    threads.check_processes(1, "cpu")
    threads.check_processes(4, "cpu")
    with pytest.raises(FactoryError, match=r"^train\.processes: 1000 processes on cpu, but this machine has 4 CPU "
                                           r"cores: at most 4$"):
        threads.check_processes(1000, "cpu")
    monkeypatch.setattr(threads, "available_memory", lambda: 1 * 2**30)  # room for two
    with pytest.raises(FactoryError, match=r"train\.processes: 3 .*1\.0 GiB of available memory.*at most 2"):
        threads.check_processes(3, "cpu")
    monkeypatch.setattr(threads, "available_memory", lambda: 64 * 2**30)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    threads.check_processes(2, "cuda")
    with pytest.raises(FactoryError, match=r"train\.processes: 3 processes on cuda, but this machine has 2 GPUs"):
        threads.check_processes(3, "cuda")
    with pytest.raises(FactoryError, match=r"train\.processes: 0 is not a positive whole number"):
        threads.check_processes(0, "cpu")


def _safetensors(path: Path, payload: bytes = b"\0" * 16) -> None:
    header = b'{"__metadata__":{}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + payload)


def _checkpoint(ckdir: Path, step: int) -> str:
    from factory.ml.sft import CHECKPOINT_FILES

    name = f"step-{step:08d}"
    d = ckdir / name
    d.mkdir(parents=True)
    for f in CHECKPOINT_FILES:
        if f.endswith(".safetensors"):
            _safetensors(d / f)
        elif f == "state.json":
            (d / f).write_text(json.dumps({"step": step}))
        else:
            (d / f).write_text("{}")
    return name


def test_a_new_build_clears_what_a_dead_one_left_in_its_work_directory(tmp_path):
    from factory.ml.sft import Checkpoints, clean_work

    work = tmp_path / "work"
    ck = work / "checkpoints"
    good = _checkpoint(ck, 50)
    (ck / "last.json").write_text(json.dumps({"dir": good, "step": 50}))
    half = _checkpoint(ck, 100)
    os.truncate(ck / half / "optimizer.safetensors", 20)  # killed while writing it
    (ck / f".step-00000150.{os.getpid()}.tmp").mkdir()
    (work / "launch.json").write_text("{}")
    (work / "train.log").write_text('{"step": 1}\n')
    removed = clean_work(work)
    assert sorted(removed) == sorted([f"checkpoints/{half}", f"checkpoints/.step-00000150.{os.getpid()}.tmp",
                                      "launch.json"])
    assert Checkpoints(work).last() == {"dir": good, "step": 50}
    assert (work / "train.log").exists()

    # a pointer to a checkpoint that is not whole: nothing is kept, training starts over
    os.truncate(ck / good / "adapter_model.safetensors", 4)
    clean_work(work)
    assert Checkpoints(work).last() is None and not (work / "train.log").exists()
    assert list(ck.iterdir()) == []


# --- settings that change training bytes are in the key -----------------------------------------

def test_thread_count_is_in_the_train_key(project, fake_env):
    """The families' defaults name the thread count (the trainer uses exactly that), so two counts
    give two train keys, on every machine."""
    from factory.engine import Session
    from factory.interfaces import TrainDefaultsContext
    from factory.ml import threads

    from factory_plugins.hf import HFFamily
    from factory_plugins.tiny.family import TinyFamily

    def defaults(family, method: str, device: str, cores: int) -> dict:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(threads, "allowed_cores", lambda: cores)
            ctx = TrainDefaultsContext(method=method, train_rows=100, heldout_rows=10, device=device, processes=1,
                                       intent={})
            return family.default_train_params(ctx)

    for family in (TinyFamily(), HFFamily()):
        for method in ("sft-lora", "dpo-lora"):
            assert [defaults(family, method, "cpu", n).get("threads") for n in (1, 2, 8)] == [1, 2, 2]
            assert "threads" not in defaults(family, method, "cuda", 8)  # no CPU arithmetic to split

    # and the key follows the count (the fake family of these tests takes it from the recipe)
    recipe = project.root / "recipes" / "demo.yaml"
    text = recipe.read_text()
    keys = {}
    for n in (1, 2):
        recipe.write_text(text.replace("train: {method: sft-lora}", f"train: {{method: sft-lora, options: {{threads: {n}}}}}"))
        s = Session(project.root)
        for stage in ("breadth", "dataset", "base", "eval-baseline", "power"):  # what the train key rests on
            s.run_stage("demo", stage)
        assert s.plan("demo").config("train")["threads"] == n
        keys[n] = s.plan("demo").key("train")
    recipe.write_text(text)
    assert keys[1] != keys[2]


# --- kills at random points of a whole build ----------------------------------------------------

def _store_consistent(root: Path) -> list[str]:
    """Manifests whose objects are missing or damaged."""
    from factory import hashing

    store = root / "cache"
    bad = []
    for man in (store / "stages").glob("*.json"):
        for rel, entry in json.loads(man.read_text())["outputs"].items():
            obj = store / "objects" / entry["digest"][:2] / entry["digest"]
            if not obj.exists() or hashing.hash_file(obj) != entry["digest"]:
                bad.append(f"{man.name}: {rel}")
    return bad


def _random_build_kills(project, trials: int) -> None:
    t0 = time.monotonic()
    project.doit("recipe:demo")
    full = time.monotonic() - t0
    pristine = project.root.parent / "pristine"
    shutil.copytree(project.root, pristine, symlinks=True)
    rng = random.Random(18)
    failures = lost = 0
    for t in range(trials):
        root = project.root.parent / f"k{t}"
        shutil.copytree(pristine, root, symlinks=True)
        shutil.rmtree(root / "cache")
        shutil.rmtree(root / "runs")
        p = subprocess.Popen([sys.executable, "-m", "doit", "recipe:demo"], cwd=root, env=project.env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.2, full))
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        r = subprocess.run([sys.executable, "-m", "doit", "recipe:demo"], cwd=root, env=project.env(),
                           capture_output=True, text=True, timeout=120)
        runs_dir = root / "runs"
        complete = complete_runs(runs_dir) if runs_dir.exists() else set()
        leftovers = [d.name for d in runs_dir.iterdir()
                     if d.is_dir() and d.name not in complete and d.name != UNFINISHED_DIR] + unfinished(runs_dir)
        missing = complete - indexed(runs_dir) if complete else set()
        lost += (1 - len(complete)) + len(missing)
        if r.returncode != 0 or len(complete) != 1 or missing or leftovers or _store_consistent(root) \
                or "Traceback" in r.stderr:
            print(f"faults: build kill {t}: rc {r.returncode}, runs {sorted(complete)}, not indexed {sorted(missing)}, "
                  f"left {leftovers}, store {_store_consistent(root)[:3]}: {r.stderr[-300:]}")
            failures += 1
    report("random kills of a build", trials=trials, failures=failures, lost_runs=lost)
    assert failures == 0 and lost == 0


def test_builds_killed_at_random_points_lose_nothing(project):
    _random_build_kills(project, trials=3)


@pytest.mark.slow
def test_builds_killed_at_many_random_points_lose_nothing(project):
    _random_build_kills(project, trials=25)
