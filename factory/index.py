"""The run index: `runs/index.duckdb`, SQL tables over every complete run directory.

The run directories are the source of truth; the index is a cache of them that
can be deleted and rebuilt at any time (`rebuild`) and gives the same answers.
`refresh` takes in new complete runs (those with `decision.json`), re-reads
runs whose files changed and drops runs whose directory is gone. A run is
checked by the stat of its directory and of the files the engine writes last;
when that changed, its record files are read and hashed, and it is re-ingested
only if the hash changed too. Sample files are stored once per digest: the
baseline evaluation that many runs share is read once.

Locking: DuckDB lets one process hold a database file while it is open for
writing, and a reader blocks a writer. Writers here use short-lived
connections with a few retries; if the file stays locked (someone has a long
query open), the ingest is queued in `runs/.index-pending` and done by the
next `refresh` or `factory sql`. A build never fails because of the index.
Readers (`factory sql`, `factory runs`) open the file read-only for one
statement at a time, so an open shell does not hold the lock between queries.

Self-healing: every refresh (and every `factory sql` / `factory runs`) compares the names of
the run directories with the ids in `ingested` (one directory listing and one query) and takes
in what is missing, so a run whose build died before its refresh, a refresh that could not get
the lock, or a write-ahead log cut short by a crash is caught up by the next build or query.
The refresh after a build is a `run_finished` handler of the engine's own plugin
(`factory.builtin_stages`); a build killed before its handlers returned leaves its run marked
unfinished (`factory.runs`), and the next build, even one with nothing to do, runs them again.
An index file DuckDB cannot read (truncated, overwritten, a checksum that does not match) is
moved aside as `index.duckdb.corrupt-<time>` with a one-line notice and rebuilt from `runs/`.

duckdb is imported inside functions: `factory --help` must not pay for it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from factory.errors import FactoryError

INDEX_FILE = "index.duckdb"
PENDING_FILE = ".index-pending"
INDEX_SCHEMA = "7"
# Files written for DuckDB 2.x readers and 1.x readers alike.
STORAGE_COMPAT = "v1.0.0"
RECORD_FILES = (
    "config.json", "dataset.json", "train.json", "train.log", "eval-baseline.json",
    "eval-candidate.json", "decision.json", "run_manifest.json", "events.jsonl", "artifact.json",
    "training_plan.json",
)

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS meta (name VARCHAR, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR, recipe VARCHAR, created TIMESTAMP, run_date DATE,
    goal VARCHAR, owner VARCHAR, base_family VARCHAR, base_model VARCHAR, base_digest VARCHAR,
    method VARCHAR, lr DOUBLE, steps INTEGER, batch_size INTEGER, replay DOUBLE, seed INTEGER,
    train_params JSON, primary_suite VARCHAR, regression_suites VARCHAR[], stage_keys JSON,
    git_commit VARCHAR, git_dirty BOOLEAN, device VARCHAR,
    decision VARCHAR, reason VARCHAR, next_action VARCHAR, shipped BOOLEAN,
    train_seconds DOUBLE, final_loss DOUBLE, best_heldout_loss DOUBLE, tokens_per_s DOUBLE,
    eval_baseline_seconds DOUBLE, eval_candidate_seconds DOUBLE, build_seconds DOUBLE,
    train_rows INTEGER, heldout_rows INTEGER, dropped_rows INTEGER, path VARCHAR,
    primary_baseline DOUBLE, primary_candidate DOUBLE, regression_baseline DOUBLE, regression_candidate DOUBLE
);
CREATE TABLE IF NOT EXISTS criteria (
    run_id VARCHAR, name VARCHAR, metric VARCHAR, threshold DOUBLE, threshold_text VARCHAR,
    baseline DOUBLE, candidate DOUBLE, delta DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
    p_value DOUBLE, passed BOOLEAN
);
CREATE TABLE IF NOT EXISTS evals (
    run_id VARCHAR, role VARCHAR, suite VARCHAR, version VARCHAR, status VARCHAR, error VARCHAR,
    n_rows INTEGER, metric VARCHAR, score DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n INTEGER,
    scores JSON, samples_path VARCHAR, samples_digest VARCHAR, base_digest VARCHAR, adapter_digest VARCHAR
);
CREATE TABLE IF NOT EXISTS eval_scores (
    run_id VARCHAR, role VARCHAR, suite VARCHAR, metric VARCHAR,
    value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n INTEGER
);
CREATE TABLE IF NOT EXISTS eval_skills (
    run_id VARCHAR, role VARCHAR, suite VARCHAR, skill VARCHAR,
    value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n INTEGER
);
CREATE TABLE IF NOT EXISTS sample_sets (
    samples_digest VARCHAR, sample_id VARCHAR, skill VARCHAR,
    expected VARCHAR, output VARCHAR, correct BOOLEAN
);
CREATE TABLE IF NOT EXISTS train_steps (
    run_id VARCHAR, position INTEGER, step VARCHAR, stage VARCHAR, method VARCHAR, data VARCHAR,
    data_digest VARCHAR, starts_from VARCHAR, status VARCHAR, steps INTEGER, lr DOUBLE, settings JSON,
    final_loss DOUBLE, promote_passed BOOLEAN, promote_reason VARCHAR, promote_criteria JSON
);
CREATE TABLE IF NOT EXISTS train_log (
    run_id VARCHAR, step INTEGER, loss DOUBLE, lr DOUBLE, tokens_per_s DOUBLE,
    elapsed_s DOUBLE, heldout_loss DOUBLE
);
CREATE TABLE IF NOT EXISTS stages (
    run_id VARCHAR, stage VARCHAR, kind VARCHAR, stage_key VARCHAR, status VARCHAR,
    started TIMESTAMP, ended TIMESTAMP, seconds DOUBLE, host VARCHAR, error VARCHAR
);
CREATE TABLE IF NOT EXISTS specialists (
    specialist_id VARCHAR, run_id VARCHAR, recipe VARCHAR, decision VARCHAR,
    forced BOOLEAN, created TIMESTAMP, path VARCHAR, files INTEGER, base_digest VARCHAR,
    signer VARCHAR, manifest_sha256 VARCHAR
);
CREATE TABLE IF NOT EXISTS ingested (
    run_id VARCHAR, path VARCHAR, sig VARCHAR, digest VARCHAR, ingested_at TIMESTAMP
);
CREATE OR REPLACE VIEW eval_samples AS
    SELECT e.run_id, e.suite, e.role, s.sample_id, s.expected, s.output, s.correct, s.skill
    FROM evals e JOIN sample_sets s USING (samples_digest);
CREATE OR REPLACE VIEW run_summary AS
    SELECT run_id, recipe, created, method, lr, steps, replay, primary_suite,
           primary_baseline, primary_candidate, regression_suites[1] AS regression_suite,
           regression_baseline, regression_candidate,
           round((regression_candidate - regression_baseline) * 100, 2) AS regression_delta_pp,
           decision, reason
    FROM runs;
CREATE OR REPLACE VIEW suite_summary AS
    SELECT r.run_id, r.recipe, e.suite,
           CASE WHEN e.suite = r.primary_suite THEN 'primary'
                WHEN list_contains(r.regression_suites, e.suite) THEN 'regression' ELSE 'extra' END AS part,
           e.metric,
           max(e.score) FILTER (WHERE e.role = 'baseline') AS baseline,
           max(e.score) FILTER (WHERE e.role = 'candidate') AS candidate,
           round((max(e.score) FILTER (WHERE e.role = 'candidate')
                  - max(e.score) FILTER (WHERE e.role = 'baseline')) * 100, 2) AS delta_pp
    FROM runs r JOIN evals e ON e.run_id = r.run_id
    GROUP BY r.run_id, r.recipe, e.suite, part, e.metric;
"""
RUN_TABLES = ("runs", "criteria", "evals", "eval_scores", "eval_skills", "train_steps", "train_log", "stages",
              "ingested")

