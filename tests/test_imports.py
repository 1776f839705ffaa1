"""`factory import`: real lm-eval and Inspect output, produced here on a tiny model, brought into the index.

The fixtures run the tools themselves (lm-eval's command line with --log_samples, Inspect's
`eval` with its `hf/` provider on a local model directory), so the files imported are what
those libraries write, not hand-made copies. Each tool's tests skip only when its extra is
not installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from factory import hashing, index, pairing, stats  # noqa: E402
from factory.evidence import read_run  # noqa: E402
from factory.records import EvalRecord, RunConfig, RunManifest, SampleRecord, read_jsonl, read_record  # noqa: E402
from lmevalkit import COLOURS, write_colour_tasks  # noqa: E402

HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
HAS_INSPECT = importlib.util.find_spec("inspect_ai") is not None
# lm-eval's command line takes half a minute to start and run on a shared CPU: its tests are slow ones
needs_lm_eval = pytest.mark.skipif(not HAS_LM_EVAL, reason="the lm-eval extra is not installed")
needs_inspect = pytest.mark.skipif(not HAS_INSPECT, reason="the inspect extra is not installed")

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "INSPECT_DISPLAY": "none"}

INSPECT_TASK = '''\
import json, sys
from inspect_ai import Task, eval, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.log import read_eval_log, write_eval_log
from inspect_ai.scorer import exact
from inspect_ai.solver import generate


@task
def colours():
    rows = [json.loads(line) for line in open("tasks/colours.jsonl")]
    return Task(dataset=MemoryDataset([Sample(id=f"c{i}", input=f"{r['question']} is", target=r["answer"])
                                       for i, r in enumerate(rows)]),
                solver=generate(), scorer=exact())


log = eval(colours(), model="hf/local", model_args={"model_path": sys.argv[1], "device": "cpu"},
           max_tokens=4, log_dir=sys.argv[2], display="none")[0]
assert log.status == "success", log.status
write_eval_log(read_eval_log(log.location), sys.argv[2] + "/colours.json", format="json")
print(log.location)
'''


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, "FACTORY_PROGRESS": "0", "FACTORY_ROOT": str(cwd)}
    env.pop("FACTORY_LOAD_PLUGINS", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def factory(root: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "factory.cli", *args], root)


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Path:
    from factory.ml.toymodels import save_toy_model

    root = tmp_path_factory.mktemp("imports")
    (root / "recipes").mkdir()
    save_toy_model(root / "models" / "g", "gpt2", positions=128)
    write_colour_tasks(root)
    # the same prompts as a factory benchmark file, with ids of its own
    (root / "tasks" / "bench.jsonl").write_text("".join(
        json.dumps({"id": f"b{i}", "prompt": f"{q} is", "expected": a}) + "\n" for i, (q, a, _) in enumerate(COLOURS)))
    (root / "tasks" / "colours_inspect.py").write_text(INSPECT_TASK)
    return root


@pytest.fixture(scope="module")
def lm_eval_out(proj) -> Path:
    if not HAS_LM_EVAL:
        pytest.skip("the lm-eval extra is not installed")
    out = proj / "external" / "lm-eval"
    res = _run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                f"pretrained={proj / 'models' / 'g'},dtype=float32", "--tasks", "colours_mc,colours_gen",
                "--include_path", "tasks", "--device", "cpu", "--batch_size", "4", "--log_samples",
                "--output_path", str(out)], proj, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert list(out.rglob("results_*.json")), res.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def inspect_log(proj) -> Path:
    if not HAS_INSPECT:
        pytest.skip("the inspect extra is not installed")
    logs = proj / "external" / "inspect"
    res = _run([sys.executable, "tasks/colours_inspect.py", str(proj / "models" / "g"), str(logs)], proj,
               timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return Path(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built(proj) -> Path:
    """factory's own evaluation of the same model on the same prompts (`factory eval`, a benchmark file)."""
    res = factory(proj, "eval", "models/g", "--suite", "tasks/bench.jsonl", "--max-new-tokens", "4",
                  "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    return next((proj / "runs").glob("????-??-??-eval-g-*"))


def _runs(proj: Path) -> list[str]:
    return sorted(p.name for p in (proj / "runs").iterdir()) if (proj / "runs").is_dir() else []


def _indexed(proj: Path) -> list[str]:
    return [r for (r,) in index.select(proj / "runs", "SELECT run_id FROM runs ORDER BY run_id")[1]]


# --- lm-eval ---------------------------------------------------------------------------------

@needs_lm_eval
@pytest.mark.slow
def test_lm_eval_output_becomes_a_run_in_the_index_and_a_second_import_is_the_same_run(proj, lm_eval_out):
    res = factory(proj, "import", "lm-eval", str(lm_eval_out))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("imported: runs/") and "2 task(s), 10 samples" in res.stdout
    run = next((proj / "runs").glob("*-import-lm-eval-g-*"))

    man = read_record(run / "run_manifest.json", RunManifest)
    ext = man.model_extra["external"]
    assert man.model_extra["imported"] is True and man.model_extra["eval_only"] is True
    assert ext["tool"] == "lm-eval" and ext["version"] == importlib.metadata.version("lm_eval")
    assert ext["model_args"]["pretrained"] == str(proj / "models" / "g")
    assert [t["task"] for t in ext["tasks"]] == ["colours_gen", "colours_mc"]
    assert ext["tasks"][1]["config"]["output_type"] == "multiple_choice"
    results = next(lm_eval_out.rglob("results_*.json"))
    assert ext["digests"]["results"] == hashing.hash_file(results)
    assert run.name.endswith(ext["key"][:8])

    cfg = read_record(run / "config.json", RunConfig)
    # the digest the hf family gives the same directory: SQL joins the run with factory's runs of it
    assert cfg.base.digest == hashing.digest_tree(proj / "models" / "g")
    rec = read_record(run / "eval-baseline.json", EvalRecord)
    by = {s.suite: s for s in rec.suites}
    assert set(by) == {"colours_gen", "colours_mc"} and rec.model.base_digest == cfg.base.digest
    mc = [s.model_dump() for s in read_jsonl(run / by["colours_mc"].samples.path, SampleRecord)]
    assert [s["id"] for s in mc] == [f"colours_mc/{i}" for i in range(5)]
    assert mc[0]["prompt"] == "sky is" and mc[0]["expected"] == "blue" and mc[0]["output"] in ("blue", "red")
    assert all(s["correct"] == (s["output"] == s["expected"]) == (s["values"]["acc"] == 1.0) for s in mc)
    # the accuracy factory records is the one lm-eval reported
    reported = json.loads(results.read_text())["results"]["colours_mc"]["acc,none"]
    assert by["colours_mc"].scores["accuracy"].value == pytest.approx(reported)
    assert by["colours_mc"].scores["acc"].n == 5

    cols, rows = index.select(proj / "runs", "SELECT r.recipe, r.base_digest, e.suite, e.n, e.score FROM runs r "
                              "JOIN evals e USING (run_id) WHERE r.run_id = ? ORDER BY e.suite", [run.name])
    assert [(r[0], r[2], r[3]) for r in rows] == [("import:lm-eval", "colours_gen", 5), ("import:lm-eval", "colours_mc", 5)]
    assert rows[1][1] == cfg.base.digest and rows[1][4] == pytest.approx(reported)
    n_samples = index.select(proj / "runs", "SELECT count(*) FROM eval_samples WHERE run_id = ?", [run.name])[1]
    assert n_samples == [(10,)]

    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    again = factory(proj, "import", "lm-eval", str(results))  # the results file itself names the same run
    assert again.returncode == 0 and again.stdout.startswith("already imported: ")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    assert len(list((proj / "runs").glob("*-import-lm-eval-*"))) == 1


@needs_lm_eval
@pytest.mark.slow
def test_compare_pairs_imported_lm_eval_with_factory_eval_by_prompt(proj, lm_eval_out, built):
    assert factory(proj, "import", "lm-eval", str(lm_eval_out)).returncode == 0
    imported = next((proj / "runs").glob("*-import-lm-eval-g-*"))
    [paired] = pairing.compare_runs([read_run(imported), read_run(built)])
    assert (paired["role_a"], paired["role_b"]) == ("baseline", "baseline")
    rows = {r["suite"]: r for r in paired["rows"]}
    gen = rows["colours_gen"]
    # lm-eval's ids (colours_gen/0) and the benchmark's (b0) differ: the prompts pair them
    assert (gen["other"], gen["by"], gen["paired"], gen["only_a"], gen["only_b"]) == ("bench", "prompt", 5, 0, 0)
    mine = {s["prompt"]: s["correct"] for s in _samples(imported, "colours_gen")}
    theirs = {s["prompt"]: s["correct"] for s in _samples(built, "bench")}
    a = [mine[p] for p in mine]
    b = [theirs[p] for p in mine]
    delta, centre, se = stats.paired_difference([float(x) for x in a], [float(x) for x in b])
    lo, hi = stats.interval_at(centre, se, 0.025)
    assert gen["delta"] == pytest.approx(delta) and gen["interval"] == pytest.approx([max(-1, lo), min(1, hi)])
    assert gen["p_value"] == stats.mcnemar_exact(*stats.discordant(a, b))

    out = factory(proj, "compare", imported.name, built.name)
    assert out.returncode == 0, out.stderr
    assert "paired samples: [1] baseline vs [2] baseline" in out.stdout
    line = next(x for x in out.stdout.splitlines() if x.strip().startswith("colours_gen"))
    assert line.split()[:6] == ["colours_gen", "│", "bench", "│", "prompt", "│"]


def _samples(run: Path, suite: str) -> list[dict]:
    rec = read_record(next(run.glob("eval-*.json")), EvalRecord)
    s = next(s for s in rec.suites if s.suite == suite)
    return [x.model_dump() for x in read_jsonl(run / s.samples.path, SampleRecord)]


@needs_lm_eval
@pytest.mark.slow
def test_factory_lm_eval_suite_and_imported_lm_eval_pair_by_sample_id(proj, lm_eval_out):
    """factory's own lm-eval suite on the same model and task gives the ids lm-eval's files give."""
    assert factory(proj, "import", "lm-eval", str(lm_eval_out)).returncode == 0
    imported = next((proj / "runs").glob("*-import-lm-eval-g-*"))
    res = factory(proj, "eval", "models/g", "--suite", "harness=lm-eval:tasks=[tasks/gen.yaml]", "--device", "cpu",
                  "--batch-size", "4")
    assert res.returncode == 0, res.stderr[-3000:]
    own = next(p for p in (proj / "runs").glob("????-??-??-eval-g-*") if (p / "samples" / "baseline" / "harness.jsonl").exists())
    rows = {r["suite"]: r for r in pairing.compare_runs([read_run(imported), read_run(own)])[0]["rows"]}
    gen = rows["colours_gen"]
    assert (gen["other"], gen["by"], gen["paired"], gen["only_a"]) == ("harness", "id", 5, 0)
    # the same model, the same task, greedy decoding: the two evaluations agree sample by sample
    assert gen["discordant"] == [0, 0] and gen["delta"] == 0
    # no id of colours_mc is the harness's; its prompts are the same as colours_gen's, so they pair by prompt
    assert (rows["colours_mc"]["other"], rows["colours_mc"]["by"]) == ("harness", "prompt")


# --- Inspect ---------------------------------------------------------------------------------

@needs_inspect
def test_inspect_log_becomes_a_run_and_pairs_with_factory_eval(proj, inspect_log, built):
    res = factory(proj, "import", "inspect", str(inspect_log))
    assert res.returncode == 0, res.stderr
    run = next((proj / "runs").glob("*-import-inspect-g-*"))
    man = json.loads((run / "run_manifest.json").read_text())
    ext = man["external"]
    assert ext["tool"] == "inspect" and ext["version"] == importlib.metadata.version("inspect_ai")
    assert ext["model"] == "hf/local" and ext["model_digest"] == "weights"
    assert ext["tasks"][0]["task"] == "colours" and ext["config"]["generate"]["max_tokens"] == 4
    assert ext["digests"]["log"] == hashing.hash_file(inspect_log)
    rec = read_record(run / "eval-baseline.json", EvalRecord)
    assert rec.model.base_digest == hashing.digest_tree(proj / "models" / "g")
    samples = _samples(run, "colours")
    assert [s["id"] for s in samples] == [f"colours/c{i}" for i in range(5)]
    from inspect_ai.log import read_eval_log

    log = read_eval_log(str(inspect_log))
    for s, orig in zip(samples, log.samples):
        assert s["prompt"] == orig.input and s["output"] == orig.output.completion
        assert s["correct"] == (orig.scores["exact"].value == "C")
    assert rec.suites[0].scores["accuracy"].value == pytest.approx(log.results.scores[0].metrics["mean"].value)
    assert run.name in _indexed(proj)
    check = factory(proj, "run", "validate", str(run))  # every record against its schema, digests cross-checked
    assert check.returncode == 0 and check.stdout.startswith("valid: "), check.stdout + check.stderr

    # the JSON form of the same log, written by Inspect, is another source file: its own run, same samples
    js = inspect_log.parent / "colours.json"
    assert factory(proj, "import", "inspect", str(js)).returncode == 0
    again = factory(proj, "import", "inspect", str(inspect_log))
    assert again.stdout.startswith("already imported: ")

    [paired] = pairing.compare_runs([read_run(run), read_run(built)])
    [row] = paired["rows"]
    assert (row["other"], row["by"], row["paired"], row["only_a"], row["only_b"]) == ("bench", "prompt", 5, 0, 0)


@needs_inspect
def test_sql_joins_imported_and_built_runs_of_the_same_model(proj, inspect_log, built):
    assert factory(proj, "import", "inspect", str(inspect_log)).returncode == 0
    cols, rows = index.select(proj / "runs", """
        SELECT i.run_id AS imported, b.run_id AS built, ie.score AS imported_score, be.score AS built_score
        FROM runs i JOIN evals ie ON ie.run_id = i.run_id
        JOIN runs b ON b.base_digest = i.base_digest AND b.recipe NOT LIKE 'import:%'
        JOIN evals be ON be.run_id = b.run_id AND be.role = 'baseline'
        WHERE i.recipe = 'import:inspect'""")
    assert any(r[1] == built.name for r in rows), rows


# --- bad input -------------------------------------------------------------------------------

def _one_line_failure(proj: Path, *args: str) -> str:
    before_runs, before_index = _runs(proj), _indexed(proj)
    res = factory(proj, "import", *args)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert _runs(proj) == before_runs and _indexed(proj) == before_index  # nothing written, nothing indexed
    return lines[0]


@needs_lm_eval
@pytest.mark.slow
def test_bad_lm_eval_input_is_one_line_naming_the_file_and_place(proj, lm_eval_out, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: no lm-eval results here" in _one_line_failure(proj, "lm-eval", str(empty))

    bad = tmp_path / "cut"
    shutil.copytree(lm_eval_out, bad)
    results = next(bad.rglob("results_*.json"))
    text = results.read_text()
    results.write_text(text[: len(text) // 2])
    msg = _one_line_failure(proj, "lm-eval", str(bad))
    assert f"{results}: not valid JSON (line " in msg

    results.write_text(text)
    samples = sorted(bad.rglob("samples_colours_mc_*.jsonl"))[0]
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[:2]) + lines[2][:40])  # a run killed while writing its samples
    assert f"{samples}:3: not valid JSON" in _one_line_failure(proj, "lm-eval", str(bad))

    samples.unlink()
    assert "task colours_mc: no samples file" in _one_line_failure(proj, "lm-eval", str(bad))


@needs_inspect
def test_bad_inspect_input_is_one_line_naming_the_file_and_place(proj, inspect_log, built, tmp_path):
    record = built / "eval-baseline.json"  # the wrong format: a JSON file, not an Inspect log
    assert f"{record}: not an Inspect log (no 'eval' object)" in _one_line_failure(proj, "inspect", str(record))
    samples = built / "samples" / "baseline" / "bench.jsonl"
    assert f"{samples}: not an Inspect log (a .eval or .json file expected)" in _one_line_failure(
        proj, "inspect", str(samples))

    cut = tmp_path / "cut.eval"
    data = inspect_log.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert f"{cut}: not an Inspect .eval log" in _one_line_failure(proj, "inspect", str(cut))

    js = tmp_path / "cut.json"
    text = (inspect_log.parent / "colours.json").read_text()
    js.write_text(text[: len(text) // 3])
    assert f"{js}: not valid JSON (line " in _one_line_failure(proj, "inspect", str(js))

    assert "not an lm-eval results file" in _one_line_failure(proj, "lm-eval", str(inspect_log.parent / "colours.json"))


# --- publishing ------------------------------------------------------------------------------

@needs_inspect
def test_a_failed_import_leaves_nothing_and_a_killed_one_only_litter_the_next_removes(proj, inspect_log, monkeypatch):
    from factory import imports
    from factory.errors import FactoryError

    runs = proj / "runs"
    runs.mkdir(exist_ok=True)
    for old in runs.glob("*-import-inspect-*"):
        shutil.rmtree(old)
    index.refresh(runs)
    before = _runs(proj)

    def failing(tmp, *a, **k):
        (tmp / "config.json").write_text("{}")
        raise FactoryError("disk full")

    monkeypatch.setattr(imports, "_write", failing)
    with pytest.raises(FactoryError, match="disk full"):
        imports.import_results(proj, "inspect", str(inspect_log))
    assert _runs(proj) == before
    monkeypatch.undo()

    # a process killed part-way left its temporary directory; the next import removes it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    litter = runs / f"{imports.TMP_PREFIX}2026-01-01-import-inspect-x-{dead.stdout.strip()}"
    (litter / "samples").mkdir(parents=True)
    # killed after the rename, before the index refresh: the next query takes the run in
    monkeypatch.setattr(imports, "_refresh_index", lambda root, names: None)
    [res] = imports.import_results(proj, "inspect", str(inspect_log))
    assert not litter.exists() and not res["hit"]
    assert res["run"].name in _indexed(proj)


@needs_inspect
def test_an_import_killed_at_points_spread_over_it_leaves_no_half_run(proj, inspect_log, tmp_path):
    """Kill an import (kill -9: no `finally`) at points from its first file write to its index refresh;
    what is in runs/ is then whole or absent, the index holds no half run, and the next import
    leaves exactly one complete, indexed run and no litter."""
    from factory import imports

    pristine = tmp_path / "pristine"
    (pristine / "recipes").mkdir(parents=True)
    os.symlink(proj / "models", pristine / "models")

    def dying(root: Path, die_at: int | None, out: int | None = None) -> None:
        count = [0]

        def tick():
            count[0] += 1
            if die_at is not None and count[0] >= die_at:
                os._exit(77)

        def wrap(real):
            return lambda *a, **k: (tick(), real(*a, **k))[1]

        with pytest.MonkeyPatch.context() as mp:
            real_writer = index._writer

            class Counting:
                def __init__(self, con):
                    self._con = con

                def execute(self, *a, **k):
                    tick()
                    return self._con.execute(*a, **k)

                def __getattr__(self, name):
                    return getattr(self._con, name)

            mp.setattr(index, "_writer", lambda con: Counting(real_writer(con)))
            for name in ("replace", "unlink", "rename", "mkdir"):
                mp.setattr(os, name, wrap(getattr(os, name)))
            mp.setattr(Path, "write_text", wrap(Path.write_text))
            from factory import evaluate

            mp.setattr(evaluate, "write_samples", wrap(evaluate.write_samples))
            imports.import_results(root, "inspect", str(inspect_log))
        if out is not None:
            os.write(out, str(count[0]).encode())

    def child(fn) -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                with open(tmp_path / "child.log", "a") as log:
                    sys.stdout = sys.stderr = log
                    try:
                        fn()
                        code = 0
                    except BaseException:
                        import traceback

                        traceback.print_exc(file=log)
                        log.flush()
            finally:
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    r, w = os.pipe()
    probe = tmp_path / "probe"
    shutil.copytree(pristine, probe, symlinks=True)
    assert child(lambda: dying(probe, None, w)) == 0, (tmp_path / "child.log").read_text()[-2000:]
    points = int(os.read(r, 64))
    os.close(r)
    os.close(w)
    tried = sorted({1 + round(i * (points - 1) / 7) for i in range(8)})
    for n in tried:
        root = tmp_path / f"t{n}"
        shutil.copytree(pristine, root, symlinks=True)
        assert child(lambda: dying(root, n)) == 77, n
        runs = root / "runs"
        visible = [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")] if runs.exists() else []
        for run in visible:  # whole: every record and samples file, digests matching
            ev = read_run(run)
            assert not ev.problems and pairing.evaluations(ev)[0]["suites"]["colours"], (n, run, ev.problems)
        assert set(_indexed(root)) <= {p.name for p in visible}, n
        [res] = imports.import_results(root, "inspect", str(inspect_log))
        left = sorted(p.name for p in runs.iterdir() if p.name.startswith(imports.TMP_PREFIX))
        assert left == [] and [p.name for p in runs.glob("*-import-inspect-*")] == [res["run"].name], n
        assert _indexed(root) == [res["run"].name], n
    print(f"faults: import: points={points}, trials={len(tried)}")