# --- ingest SQL. `paths(run_id, path, sig)` lists the runs being ingested; `{src}` is
# `(SELECT run_id, content FROM read_text(...))` over one record file of each of them. Each
# file is read once and parsed once, straight into the struct of the fields the index keeps.

_SCORE_MAP = "MAP(VARCHAR, STRUCT(value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n INTEGER, higher_is_better BOOLEAN))"
_SHAPES = {
    "config.json": """{"recipe":"VARCHAR","goal":"VARCHAR","owner":"VARCHAR","method":"VARCHAR",
        "base":{"family":"VARCHAR","model":"VARCHAR","digest":"VARCHAR"},"train":"JSON",
        "evals":{"primary":"VARCHAR","regression":["VARCHAR"]},"stage_keys":"JSON"}""",
    "run_manifest.json": """{"created":"VARCHAR","git":{"commit":"VARCHAR","dirty":"BOOLEAN"},"device":"VARCHAR",
        "stage_keys":"JSON","files":"MAP(VARCHAR, VARCHAR)"}""",
    "decision.json": """{"decision":"VARCHAR","reason":"VARCHAR","next_action":"VARCHAR",
        "criteria":[{"name":"VARCHAR","metric":"VARCHAR","threshold":"VARCHAR","baseline":"DOUBLE",
        "candidate":"DOUBLE","delta":"DOUBLE","interval":["DOUBLE"],"p_value":"DOUBLE","passed":"BOOLEAN"}]}""",
    "train.json": """{"method":"VARCHAR","steps":"INTEGER","seconds":"DOUBLE","final_loss":"DOUBLE",
        "best_heldout_loss":"DOUBLE","tokens_per_s":"DOUBLE","device":"VARCHAR","params":"JSON"}""",
    "dataset.json": """{"counts":{"train_rows":"INTEGER","heldout_rows":"INTEGER","dropped_rows":"INTEGER"}}""",
    "eval-baseline.json": """{"model":{"base_digest":"VARCHAR","adapter_digest":"VARCHAR"},"seconds":"DOUBLE",
        "suites":[{"suite":"VARCHAR","version":"VARCHAR","status":"VARCHAR","error":"VARCHAR","rows":"INTEGER",
        "primary_metric":"VARCHAR","scores":"SCORES","per_skill":"SCORES",
        "samples":{"path":"VARCHAR","digest":"VARCHAR"}}]}""".replace("SCORES", _SCORE_MAP),
}
_SHAPES["eval-candidate.json"] = _SHAPES["eval-baseline.json"]
_SHAPES["training_plan.json"] = """{"steps":[{"name":"VARCHAR","stage":"VARCHAR","method":"VARCHAR","data":"VARCHAR",
    "data_digest":"VARCHAR","starts_from":"VARCHAR","status":"VARCHAR","settings":"JSON","final_loss":"DOUBLE",
    "promote":{"passed":"BOOLEAN","reason":"VARCHAR","criteria":"JSON"}}]}"""
_DOC_TABLES = {"config.json": "d_cfg", "run_manifest.json": "d_man", "decision.json": "d_dec",
               "train.json": "d_tr", "dataset.json": "d_ds",
               "eval-baseline.json": "d_evb", "eval-candidate.json": "d_evc", "training_plan.json": "d_plan"}

# Files that are the same for every run sharing a stage key (the store hardlinks them): read once per key.
_SHARED = {"dataset.json": "dataset", "eval-baseline.json": "eval-baseline"}

# A file that is not valid JSON (a run copied half-way, an edit gone wrong) is skipped, not fatal:
# one bad run must not stop the index from taking in the others.
_DOC_SQL = ("CREATE OR REPLACE TEMP TABLE {table} AS SELECT run_id, json_transform(content, '{shape}') AS j "
            "FROM {src} WHERE json_valid(content)")

_RUNS_SQL = """
INSERT INTO runs SELECT
    p.run_id, c.j.recipe,
    coalesce(TRY_CAST(TRY_CAST(m.j.created AS TIMESTAMPTZ) AS TIMESTAMP),
             TRY_CAST(left(p.run_id, 10) AS TIMESTAMP)),
    coalesce(TRY_CAST(TRY_CAST(m.j.created AS TIMESTAMPTZ) AS TIMESTAMP),
             TRY_CAST(left(p.run_id, 10) AS TIMESTAMP))::DATE,
    c.j.goal, c.j.owner, c.j.base.family, c.j.base.model,
    coalesce(c.j.base.digest, eb.j.model.base_digest),
    coalesce(c.j.method, t.j.method),
    TRY_CAST(coalesce(c.j.train->>'$.lr', t.j.params->>'$.lr') AS DOUBLE),
    TRY_CAST(coalesce(c.j.train->>'$.steps', t.j.steps::VARCHAR) AS INTEGER),
    TRY_CAST(coalesce(c.j.train->>'$.batch_size', t.j.params->>'$.batch_size') AS INTEGER),
    TRY_CAST(coalesce(c.j.train->>'$.replay', t.j.params->>'$.replay') AS DOUBLE),
    TRY_CAST(coalesce(c.j.train->>'$.seed', t.j.params->>'$.seed') AS INTEGER),
    coalesce(c.j.train, t.j.params),
    c.j.evals.primary, coalesce(c.j.evals.regression, []::VARCHAR[]),
    coalesce(m.j.stage_keys, c.j.stage_keys),
    m.j.git.commit, m.j.git.dirty, coalesce(m.j.device, t.j.device),
    d.j.decision, d.j.reason, d.j.next_action, d.j.decision = 'ship',
    t.j.seconds, t.j.final_loss, t.j.best_heldout_loss, t.j.tokens_per_s,
    eb.j.seconds, ec.j.seconds, NULL,
    s.j.counts.train_rows, s.j.counts.heldout_rows, s.j.counts.dropped_rows,
    p.path, NULL, NULL, NULL, NULL
FROM paths p JOIN d_cfg c ON c.run_id = p.run_id
LEFT JOIN d_man m ON m.run_id = p.run_id LEFT JOIN d_dec d ON d.run_id = p.run_id
LEFT JOIN d_tr t ON t.run_id = p.run_id LEFT JOIN d_ds s ON s.run_id = p.run_id
LEFT JOIN d_evb eb ON eb.run_id = p.run_id
LEFT JOIN d_evc ec ON ec.run_id = p.run_id
"""

_CRITERIA_SQL = """
INSERT INTO criteria
SELECT run_id, c.name, c.metric, TRY_CAST(c.threshold AS DOUBLE), c.threshold,
       c.baseline, c.candidate, c.delta, c.interval[1], c.interval[2], c.p_value, c.passed
FROM (SELECT run_id, unnest(j.criteria) AS c FROM d_dec WHERE j.criteria IS NOT NULL)
"""

_SUITES_SQL = """
CREATE OR REPLACE TEMP TABLE suites AS
SELECT run_id, role, base_digest, adapter_digest, s.* FROM (
    SELECT run_id, 'baseline' AS role, j.model.base_digest, j.model.adapter_digest, unnest(j.suites) AS s
    FROM d_evb WHERE j.suites IS NOT NULL
    UNION ALL
    SELECT run_id, 'candidate', j.model.base_digest, j.model.adapter_digest, unnest(j.suites)
    FROM d_evc WHERE j.suites IS NOT NULL
)
"""

_EVALS_SQL = """
INSERT INTO evals
SELECT run_id, role, suite, version, status, error, "rows", metric,
       scores[metric].value, scores[metric].ci_low, scores[metric].ci_high, scores[metric].n,
       to_json(scores), samples.path, samples.digest, base_digest, adapter_digest
FROM (SELECT *, coalesce(primary_metric, 'exact_match') AS metric FROM suites)
"""

_SCORES_SQL = """
INSERT INTO {table}
SELECT run_id, role, suite, e.key, e.value.value, e.value.ci_low, e.value.ci_high, e.value.n
FROM (SELECT run_id, role, suite, unnest(map_entries({column})) AS e FROM suites WHERE {column} IS NOT NULL)
"""

_TRAIN_LOG_SQL = """
INSERT INTO train_log
SELECT run_id, j.step, j.loss, j.lr, j.tokens_per_s, j.elapsed_s, j.heldout_loss FROM (
    SELECT run_id, json_transform(line, '{"step":"INTEGER","loss":"DOUBLE","lr":"DOUBLE","tokens_per_s":"DOUBLE",
                                          "elapsed_s":"DOUBLE","heldout_loss":"DOUBLE"}') AS j
    FROM (SELECT run_id, unnest(string_split(content, chr(10))) AS line FROM {src})
    WHERE trim(line) <> '' AND json_valid(line))
"""

# One row per training step: from training_plan.json, or, for a run trained in one section, its train stage.
_TRAIN_STEPS_SQL = """
INSERT INTO train_steps
SELECT run_id, pos, e.name, e.stage, e.method, e.data, e.data_digest, e.starts_from, e.status,
       TRY_CAST(e.settings->>'$.steps' AS INTEGER), TRY_CAST(e.settings->>'$.lr' AS DOUBLE), e.settings,
       e.final_loss, e.promote.passed, e.promote.reason, e.promote.criteria
FROM (SELECT run_id, unnest(j.steps) AS e, generate_subscripts(j.steps, 1) AS pos FROM d_plan WHERE j.steps IS NOT NULL);
INSERT INTO train_steps
SELECT c.run_id, 1, 'train', 'train', coalesce(c.j.method, t.j.method), 'data', NULL, 'base', 'trained',
       TRY_CAST(c.j.train->>'$.steps' AS INTEGER), TRY_CAST(c.j.train->>'$.lr' AS DOUBLE), c.j.train,
       t.j.final_loss, NULL, NULL, NULL
FROM d_cfg c JOIN d_tr t ON t.run_id = c.run_id WHERE c.run_id NOT IN (SELECT run_id FROM d_plan);
"""

_STAGES_SQL = """
INSERT INTO stages
SELECT run_id, j.stage, j.kind, j.key, j.status, TRY_CAST(TRY_CAST(j."start" AS TIMESTAMPTZ) AS TIMESTAMP),
       TRY_CAST(TRY_CAST(j."end" AS TIMESTAMPTZ) AS TIMESTAMP), j.seconds, j.host, j.error FROM (
    SELECT run_id, json_transform(line, '{"stage":"VARCHAR","kind":"VARCHAR","key":"VARCHAR","status":"VARCHAR",
            "start":"VARCHAR","end":"VARCHAR","seconds":"DOUBLE","host":"VARCHAR","error":"VARCHAR"}') AS j
    FROM (SELECT run_id, unnest(string_split(content, chr(10))) AS line FROM {src})
    WHERE trim(line) <> '' AND json_valid(line))
"""

# The scores run_summary shows are kept on the run row: the view is read far more often than written.
_SUMMARY_SQL = """
UPDATE runs SET primary_baseline = x.pb, primary_candidate = x.pc, regression_baseline = x.rb, regression_candidate = x.rc
FROM (
    SELECT r.run_id,
        max(e.score) FILTER (WHERE e.role = 'baseline' AND e.suite = r.primary_suite) AS pb,
        max(e.score) FILTER (WHERE e.role = 'candidate' AND e.suite = r.primary_suite) AS pc,
        max(e.score) FILTER (WHERE e.role = 'baseline' AND e.suite = r.regression_suites[1]) AS rb,
        max(e.score) FILTER (WHERE e.role = 'candidate' AND e.suite = r.regression_suites[1]) AS rc
    FROM runs r JOIN evals e ON e.run_id = r.run_id
    WHERE r.run_id IN (SELECT run_id FROM paths)
    GROUP BY r.run_id) x
WHERE runs.run_id = x.run_id
"""

_BUILD_SECONDS_SQL = """
UPDATE runs SET build_seconds = s.total FROM (
    SELECT run_id, sum(seconds) AS total FROM stages WHERE status = 'built'
    AND run_id IN (SELECT run_id FROM paths) GROUP BY run_id) s
WHERE runs.run_id = s.run_id
"""

_SAMPLES_SQL = """
INSERT INTO sample_sets
SELECT digest, j.id, j.skill, j.expected, j.output, j.correct FROM (
    SELECT digest, json_transform(line, '{"id":"VARCHAR","skill":"VARCHAR","expected":"VARCHAR",
                                          "output":"VARCHAR","correct":"BOOLEAN"}') AS j
    FROM (SELECT digest, unnest(string_split(content, chr(10))) AS line FROM sample_src)
    WHERE trim(line) <> '' AND json_valid(line))
"""


class IndexBusy(FactoryError):
    """The index file is locked by another process."""


class IndexCorrupt(FactoryError):
    """The index file (or its write-ahead log) cannot be read: it is rebuilt from the run directories."""


class IndexMissing(FactoryError):
    """There is no index file (yet, or another process has just moved a damaged one aside): build it."""


CORRUPT_KEEP = 3  # index files moved aside that are kept (the newest), for a look at what went wrong


def index_path(runs_dir: Path) -> Path:
    return Path(runs_dir) / INDEX_FILE


def _is_lock_error(e: Exception) -> bool:
    # DuckDB: 'Could not set lock on file ...: Conflicting lock is held in ...' (not the "block"
    # of a checksum error, which is damage)
    text = str(e)
    return "Could not set lock" in text or "Conflicting lock" in text or "lock on file" in text


# Errors that say nothing about the file's content: the index is not rebuilt for these.
_NOT_CORRUPT = ("Permission denied", "Read-only file system", "No space left", "Too many open files",
                "Cannot allocate memory", "Out of Memory")


def _is_corrupt(e: Exception) -> bool:
    """Whether a DuckDB error on opening or reading the index means its file is damaged."""
    import duckdb

    if not isinstance(e, duckdb.Error) or _is_lock_error(e):
        return False
    if isinstance(e, (duckdb.CatalogException, duckdb.ParserException, duckdb.BinderException,
                      duckdb.InterruptException)):
        return False
    return not any(t in str(e) for t in _NOT_CORRUPT)


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def connect(runs_dir: Path, read_only: bool = True, wait_s: float = 3.0):
    """Open the index, retrying while another process holds it.

    IndexBusy if it stays locked; IndexCorrupt if DuckDB cannot read the file.
    """
    import duckdb

    path = index_path(runs_dir)
    deadline = time.monotonic() + wait_s
    delay = 0.02
    while True:
        if read_only and not path.exists():
            raise IndexMissing(f"{path} does not exist yet")
        try:
            if read_only:
                return _quiet(duckdb.connect(str(path), read_only=True))
            return _writer(duckdb.connect(str(path), config={"storage_compatibility_version": STORAGE_COMPAT}))
        except duckdb.Error as e:
            if read_only and not path.exists():
                # moved aside by another process between the look and the open: missing, not damaged
                raise IndexMissing(f"{path} does not exist yet") from None
            if _is_corrupt(e):
                raise IndexCorrupt(f"{path}: {_first_line(e)}") from None
            if not _is_lock_error(e):
                raise FactoryError(f"{path}: cannot open the index: {_first_line(e)}") from None
            if time.monotonic() >= deadline:
                what = "updating" if read_only else "reading or updating"
                raise IndexBusy(f"{path}: another process is {what} the index; try again in a moment") from None
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _quiet(con):
    # No progress bar: DuckDB draws one on the terminal for queries over two seconds, into the
    # output of `factory sql` and of a build that refreshes a large index.
    con.execute("SET enable_progress_bar = false")
    return con


def _writer(con):
    _quiet(con)
    # timestamps are stored as UTC TIMESTAMP: a TIMESTAMPTZ would need pytz in every Python reader
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    return con


# --- scanning ------------------------------------------------------------------------------

def _stat_sig(st: os.stat_result) -> str:
    return f"{st.st_ino}.{st.st_size}.{st.st_mtime_ns}"


def _scan(runs_dir: Path, known: dict[str, str], deep: bool,
          only: list[str] | None = None) -> tuple[dict[str, tuple[Path, str]], int]:
    """Complete runs under runs_dir: id -> (path, stat signature); and the count of incomplete ones.

    The signature is the stat of the directory (it changes whenever the engine
    adds or replaces a file) and of events.jsonl (the one file appended to in
    place). `deep` adds every file, for edits made by hand in place.
    """
    found: dict[str, tuple[Path, str]] = {}
    incomplete = 0
    try:
        if only is None:
            entries = [(e.name, e.path) for e in os.scandir(runs_dir) if not e.name.startswith(".") and e.is_dir()]
        else:
            entries = [(n, os.path.join(runs_dir, n)) for n in only if os.path.isdir(os.path.join(runs_dir, n))]
    except FileNotFoundError:
        return found, 0
    for name, path in entries:
        try:
            ev = _stat_sig(os.stat(os.path.join(path, "events.jsonl")))
            dir_sig = _stat_sig(os.stat(path))
        except FileNotFoundError:
            ev, dir_sig = "-", _stat_sig(os.stat(path))
        sig = dir_sig + "/" + ev
        if deep:
            parts = []
            for dirpath, _, names in os.walk(path):
                for n in sorted(names):
                    p = os.path.join(dirpath, n)
                    parts.append(os.path.relpath(p, path) + ":" + _stat_sig(os.stat(p)))
            sig += "/" + _digest_text("|".join(sorted(parts)))
        if known.get(name) != sig and not os.path.exists(os.path.join(path, "decision.json")) \
                and not _eval_only(path):
            incomplete += 1
            continue
        found[name] = (Path(path), sig)
    return found, incomplete


def _eval_only(path: str) -> bool:
    """A `factory eval` run: complete without a decision (it appears whole, by rename)."""
    try:
        with open(os.path.join(path, "run_manifest.json")) as f:
            return json.load(f).get("eval_only") is True
    except (OSError, ValueError, AttributeError):
        return False


def _digest_text(text: str) -> str:
    from factory.hashing import digest_bytes

    return digest_bytes(text.encode())


def _file_digests(run: Path) -> dict[str, str]:
    from factory.hashing import hash_file

    return {n: hash_file(run / n) for n in RECORD_FILES if (run / n).is_file()}


def _run_digest(run: Path) -> str:
    """Digest of a run's record files (names and contents)."""
    from factory.hashing import digest_json

    return digest_json(_file_digests(run))


def _content_changed(run: Path, stored: str | None) -> tuple[bool, str]:
    """Whether the record files differ from what was ingested (unknown counts as changed); the digest now."""
    now = _run_digest(run)
    return stored is None or stored != now, now


# --- refresh -------------------------------------------------------------------------------

BULK_MIN = 2500  # above this many new or changed runs, a refresh skips their record-file digests
CHECKPOINT_RUNS = 50  # a refresh that changes this many runs folds the write-ahead log into the file
CHUNK = 2000  # sample files read and handed to DuckDB at a time


def _ensure_schema(con) -> bool:
    """Create the tables; return False when the file has another layout and must be rebuilt."""
    import duckdb

    try:
        row = con.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
    except duckdb.CatalogException:
        row = None
    else:
        if row is None or row[0] != INDEX_SCHEMA:
            return False
        return True
    con.execute(TABLES_SQL)
    con.execute("DELETE FROM meta WHERE name = 'schema'")
    con.execute("INSERT INTO meta VALUES ('schema', ?)", [INDEX_SCHEMA])
    return True


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _read_text(path: str) -> str | None:
    """A small file's text (undecodable bytes replaced), or None when it is missing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except IsADirectoryError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _src_table(name: str) -> str:
    return "src_" + "".join(c if c.isalnum() else "_" for c in name)


def _source(con, runs: dict[str, tuple[Path, str]], name: str) -> str:
    """SQL for (run_id, content) of one record file of every run in `runs`.

    The files are read here and handed to DuckDB as one list: on 10,000 runs that takes about
    half the time of DuckDB's own `read_text` over a glob or a file list, which opens them one by
    one at about 20 µs each.
    """
    ids: list[str] = []
    texts: list[str] = []
    for run_id, (path, _) in runs.items():
        text = _read_text(os.path.join(path, name))
        if text is not None:
            ids.append(run_id)
            texts.append(text)
    table = _src_table(name)
    # typed, so that a file no run has still gives the VARCHAR columns json_transform expects
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS "
                "SELECT unnest($ids::VARCHAR[]) AS run_id, unnest($texts::VARCHAR[]) AS content",
                {"ids": ids, "texts": texts})
    return f"(SELECT run_id, content FROM {table})"


def _ingest(con, runs: dict[str, tuple[Path, str]], digests: dict[str, str]) -> list[str]:
    """Insert every table's rows for `runs` (none of which is in the index now); return those unreadable."""
    if not runs:
        return []
    con.execute(
        "CREATE OR REPLACE TEMP TABLE paths AS SELECT unnest($ids) AS run_id, unnest($paths) AS path, "
        "unnest($sigs) AS sig, unnest($digests)::VARCHAR AS digest",
        {"ids": list(runs), "paths": [str(p) for p, _ in runs.values()], "sigs": [s for _, s in runs.values()],
         "digests": [digests.get(r) for r in runs]})
    for name, table in _DOC_TABLES.items():
        shape = " ".join(_SHAPES[name].split())
        if name in _SHARED:
            _shared_doc(con, runs, name, table, shape)
        else:
            con.execute(_DOC_SQL.format(table=table, shape=shape, src=_source(con, runs, name)))
    con.execute(_RUNS_SQL)
    unreadable = [r for (r,) in con.execute(
        "SELECT run_id FROM paths WHERE run_id NOT IN (SELECT run_id FROM d_cfg) ORDER BY run_id").fetchall()]
    con.execute(_CRITERIA_SQL)
    con.execute(_SUITES_SQL)
    con.execute(_EVALS_SQL)
    con.execute(_SUMMARY_SQL)
    con.execute(_SCORES_SQL.format(table="eval_scores", column="scores"))
    con.execute(_SCORES_SQL.format(table="eval_skills", column="per_skill"))
    con.execute(_TRAIN_STEPS_SQL)
    con.execute(_TRAIN_LOG_SQL.replace("{src}", _source(con, runs, "train.log")))
    con.execute(_STAGES_SQL.replace("{src}", _source(con, runs, "events.jsonl")))
    con.execute(_BUILD_SECONDS_SQL)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    con.execute("INSERT INTO ingested SELECT run_id, path, sig, digest, $now FROM paths", {"now": now})
    _ingest_samples(con)
    for t in ("suites", "paths", *_DOC_TABLES.values(), *map(_src_table, RECORD_FILES)):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    return unreadable


def _shared_doc(con, runs: dict[str, tuple[Path, str]], name: str, table: str, shape: str) -> None:
    """Read `name` once per stage key (runs/d_man must be loaded) and give every run its copy."""
    stage = _SHARED[name]
    pairs = con.execute(
        f"SELECT p.run_id, coalesce(m.j.stage_keys->>{_lit('$.' + json.dumps(stage))}, p.run_id) "
        "FROM paths p LEFT JOIN d_man m ON m.run_id = p.run_id").fetchall()
    rep_of_key: dict[str, str] = {}
    for run_id, key in pairs:
        if key not in rep_of_key and (runs[run_id][0] / name).is_file():
            rep_of_key[key] = run_id
    reps = {r: runs[r] for r in rep_of_key.values()}
    ids = [r for r, k in pairs if k in rep_of_key]
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {table} AS "
        f"WITH doc AS (SELECT run_id AS rep, json_transform(content, {_lit(shape)}) AS j "
        f"FROM {_source(con, reps, name)} "
        "WHERE json_valid(content)), "
        "rk AS (SELECT unnest($ids) AS run_id, unnest($reps) AS rep) "
        "SELECT rk.run_id, doc.j FROM rk JOIN doc USING (rep)",
        {"ids": ids, "reps": [rep_of_key[k] for r, k in pairs if k in rep_of_key]})


def _ingest_samples(con) -> None:
    """Read the sample files whose digest the index does not hold yet (one file per digest)."""
    rows = con.execute(
        "SELECT s.samples.digest, any_value({'dir': p.path, 'rel': s.samples.path}) FROM suites s JOIN paths p USING (run_id) "
        "WHERE s.samples.digest IS NOT NULL "
        "AND s.samples.digest NOT IN (SELECT samples_digest FROM evals WHERE samples_digest IS NOT NULL "
        "AND run_id NOT IN (SELECT run_id FROM paths)) "
        "GROUP BY s.samples.digest").fetchall()
    # a samples path is read only inside its run directory: a record naming "../../x" or a link
    # that leads out is not followed (`factory run validate` names it)
    rows = [(d, os.path.join(p["dir"], p["rel"])) for d, p in rows if _inside_run(p["dir"], p["rel"])]
    # read in chunks, so that memory holds one chunk of sample files at a time
    for i in range(0, len(rows), CHUNK):
        part = [(d, text) for d, p in rows[i:i + CHUNK] if (text := _read_text(p)) is not None]
        if not part:
            continue
        con.execute("CREATE OR REPLACE TEMP TABLE sample_src AS SELECT unnest($d) AS digest, unnest($t) AS content",
                    {"d": [d for d, _ in part], "t": [t for _, t in part]})
        con.execute(_SAMPLES_SQL)
    con.execute("DROP TABLE IF EXISTS sample_src")


def _inside_run(run_dir: str, rel: str | None) -> bool:
    """Whether `rel`, a path a record names, stays inside its run directory (links resolved)."""
    if not rel or rel.startswith("/") or ".." in rel.replace("\\", "/").split("/"):
        return False
    try:
        return Path(run_dir, rel).resolve().is_relative_to(Path(run_dir).resolve())
    except (OSError, RuntimeError):
        return False


def _delete_runs(con, run_ids: list[str]) -> None:
    if not run_ids:
        return
    for t in RUN_TABLES:
        con.execute(f"DELETE FROM {t} WHERE run_id IN (SELECT unnest($ids))", {"ids": run_ids})


def _refresh_specialists(con, root: Path) -> int:
    rows = []
    spec_dir = root / "specialists"
    if spec_dir.is_dir():
        for d in sorted(spec_dir.iterdir()):
            m = d / "manifest.json"
            if not m.is_file():
                continue
            try:
                man = json.loads(m.read_text())
                sig = json.loads((d / "signing.json").read_text()) if (d / "signing.json").is_file() else {}
            except (OSError, ValueError):
                continue
            if not isinstance(man, dict) or not isinstance(sig, dict):
                continue
            rows.append((man.get("id", d.name), man.get("run_id"), man.get("recipe"), man.get("decision"),
                         bool(man.get("forced", False)), man.get("published") or man.get("created"), str(d),
                         len(man.get("files", {})), man.get("base_digest"), sig.get("signer"),
                         sig.get("manifest_sha256")))
    con.execute("DELETE FROM specialists")
    if rows:
        con.executemany("INSERT INTO specialists VALUES "
                        "(?, ?, ?, ?, ?, TRY_CAST(TRY_CAST(? AS TIMESTAMPTZ) AS TIMESTAMP), ?, ?, ?, ?, ?)", rows)
    return len(rows)


def _refresh_into(con, runs_dir: Path, deep: bool, only: list[str] | None = None) -> dict[str, Any]:
    runs_dir = Path(runs_dir).resolve()
    if only is None:
        known = dict(con.execute("SELECT run_id, sig FROM ingested").fetchall())
    else:
        known = dict(con.execute("SELECT run_id, sig FROM ingested WHERE run_id IN (SELECT unnest($ids))",
                                 {"ids": list(only)}).fetchall())
    found, incomplete = _scan(runs_dir, known, deep, only)
    removed = [r for r in known if r not in found]
    stale = {r: v for r, v in found.items() if r in known and known[r] != v[1]}
    new = {r: v for r, v in found.items() if r not in known}
    changed, touched, digests = {}, [], {}
    stored = dict(con.execute("SELECT run_id, digest FROM ingested WHERE run_id IN (SELECT unnest($ids))",
                              {"ids": list(stale)}).fetchall()) if stale else {}
    for r, v in stale.items():
        differs, digests[r] = _content_changed(v[0], stored.get(r))
        if differs:
            changed[r] = v
        else:
            touched.append(r)
    if len(new) + len(changed) <= BULK_MIN:
        # digests of what is read now, so a later touch that changes nothing costs no re-read; a bulk
        # ingest skips them (hashing 100,000 files costs more than re-reading a run on its first change)
        for r in new:
            digests[r] = _run_digest(new[r][0])
    con.execute("BEGIN")
    try:
        if touched:
            con.executemany("UPDATE ingested SET sig = ?, digest = ? WHERE run_id = ?",
                            [(found[r][1], digests[r], r) for r in touched])
        _delete_runs(con, removed + list(changed))
        unreadable = _ingest(con, {**new, **changed}, digests)
        if removed or changed:
            con.execute("DELETE FROM sample_sets WHERE samples_digest NOT IN "
                        "(SELECT samples_digest FROM evals WHERE samples_digest IS NOT NULL)")
        specialists = _refresh_specialists(con, runs_dir.parent)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    unchanged = len(found) - len(new) - len(changed)
    if only is not None:
        unchanged = con.execute("SELECT count(*) FROM ingested").fetchone()[0] - len(new) - len(changed)
    return {"new": len(new), "changed": len(changed), "unchanged": unchanged,
            "removed": len(removed), "incomplete": incomplete, "specialists": specialists,
            # kept in `ingested`, so not retried until their files change
            "unreadable": unreadable}


def refresh(runs_dir: Path, deep: bool = False, wait_s: float = 1.0, only: list[str] | None = None) -> dict[str, Any]:
    """Bring runs/index.duckdb up to date with the run directories; never raises on a lock.

    `only` names the run directories to look at (the engine passes the run it
    just wrote, so the cost does not grow with the number of runs); complete run
    directories missing from the index, and indexed runs whose directory is
    gone, are always looked at too (a listing of runs/ against the indexed ids).
    A queued ingest or a missing index makes it look at all of them. `deep`
    checks the stat of every file, not only the directory and events.jsonl.
    An index DuckDB cannot read is moved aside (one line on stderr) and rebuilt.
    Returns counts: new, changed, unchanged, removed, incomplete; plus "queued": True
    (and "message") when the file was locked and the ingest was left for later;
    "rebuilt" names the file moved aside when the index was corrupt.
    """
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _remove_litter(runs_dir)
    try:
        out = _refresh_once(runs_dir, deep, wait_s, only)
    except IndexCorrupt as e:
        aside = move_aside(runs_dir, str(e))
        out = _refresh_once(runs_dir, deep, wait_s, None)
        out["rebuilt"] = aside.name if aside else None
    out.setdefault("queued", False)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out



def refresh_written(runs_dir: Path, names: list[str]) -> str | None:
    """Refresh for run directories a command has just written; None when they are in the index, else
    the one-line reason they are not yet (a later read takes them in: the index is derived). A
    FactoryError, which names bad input, is raised."""
    try:
        res = refresh(Path(runs_dir), only=names)
    except FactoryError:
        raise
    except Exception as e:  # noqa: BLE001 - the index is rebuilt from runs/ by any later refresh
        return f"the index was not refreshed ({type(e).__name__}: {e}); `factory runs` retries"
    return res["message"] if res.get("queued") else None

def _refresh_once(runs_dir: Path, deep: bool, wait_s: float, only: list[str] | None) -> dict[str, Any]:
    import duckdb

    pending = runs_dir / PENDING_FILE
    queued_before = _read_pending(pending)
    if not index_path(runs_dir).exists():
        out = _build_fresh(runs_dir, deep)
    else:
        try:
            con = connect(runs_dir, read_only=False, wait_s=wait_s)
        except IndexBusy as e:
            _write_pending(pending, only, str(e))
            return {"queued": True, "message": f"index busy; ingest queued in {pending} for the next refresh"}
        try:
            try:
                fits = _ensure_schema(con)
                if fits:
                    scope = None if queued_before is not None else only
                    if scope is not None:
                        scope = _with_drift(con, runs_dir, scope)
                    out = _refresh_into(con, runs_dir, deep, scope)
                    if out["new"] + out["changed"] + out["removed"] >= CHECKPOINT_RUNS:
                        con.execute("CHECKPOINT")
                    else:
                        # a small change stays in the write-ahead log (readers replay it; DuckDB folds it
                        # in once it passes checkpoint_threshold): checkpointing on every close costs
                        # more than the ingest of one run
                        con.execute("PRAGMA disable_checkpoint_on_shutdown")
            except duckdb.Error as e:
                if _is_corrupt(e):
                    raise IndexCorrupt(f"{index_path(runs_dir)}: {_first_line(e)}") from None
                raise
        finally:
            con.close()
        if not fits:
            index_path(runs_dir).unlink()
            Path(str(index_path(runs_dir)) + ".wal").unlink(missing_ok=True)
            return _refresh_once(runs_dir, deep, wait_s, None)
    if queued_before is not None and _read_pending(pending) == queued_before:
        pending.unlink(missing_ok=True)  # a marker queued while this refresh ran stays for the next one
    return out


def _write_pending(pending: Path, only: list[str] | None, reason: str) -> None:
    """Queue an ingest for the next refresh: written whole or not at all (a kill leaves no half marker)."""
    tmp = pending.with_name(f"{pending.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"queued_at": datetime.now(timezone.utc).isoformat(),
                               "pid": os.getpid(), "runs": only, "reason": reason}) + "\n")
    os.replace(tmp, pending)


def _run_names(runs_dir: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(runs_dir) if not e.name.startswith(".") and e.is_dir()}
    except FileNotFoundError:
        return set()


def drift(con, runs_dir: Path) -> tuple[list[str], list[str]]:
    """(complete run directories missing from the index, indexed runs whose directory is gone).

    The cheap check behind self-healing: one listing of runs/ and one query of the ingested ids;
    a directory not in the index costs one more stat (for its decision.json), and one read of its
    manifest when it has none (a `factory eval` or `factory import` run is complete without one).
    """
    indexed = {r for (r,) in con.execute("SELECT run_id FROM ingested").fetchall()}
    names = _run_names(Path(runs_dir))
    missing = sorted(n for n in names - indexed if os.path.exists(os.path.join(runs_dir, n, "decision.json"))
                     or _eval_only(os.path.join(runs_dir, n)))
    return missing, sorted(indexed - names)


def _with_drift(con, runs_dir: Path, only: list[str]) -> list[str]:
    missing, gone = drift(con, runs_dir)
    return sorted(set(only) | set(missing) | set(gone))


def move_aside(runs_dir: Path, why: str) -> Path | None:
    """Move a damaged index (and its write-ahead log) out of the way, saying so in one line."""
    target = index_path(runs_dir)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    aside = target.with_name(f"{INDEX_FILE}.corrupt-{stamp}-{os.getpid()}")
    moved = None
    try:
        os.replace(target, aside)
        moved = aside
    except FileNotFoundError:
        pass
    wal = Path(str(target) + ".wal")
    try:
        os.replace(wal, Path(str(aside) + ".wal"))
    except FileNotFoundError:
        pass
    where = f"moved aside to {aside.name}" if moved else "removed"
    print(f"factory: the run index cannot be read ({why}); {where}, rebuilding it from {runs_dir}",
          file=sys.stderr)
    old = sorted(runs_dir.glob(f"{INDEX_FILE}.corrupt-*"), key=lambda p: p.name, reverse=True)
    kept = [p for p in old if not p.name.endswith(".wal")][:CORRUPT_KEEP]
    for p in old:
        if p not in kept and Path(str(p).removesuffix(".wal")) not in kept:
            p.unlink(missing_ok=True)
    return moved


def _remove_litter(runs_dir: Path) -> None:
    """Remove what a refresh killed part-way left: a half-built index, a half-written queue marker."""
    from factory.runs import pid_alive

    try:
        entries = [e.name for e in os.scandir(runs_dir) if e.name.startswith(f".{INDEX_FILE}.")
                   or e.name.startswith(f"{PENDING_FILE}.")]
    except FileNotFoundError:
        return
    for name in entries:
        parts = name.split(".")
        pid = next((int(p) for p in parts if p.isdigit()), None)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            (runs_dir / name).unlink(missing_ok=True)


def _read_pending(pending: Path) -> str | None:
    try:
        return pending.read_text()
    except FileNotFoundError:
        return None


def _build_fresh(runs_dir: Path, deep: bool = False) -> dict[str, Any]:
    """Build a new index beside the old one and move it into place: readers never see it half-built."""
    import duckdb

    target = index_path(runs_dir)
    tmp = runs_dir / f".{INDEX_FILE}.{os.getpid()}.tmp"
    for p in (tmp, Path(str(tmp) + ".wal")):
        p.unlink(missing_ok=True)
    con = _writer(duckdb.connect(str(tmp), config={"storage_compatibility_version": STORAGE_COMPAT}))
    try:
        _ensure_schema(con)
        out = _refresh_into(con, runs_dir, deep)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    Path(str(target) + ".wal").unlink(missing_ok=True)
    os.replace(tmp, target)
    return out


def rebuild(runs_dir: Path) -> dict[str, Any]:
    """Throw the index away and build it again from the run directories."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out = _build_fresh(runs_dir)
    (runs_dir / PENDING_FILE).unlink(missing_ok=True)
    out["queued"] = False
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


# --- reading -------------------------------------------------------------------------------

def ready(runs_dir: Path, log=None) -> None:
    """Make sure the index holds every complete run directory before it is read.

    Refreshes when there is no index, a queued ingest, a directory the index lacks (or an
    indexed run whose directory is gone), or a file DuckDB cannot read (moved aside, rebuilt).
    """
    stale = not index_path(runs_dir).exists() or (runs_dir / PENDING_FILE).exists()
    if not stale:
        stale = _drifted(runs_dir)
    if stale:
        if log and not index_path(runs_dir).exists():
            log(f"building {index_path(runs_dir)} from the run directories")
        res = refresh(runs_dir)
        if res.get("queued") and log:
            log(res["message"])


def _drifted(runs_dir: Path) -> bool:
    """Whether the index misses a run directory or cannot be read (a read-only look; False when busy)."""
    import duckdb

    try:
        con = connect(runs_dir, read_only=True, wait_s=0.5)
    except (IndexCorrupt, IndexMissing):
        return True
    except IndexBusy:
        return False  # a writer is at work; the query reports it if it stays busy
    try:
        row = con.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if row is None or row[0] != INDEX_SCHEMA:
            return True
        missing, gone = drift(con, runs_dir)
        return bool(missing or gone)
    except duckdb.Error:
        return True  # an older layout, or a damaged table: refresh rebuilds
    finally:
        con.close()


def query(runs_dir: Path, sql: str, params: Any = None) -> tuple[list[str], list[tuple]]:
    """Run one read-only statement on the index; (column names, rows)."""
    import duckdb

    con = connect(Path(runs_dir), read_only=True)
    try:
        try:
            cur = con.execute(sql, params) if params is not None else con.execute(sql)
        except duckdb.Error as e:
            if "Corrupt database file" in str(e):
                raise IndexCorrupt(f"{index_path(runs_dir)}: {_first_line(e)}") from None
            raise FactoryError(f"sql: {_first_line(e)}") from None
        if cur.description is None:
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        con.close()


def query_healed(runs_dir: Path, sql: str, params: Any = None) -> tuple[list[str], list[tuple]]:
    """`query`, and when it finds the file damaged: move it aside, rebuild, and run the statement again;
    when the file is missing (never built, or moved aside by another process a moment ago): build it."""
    for attempt in range(3):
        try:
            return query(runs_dir, sql, params)
        except IndexMissing:
            if attempt == 2:
                raise
        except IndexCorrupt as e:
            if attempt == 2:
                raise
            move_aside(Path(runs_dir), str(e))
        refresh(Path(runs_dir))
    raise AssertionError("unreachable")


def select(runs_dir: Path, sql: str, params: Any = None) -> tuple[list[str], list[tuple]]:
    """One read-only statement over an index brought up to date first, as `factory sql` runs it:
    a run directory the index lacks is ingested, a missing or damaged index is (re)built."""
    ready(Path(runs_dir))
    return query_healed(Path(runs_dir), sql, params)
